"""What an inspector knows beyond the annotation: defect kinds and the objects they appear on.

``defect_info(label)`` turns a dataset's defect folder name (``crack``, ``color``, ``scratch_head``,
VisA's free text such as ``chunk of wax missing``) into a DefectInfo: the noun to write, how it looks,
its likely cause, its functional consequence, and whether it matters beyond appearance. Lookup order:
an exact alias (MVTec AD, MPDD, VisA and ``sage data synth`` names), then a known keyword inside the
name, then a generic entry that keeps the dataset's own words. ``object_info(category)`` gives the
noun, domain and surface word for a category, with a fallback built from the folder name.

The causes and consequences are the usual ones for each kind of flaw, phrased so that they hold for
any object; the answers say "likely" where the image alone cannot prove a cause.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DefectInfo:
    key: str  # the base kind, e.g. "crack"
    noun: str  # what to call it, e.g. "crack", "colour discoloration"
    countable: bool  # "a crack" vs "contamination", "split teeth"
    look: str  # what it looks like, completing "it shows ..."
    cause: str  # likely cause, completing "most likely caused by ..."
    consequence: str  # what it does to the part, a clause completing "it ..."
    functional: bool  # True when it can affect fit, function or safety, not only appearance

    def a(self, size: str | None = None) -> str:
        """The noun with an article (and a size word): "a small crack", "contamination over a small area"."""
        if self.countable:
            return f"a {size} {self.noun}" if size else _article(self.noun)
        return f"{self.noun} over a {size} area" if size else self.noun


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


_BASE: dict[str, DefectInfo] = {
    d.key: d
    for d in (
        DefectInfo("crack", "crack", True, "a sharp-edged fracture line through the material",
                   "impact, thermal stress or material fatigue",
                   "can spread under load and lets moisture and dirt in", True),
        DefectInfo("scratch", "scratch", True, "a thin linear mark cut into the surface",
                   "contact with a tool, fixture or another part during handling",
                   "is mostly cosmetic, but it breaks any protective coating along its length", False),
        DefectInfo("cut", "cut", True, "a straight, clean-edged opening",
                   "a blade or sharp edge during processing or handling",
                   "exposes the material underneath and weakens the part there", True),
        DefectInfo("hole", "hole", True, "an opening where material should be solid",
                   "a puncture by a sharp object or a gas pocket in the material",
                   "breaks the barrier of the part, so it can leak or lose strength", True),
        DefectInfo("colour", "colour discoloration", True, "a patch whose colour differs from the rest of the surface",
                   "a foreign substance such as paint or dye, or local overheating",
                   "fails the appearance standard and may point to contamination", False),
        DefectInfo("print", "stray print mark", True, "printed ink where no marking belongs",
                   "ink transferred from marking equipment or packaging",
                   "fails the appearance standard and may carry ink residue onto the product", False),
        DefectInfo("imprint", "faulty imprint", True, "a marking that is smeared, incomplete or misplaced",
                   "a misaligned or worn printing pad",
                   "makes the marking unreliable, so the part can be misidentified", True),
        DefectInfo("stain", "stain", True, "a blotchy mark lying on the surface",
                   "liquid or residue picked up on the line",
                   "is mainly cosmetic but can signal contamination upstream", False),
        DefectInfo("contamination", "contamination", False, "foreign material stuck to the surface",
                   "particles or debris from the process environment",
                   "is a purity risk and can damage mating parts", True),
        DefectInfo("broken", "break", True, "an area where material has broken away",
                   "an impact during handling or transport",
                   "leaves the part structurally weakened, possibly with sharp edges", True),
        DefectInfo("bent", "bend", True, "a section pushed out of its nominal shape",
                   "mechanical force during assembly or handling",
                   "can stop the part from fitting or seating correctly", True),
        DefectInfo("missing", "missing part", True, "a gap where a feature should be",
                   "an incomplete assembly step or material breaking off",
                   "leaves the part incomplete, so it cannot work as designed", True),
        DefectInfo("misplaced", "misplaced component", True, "a component out of its expected position",
                   "an assembly or placement error",
                   "can give the wrong function or none at all", True),
        DefectInfo("deformation", "deformation", True, "a region squeezed or flattened out of shape",
                   "excess pressure during forming, packing or handling",
                   "puts dimensions out of tolerance, so it may not fit or seal", True),
        DefectInfo("fold", "fold", True, "a crease where the material has doubled over",
                   "material creased while being laid, rolled or packed",
                   "leaves a weak line and a visible flaw", False),
        DefectInfo("thread", "loose thread", True, "a strand sticking out of the surface",
                   "a yarn broken or pulled during weaving or handling",
                   "can snag and unravel further", False),
        DefectInfo("thread_damage", "damaged thread", True, "thread turns that are flattened, chipped or missing",
                   "an impact on the thread or a worn rolling die",
                   "can stop the screw from engaging or holding its torque", True),
        DefectInfo("rough", "rough patch", True, "an area whose texture is coarser than the rest",
                   "abrasion or incomplete finishing",
                   "puts the surface finish out of specification", False),
        DefectInfo("spot", "spot", True, "a small blemish that stands out from its surroundings",
                   "residue or a local material fault",
                   "fails the appearance standard and may hide a material fault", False),
        DefectInfo("burn", "burn mark", True, "a darkened, scorched area",
                   "overheating during processing",
                   "degrades the material there and, for food, its taste", True),
        DefectInfo("melt", "melted area", True, "a region that has lost its shape by softening",
                   "excess heat during processing or storage",
                   "changes the shape and can affect how the part works", True),
        DefectInfo("extra", "extra material", False, "material present where there should be none",
                   "excess material left from forming or assembly",
                   "can interfere with fit and looks wrong", True),
        DefectInfo("stuck", "pieces stuck together", False, "two pieces fused where they should be separate",
                   "pieces touching while still hot or sticky",
                   "gives the wrong count and shape per piece", True),
        DefectInfo("dent", "dent", True, "a shallow depression pressed into the surface",
                   "an impact or pressure point during handling",
                   "can weaken thin walls and spoils the finish", True),
        DefectInfo("combined", "combination of defects", True, "several flaws at the same place",
                   "more than one process fault acting together",
                   "adds up several risks, so the part cannot be trusted", True),
        DefectInfo("wrong_type", "wrong-type item", True, "an item that does not belong to this batch",
                   "a mix-up on the filling or assembly line",
                   "puts the wrong product in the pack, a serious safety risk", True),
        DefectInfo("misalignment", "misalignment", True, "features that are not parallel or centred as they should be",
                   "a fixture or forming step out of adjustment",
                   "stops the part from mating correctly", True),
        DefectInfo("paint", "paint defect", True, "a coating that is patchy, missing or uneven",
                   "a coating step that was interrupted or contaminated",
                   "leaves the metal unprotected against corrosion there", True),
        DefectInfo("anomaly", "anomaly", True, "an area that does not match the reference",
                   "a process deviation that the image alone does not pin down",
                   "means the part does not meet the standard of the reference", True),
    )
}

# Dataset folder names (after _norm) → (base kind, noun to write or None to keep the base noun).
_ALIASES: dict[str, tuple[str, str | None]] = {
    "color": ("colour", None),
    "colour": ("colour", None),
    "discoloration": ("colour", None),
    "different colour spot": ("colour", "off-colour spot"),
    "similar colour spot": ("colour", "faint off-colour spot"),
    "gray stroke": ("print", "grey stroke mark"),
    "scratches": ("scratch", None),
    "scratch head": ("scratch", "scratch on the head"),
    "scratch neck": ("scratch", "scratch on the neck"),
    "small scratches": ("scratch", None),
    "cut lead": ("cut", "cut lead"),
    "cut inner insulation": ("cut", "cut in the inner insulation"),
    "cut outer insulation": ("cut", "cut in the outer insulation"),
    "poke": ("hole", "poke hole"),
    "poke insulation": ("hole", "poke through the insulation"),
    "faulty imprint": ("imprint", None),
    "liquid": ("stain", "liquid stain"),
    "oil": ("stain", "oil stain"),
    "glue": ("stain", "glue residue"),
    "glue strip": ("stain", "glue strip"),
    "metal contamination": ("contamination", "metal contamination"),
    "broken large": ("broken", None),
    "broken small": ("broken", None),
    "broken teeth": ("broken", "broken teeth"),
    "damaged case": ("broken", "damaged case"),
    "corner or edge breakage": ("broken", "broken corner or edge"),
    "middle breakage": ("broken", "break in the middle"),
    "bent wire": ("bent", "bent wire"),
    "bent lead": ("bent", "bent lead"),
    "bend and parallel": ("bent", "bend with misalignment"),
    "missing wire": ("missing", "missing wire"),
    "missing cable": ("missing", "missing cable"),
    "cable swap": ("misplaced", "swapped cables"),
    "flip": ("misplaced", "flipped component"),
    "wrong place": ("misplaced", None),
    "manipulated front": ("misplaced", "tampered front"),
    "squeeze": ("deformation", None),
    "squeezed teeth": ("deformation", "squeezed teeth"),
    "flattening": ("deformation", "flattened area"),
    "split teeth": ("broken", "split teeth"),
    "fabric border": ("broken", "fabric damage at the border"),
    "fabric interior": ("broken", "fabric damage in the interior"),
    "thread side": ("thread_damage", "damaged thread on the side"),
    "thread top": ("thread_damage", "damaged thread at the top"),
    "pill type": ("wrong_type", "wrong-type pill"),
    "parallel behaviour": ("misalignment", None),
    "mismatch": ("misalignment", "shape mismatch"),
    "defective painting": ("paint", None),
    "burnt": ("burn", None),
    "stuck together": ("stuck", None),
    "fryum stuck together": ("stuck", None),
    "defect": ("anomaly", "defect"),
    "defective": ("anomaly", "defect"),
    "bad": ("anomaly", "defect"),
    "cutpaste": ("misplaced", "pasted-in patch"),
}

# Keywords looked for inside unknown names, first match wins (so "scratch" beats "spot" in "scratch spot").
_KEYWORDS = (
    ("crack", "crack"), ("scratch", "scratch"), ("hole", "hole"), ("cut", "cut"), ("colour", "colour"),
    ("color", "colour"), ("stain", "stain"), ("contamin", "contamination"), ("broken", "broken"),
    ("break", "broken"), ("chip", "broken"), ("bent", "bent"), ("bend", "bent"), ("missing", "missing"),
    ("misplac", "misplaced"), ("fold", "fold"), ("thread", "thread"), ("rough", "rough"), ("imprint", "imprint"),
    ("print", "print"), ("spot", "spot"), ("burn", "burn"), ("melt", "melt"), ("dent", "dent"),
    ("squeez", "deformation"), ("deform", "deformation"), ("flat", "deformation"), ("extra", "extra"),
    ("stuck", "stuck"), ("paint", "paint"), ("glue", "stain"), ("oil", "stain"), ("liquid", "stain"),
)


def _norm(label: str) -> str:
    return " ".join(re.sub(r"[_\-/]+", " ", str(label)).lower().split())


def defect_info(label: str) -> DefectInfo:
    """What to write about a defect whose dataset label (folder name or annotation text) is ``label``."""
    name = _norm(label)
    if name in _BASE:
        return _BASE[name]
    if name in _ALIASES:
        key, noun = _ALIASES[name]
        base = _BASE[key]
        return replace(base, noun=noun) if noun else base
    words = f" {name} "
    for word, key in _KEYWORDS:
        if word in words:
            # Keep the dataset's own words: they are more specific than the base noun.
            return replace(_BASE[key], noun=name)
    if not name or name in ("anomaly", "anomalous", "abnormal"):
        return _BASE["anomaly"]
    return replace(_BASE["anomaly"], key="anomaly", noun=name if name.endswith(("defect", "damage")) else f"{name} defect")


def distractors(info: DefectInfo, pool: list[str], k: int, rng) -> list[DefectInfo]:
    """``k`` other defect kinds to name in wrong answers: from ``pool`` (labels seen in the category) first.

    Never the same base kind as ``info`` (a "scratch" is no wrong answer for a "scratch on the head").
    """
    seen = {info.key, info.noun}
    picks: list[DefectInfo] = []
    for label in rng.sample(pool, len(pool)) + rng.sample(_GENERIC, len(_GENERIC)):
        d = defect_info(label)
        if d.key in seen or d.noun in seen or d.key == "anomaly":
            continue
        seen.update((d.key, d.noun))
        picks.append(d)
        if len(picks) == k:
            break
    return picks


# Kinds that fit almost any object, for wrong answers when a category has few labels of its own.
_GENERIC = ["crack", "scratch", "stain", "hole", "contamination", "dent", "colour", "broken"]


@dataclass(frozen=True)
class ObjectInfo:
    noun: str  # "metal nut"
    domain: str  # "metal parts"
    surface: str  # the part an inspector looks at: "shell", "surface", "insulation"


_OBJECTS: dict[str, ObjectInfo] = {
    # MVTec AD
    "bottle": ObjectInfo("bottle", "packaging", "glass"),
    "cable": ObjectInfo("cable", "electronics", "insulation"),
    "capsule": ObjectInfo("capsule", "medicine", "shell"),
    "carpet": ObjectInfo("carpet", "textiles", "pile"),
    "grid": ObjectInfo("grid", "metal parts", "mesh"),
    "hazelnut": ObjectInfo("hazelnut", "food", "shell"),
    "leather": ObjectInfo("leather", "textiles", "grain"),
    "metal_nut": ObjectInfo("metal nut", "metal parts", "surface"),
    "pill": ObjectInfo("pill", "medicine", "coating"),
    "screw": ObjectInfo("screw", "metal parts", "surface"),
    "tile": ObjectInfo("tile", "building materials", "glaze"),
    "toothbrush": ObjectInfo("toothbrush", "consumer goods", "bristles"),
    "transistor": ObjectInfo("transistor", "electronics", "package"),
    "wood": ObjectInfo("wood", "building materials", "grain"),
    "zipper": ObjectInfo("zipper", "textiles", "teeth"),
    # MPDD
    "bracket_black": ObjectInfo("black bracket", "metal parts", "coating"),
    "bracket_brown": ObjectInfo("brown bracket", "metal parts", "coating"),
    "bracket_white": ObjectInfo("white bracket", "metal parts", "coating"),
    "connector": ObjectInfo("connector", "metal parts", "surface"),
    "metal_plate": ObjectInfo("metal plate", "metal parts", "surface"),
    "tubes": ObjectInfo("metal tube", "metal parts", "surface"),
    # VisA
    "candle": ObjectInfo("candle", "consumer goods", "wax"),
    "capsules": ObjectInfo("capsule", "medicine", "shell"),
    "cashew": ObjectInfo("cashew", "food", "surface"),
    "chewinggum": ObjectInfo("chewing gum", "food", "surface"),
    "fryum": ObjectInfo("fryum", "food", "surface"),
    "macaroni1": ObjectInfo("macaroni", "food", "surface"),
    "macaroni2": ObjectInfo("macaroni", "food", "surface"),
    "pcb1": ObjectInfo("circuit board", "electronics", "board"),
    "pcb2": ObjectInfo("circuit board", "electronics", "board"),
    "pcb3": ObjectInfo("circuit board", "electronics", "board"),
    "pcb4": ObjectInfo("circuit board", "electronics", "board"),
    "pipe_fryum": ObjectInfo("pipe fryum", "food", "surface"),
    # sage data normals (procedural and scikit-image photo categories)
    "brushed_metal": ObjectInfo("brushed metal plate", "metal parts", "brushed finish"),
    "woven_fabric": ObjectInfo("woven fabric", "textiles", "weave"),
    "wood_plank": ObjectInfo("wood plank", "building materials", "grain"),
    "ceramic_tile": ObjectInfo("ceramic tile", "building materials", "glaze"),
    "washer": ObjectInfo("washer", "metal parts", "surface"),
    "gear": ObjectInfo("gear", "metal parts", "surface"),
    "brick": ObjectInfo("brick wall", "building materials", "surface"),
    "grass": ObjectInfo("grass sample", "natural materials", "blades"),
    "gravel": ObjectInfo("gravel sample", "building materials", "stones"),
}


def object_info(category: str) -> ObjectInfo:
    """Noun, domain and surface word for a category folder; unknown ones read as their folder name."""
    if category in _OBJECTS:
        return _OBJECTS[category]
    noun = _norm(category) or "part"
    return ObjectInfo(noun, "industrial", "surface")
