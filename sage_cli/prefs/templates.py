"""Phrase banks and answer writers: one test image's Finding → questions with four ranked answers.

Every answer starts with its verdict ("Yes." / "No.") so that a yes/no can be read off it, then says
why in an inspector's words. The four options of a question are ranked best first:

* A1 expert: the right verdict with what the annotation supports: defect type, location (mask grid
  words), size (size word and share of the image) and, at the diagnosis level, consequence and likely
  cause. For a normal image A1 says what was checked and names no defect (nor a place, unless the
  question asked about one).
* A2 right verdict, vaguer: no type, no location, no reasoning.
* A3 right verdict but partly wrong or hedged: a wrong type, a wrong place or a wrong cause, or doubt
  about a flaw that is not there.
* A4 wrong: the opposite verdict, saying a defective part is fine or naming a defect a normal part
  does not have.

A1 and A2 never contradict the annotation; wrong details (other defect kinds, the mirrored location,
other causes) appear only in A3 and A4. Each slot has several phrasings; the choice comes from the
``random.Random`` the caller passes, so a build is deterministic per (seed, image).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sage_cli.data.masks import size_words
from sage_cli.data.records import Question
from sage_cli.prefs.diagnosis import DiagnosisQuestions, cap as _cap
from sage_cli.prefs.knowledge import DefectInfo, ObjectInfo

_GRID = ("upper left", "upper center", "upper right", "middle left", "center", "middle right",
         "lower left", "lower center", "lower right")
_MIRROR = {"upper": "lower", "lower": "upper", "left": "right", "right": "left"}


def cells_touched(box: tuple[int, int, int, int], width: int, height: int) -> set[str]:
    """The cells of the 3x3 grid (masks.location_words' grid) that a pixel box overlaps."""
    rows = range(min(box[1] * 3 // height, 2), min((box[3] - 1) * 3 // height, 2) + 1)
    cols = range(min(box[0] * 3 // width, 2), min((box[2] - 1) * 3 // width, 2) + 1)
    return {_GRID[r * 3 + c] for r in rows for c in cols}


def mirror(loc: str) -> str | None:
    """The grid cell opposite ``loc`` ("upper left" → "lower right"); None for the center."""
    out = " ".join(_MIRROR.get(w, w) for w in loc.split())
    return None if out == loc else out


def share(area_frac: float) -> str:
    """The defect's share of the image in words: "under 1% of the image", "about 16% of the image"."""
    pct = area_frac * 100
    if pct < 1:
        return "under 1% of the image"
    return f"about {round(pct)}% of the image"


@dataclass(frozen=True)
class Finding:
    """What the annotation says about one test image, in words, plus what wrong answers may name."""

    obj: ObjectInfo
    defect: DefectInfo | None  # None: a normal image
    location: str | None = None  # grid words from the mask
    area_frac: float | None = None
    bbox: tuple[int, int, int, int] | None = None
    image_size: tuple[int, int] | None = None  # (width, height): says which grid cells the defect touches
    has_reference: bool = True
    wrong: list[DefectInfo] = field(default_factory=list)  # other defect kinds, for A3/A4 (at least 2)

    @property
    def anomalous(self) -> bool:
        return self.defect is not None


class Writer(DiagnosisQuestions):
    """Writes the questions, options and conclusion of one Finding; all choices come from ``rng``
    (the diagnosis-level questions are in diagnosis.py)."""

    def __init__(self, f: Finding, rng):
        if len(f.wrong) < 2:
            raise ValueError("a Finding needs at least two wrong defect kinds")
        self.f = f
        self.rng = rng
        o = f.obj
        # The wrong place: the mirrored cell, or another one, never a cell the defect's box reaches into
        # (a large defect centred in the middle also lies partly in the upper row).
        loc = f.location or rng.choice(_GRID)
        touched = {loc}
        if f.bbox is not None and f.image_size is not None:
            touched |= cells_touched(f.bbox, *f.image_size)
        clear = [g for g in _GRID if g not in touched]
        self.clear = clear  # empty: the defect spans the whole grid, so no place is wrong for sure
        wloc = mirror(loc) if mirror(loc) in clear else rng.choice(clear or [g for g in _GRID if g != loc])
        w1, w2 = f.wrong[0], f.wrong[1]
        self.fields = {
            "obj": o.noun,
            "surface": o.surface,
            "ref": "the reference" if f.has_reference else f"a good {o.noun}",
            "w1": w1.noun,
            "w1_a": w1.a(),
            "w1_sized": w1.a(rng.choice(("tiny", "small", "medium-sized"))),
            "w1_cause": w1.cause,
            "w2_a": w2.a(),
            "w2_cause": w2.cause,
            "wloc": wloc,
            "wat": f" in the {wloc}",
            "loc": loc,  # for a normal image: a place that questions and wrong answers may point at
        }
        d = f.defect
        if d is not None:
            size = size_words(f.area_frac) if f.area_frac is not None else None
            self.fields.update(
                noun=d.noun,
                def_a=d.a(),
                def_sized=d.a(size),
                look=d.look,
                cause=d.cause,
                consequence=d.consequence,
                size=size or "",
                at=self._at(f.location) if f.location else "",
                extent=f", covering {share(f.area_frac)}" if f.area_frac is not None else "",
                box=self._box(f.bbox),
            )
            # A cause that belongs to another kind, for wrong answers; never the true one.
            self.fields["w1_cause"] = next((w.cause for w in f.wrong if w.cause != d.cause), "careless handling")
            self.fields["w2_cause"] = next(
                (w.cause for w in reversed(f.wrong) if w.cause not in (d.cause, self.fields["w1_cause"])),
                "a worn tool",
            )

    # ------------------------------------------------------------------------------------- helpers

    def _at(self, loc: str) -> str:
        if loc == "center":
            return self.rng.choice((" in the center", " near the center", " at the center"))
        return self.rng.choice((f" in the {loc}", f" in the {loc} area", f" toward the {loc}"))

    @staticmethod
    def _box(b) -> str:
        return f" (box x {b[0]}-{b[2]}, y {b[1]}-{b[3]} px)" if b is not None else ""

    def say(self, bank: tuple[str, ...], **extra) -> str:
        """One phrasing from ``bank``, filled with the finding's fields."""
        return self.rng.choice(bank).format(**self.fields, **extra)

    @staticmethod
    def _v(answer: bool) -> str:
        return "Yes" if answer else "No"

    def _question(self, level: str, text: str, answer: bool, options: list[str]) -> Question:
        return Question(question=text, answer=answer, options=options, level=level)

    # ------------------------------------------------------------------------------------- standard

    # Yes means "there is a defect" / yes means "it is normal": one of each per group. Many wordings of
    # each polarity (the second block of each bank is wordings.TRAINING_WORDINGS v2): with four per side a
    # model learnt each template's verdict and answered "yes" to "is it free of defects?" phrased anew.
    _STD_DEFECT_Q = (
        "Compared with {ref}, is there any defect on the test {obj}?",
        "Does the test {obj} show any anomaly that {ref} does not have?",
        "Is anything wrong with the test {obj} when you compare it with {ref}?",
        "Does the test image show a defective {obj}?",
        "Is there a defect on this {obj}?",
        "Do you see any damage on the {obj} in the test image?",
        "Does this {obj} have a flaw?",
        "Are there any defects on the test {obj}?",
        "Is the test {obj} defective?",
        "Is this {obj} damaged?",
        "Is something abnormal about the {obj} in the test image?",
        "Is any anomaly visible on this {obj}?",
        "Does the {surface} of the test {obj} show a fault?",
    )
    _STD_NORMAL_Q = (
        "Does the test {obj} look the same as {ref}?",
        "Is the test {obj} free of defects?",
        "Would the test {obj} pass a visual check against {ref}?",
        "Is the {surface} of the test {obj} as intact as in {ref}?",
        "Is this {obj} free of damage?",
        "Is the test {obj} normal?",
        "Does this {obj} look normal?",
        "Is the {obj} in the test image intact?",
        "Is the test {obj} without any flaw?",
        "Does the test {obj} match {ref}?",
        "Is this {obj} defect-free?",
        "Is the test {obj} as good as {ref}?",
        "Is everything in order with this {obj}?",
    )

    def standard(self) -> list[Question]:
        """Two comparison questions, one whose yes means defective and one whose yes means normal."""
        a = self.f.anomalous
        qs = [
            self._question("standard", self.say(self._STD_DEFECT_Q), a, self.verdict_options(says_defect=True)),
            self._question("standard", self.say(self._STD_NORMAL_Q), not a, self.verdict_options(says_defect=False)),
        ]
        self.rng.shuffle(qs)
        return qs

    def verdict_options(self, says_defect: bool) -> list[str]:
        """A1..A4 for a question whose "Yes" means defective (``says_defect``) or normal."""
        a = self.f.anomalous
        v = self._v(a == says_defect)  # the right verdict
        nv = self._v(a != says_defect)
        if a:
            return [
                self.say((
                    "{v}. The test {obj} shows {def_sized}{at}{extent}; {ref} has nothing there.",
                    "{v}. There is {def_sized}{at}{extent}, which {ref} does not show.",
                    "{v}. I see {def_sized}{at}{extent}: {look}. {ref_cap} is clean there.",
                ), v=v, ref_cap=_cap(self.fields["ref"])),
                self.say((
                    "{v}. The test {obj} has a visible flaw that {ref} does not have.",
                    "{v}. Something on the {surface} looks different from {ref}.",
                    "{v}, the test {obj} does not look like {ref}; there is some damage on it.",
                ), v=v),
                self.say((
                    "{v}, probably: there may be {w1_a}{wat}, though it could be a reflection.",
                    "{v}. I think there is {w1_a}{wat} of the image.",
                    "{v}, but only a faint {w1} that may not matter.",
                ), v=v),
                self.say((
                    "{nv}. The test {obj} matches {ref}; I see no defect.",
                    "{nv}. The {surface} is intact and looks the same as in {ref}.",
                    "{nv}, it is a normal {obj} with no visible flaw.",
                ), nv=nv),
            ]
        return [
            self.say((
                "{v}. The test {obj} matches {ref} in shape and colour, and its {surface} is intact; nothing is missing, added or marked.",
                "{v}. Outline, colour and texture of the {surface} are the same as in {ref}; no flaw anywhere on the {obj}.",
                "{v}. I compared the whole {obj} with {ref}: the outline and the {surface} are intact, with no marks.",
            ), v=v),
            self.say((
                "{v}, it looks normal.",
                "{v}. I do not see a problem with this {obj}.",
                "{v}, it seems fine compared with {ref}.",
            ), v=v),
            self.say((
                "{v}, as far as I can tell, although the {surface}{wat} might hide a faint {w1}; I would check it again.",
                "{v}, probably; the lighting makes the {wloc} hard to judge.",
                "{v}, most likely, though a shadow{wat} could be {w1_a}.",
            ), v=v),
            self.say((
                "{nv}. There is {w1_sized}{wat} that {ref} does not have.",
                "{nv}. The test {obj} shows {w1_sized}{wat}.",
                "{nv}, I see {w1_a}{wat} of the {obj}.",
            ), nv=nv),
        ]

    # ------------------------------------------------------------------------------------- identification

    # Every question family below is drawn with the same odds for a defective and a normal test image,
    # and from the same phrase bank: the wording must not give the verdict away. (It once did: normal
    # images got "is it free of X?" and defective ones "is the defect X?", and the question text alone
    # predicted 74% of the answers, so a model learnt the wording and ignored the image.) A question that
    # presupposes a defect is answered for a normal image by saying there is none.
    _TYPE_Q = {
        "presuppose": ("Is the defect on the test {obj} {asked_a}?",
                       "Is the flaw on the test {obj} best described as {asked_a}?",
                       "Is the damage on this {obj} {asked_a}?",
                       "Would you classify the defect on the test {obj} as {asked_a}?"),
        "show": ("Does the test {obj} show {asked_a}?", "Is there {asked_a} anywhere on the test {obj}?",
                 "Does this {obj} have {asked_a}?", "Can you see {asked_a} on the test {obj}?"),
        "free": ("Is the test {obj} free of any {asked}?", "Is the {surface} of the test {obj} without {asked_a}?",
                 "Is this {obj} free from any {asked}?"),
    }
    _PLACE_Q = ("Is the defect on the test {obj} in the {asked}?",
                "Is the anomaly on the test {obj} located in the {asked} of the image?",
                "Is there a defect in the {asked} of the test {obj}?",
                "Is the defect in the {asked} of this {obj}?",
                "Does the flaw sit in the {asked}?",
                "Is the defect visible in the {asked} of the image?")
    _SIZE_Q = ("Is the defect on the test {obj} {asked}?", "Would you call the flaw on the test {obj} {asked}?",
               "Is the flaw on this {obj} {asked}?")
    _REGION_Q = {
        "consistent": ("Is the {asked} of the test {obj} consistent with {ref}?",
                       "Does the {asked} of the test {obj} look as it should?",
                       "Is the {asked} of this {obj} in order?"),
        "flawed": ("Does the {asked} of the test {obj} show any defect?", "Is there a flaw in the {asked} of the test {obj}?",
                   "Is anything wrong in the {asked} of this {obj}?"),
    }
    _SIZES = ("tiny", "small", "medium-sized", "large")

    def identification(self) -> list[Question]:
        """Two questions on what and where: the defect's type, and its place, size or a region's state."""
        f = self.f
        if f.anomalous and f.location is None and f.area_frac is None:
            # No mask: ask about the type twice, once naming it and once naming another kind.
            first = self.rng.random() < 0.5
            qs = [self._defect_type(first, "presuppose"), self._defect_type(not first, "show")]
        else:
            qs = [self._type_question(), self._where_question()]
        self.rng.shuffle(qs)
        return qs

    def _type_question(self) -> Question:
        family = self.rng.choice(tuple(self._TYPE_Q))
        if not self.f.anomalous:
            return self._normal_type(family)
        if family == "free":  # "is it free of <its own kind>?": no
            return self._defect_free()
        return self._defect_type(self.rng.random() < 0.5, family)

    def _where_question(self) -> Question:
        r, f = self.rng.random(), self.f
        family = "region" if r < 1 / 3 else "size" if r < 1 / 2 else "place"
        if not f.anomalous:
            return self._normal_region() if family == "region" else self._normal_where(family)
        if family == "region" and f.location is not None:
            return self._defect_region()
        if family != "place" and f.area_frac is not None and (family == "size" or f.location is None):
            return self._defect_size(self.rng.random() < 0.5)
        asked_true = self.rng.random() < 0.5 or not self.clear
        return self._defect_place(asked_true) if f.location is not None else self._defect_size(asked_true)

    def _defect_type(self, asked_true: bool, family: str) -> Question:
        asked = self.f.defect if asked_true else self.f.wrong[0]
        q = self.say(self._TYPE_Q[family], asked_a=asked.a(), asked=asked.noun)
        if asked_true:
            opts = [
                self.say((
                    "Yes. It is {def_sized}{at}{extent}: {look}.",
                    "Yes. The test {obj} shows {def_sized}{at}; it appears as {look}{extent}.",
                )),
                self.say(("Yes, it is {def_a}.", "Yes, that is what it looks like.", "Yes, it looks like {def_a}.")),
                self.say((
                    "Yes, {def_a}, but it sits{wat}." if self.f.location else "Yes, though it could equally be {w1_a}.",
                    "Yes, probably, though it could also be {w1_a}.",
                )),
                self.say(("No. It is {w1_a}, not {def_a}.", "No, there is no {noun} on this {obj}.")),
            ]
        else:
            opts = [
                self.say((
                    "No. It is not {asked_a} but {def_sized}{at}{extent}: {look}.",
                    "No. The test {obj} shows {def_sized}{at}, which is {look}, not {asked_a}.",
                ), asked_a=asked.a()),
                self.say(("No, it is a different kind of defect.", "No, that is not what this flaw is.")),
                self.say(("No. It looks more like {w2_a}{at}.", "No, I would call it {w2_a}.")),
                self.say(("Yes. It is {asked_a}{wat}.", "Yes, it is clearly {asked_a}."), asked_a=asked.a()),
            ]
        return self._question("identification", q, asked_true, opts)

    def _defect_free(self) -> Question:
        q = self.say(self._TYPE_Q["free"], asked_a=self.f.defect.a(), asked=self.f.defect.noun)
        opts = [
            self.say(("No. The test {obj} shows {def_sized}{at}{extent}: {look}.",
                      "No. There is {def_sized}{at}{extent}, which {ref} does not have.")),
            self.say(("No, it has {def_a}.", "No, there is one on it.")),
            self.say(("No, there is {def_a}, though it sits{wat}." if self.f.location else "No, though it could also be {w1_a}.",
                      "No; there is a mark that is {def_a} or perhaps {w1_a}.")),
            self.say(("Yes. The {surface} is intact; there is no {noun}.", "Yes, it is free of that kind of flaw.")),
        ]
        return self._question("identification", q, False, opts)

    def _defect_place(self, asked_true: bool) -> Question:
        loc = self.f.location
        asked = loc if asked_true else self.fields["wloc"]
        q = self.say(self._PLACE_Q, asked=asked)
        third = next((g for g in self.rng.sample(self.clear, len(self.clear)) if g != asked), None)
        if asked_true:
            opts = [
                self.say((
                    "Yes. The test {obj} has {def_sized} in the {loc_true}{box}{extent}.",
                    "Yes. {def_sized_cap} lies in the {loc_true}{extent}{box}.",
                ), loc_true=loc, def_sized_cap=_cap(self.fields["def_sized"])),
                self.say(("Yes, it is in that area.", "Yes, roughly there.", "Yes, the flaw is there.")),
                self.say(("Yes, there is {w1_a} there.", "Yes, but it is {w1_a}, not {def_a}.")),
                self.say(("No. That area is clean; the defect is{wat}.", "No, nothing is wrong in the {asked}."),
                         asked=asked),
            ]
        else:
            opts = [
                self.say((
                    "No. The test {obj} has {def_sized} in the {loc_true}, not the {asked}{box}{extent}.",
                    "No. The {asked} is clean; the defect is {def_sized} in the {loc_true}{extent}.",
                ), loc_true=loc, asked=asked),
                self.say(("No, the defect is elsewhere on the {obj}.", "No, it is somewhere else.")),
                self.say(("No, it is in the {third}.", "No, I think it is nearer the {third}.")
                         if third else ("No, it is nearer the edge of the {obj}.",), third=third),
                self.say(("Yes. The {noun} is in the {asked}.", "Yes, the flaw sits in the {asked}."), asked=asked),
            ]
        return self._question("identification", q, asked_true, opts)

    def _defect_size(self, asked_true: bool) -> Question:
        size = self.fields["size"]
        sizes = self._SIZES
        other = self.rng.choice([s for s in sizes if s != size])
        asked = size if asked_true else other
        third = next(s for s in self.rng.sample(sizes, len(sizes)) if s not in (size, asked))
        q = self.say(self._SIZE_Q, asked=asked)
        if asked_true:
            opts = [
                self.say(("Yes. It is {def_sized}{at}{extent}.", "Yes. The test {obj} has {def_sized}{at}{extent}.")),
                self.say(("Yes, about that size.", "Yes, that fits.")),
                self.say(("Yes, but it is {w1_a}.", "Yes, roughly, though it could be bigger than it looks.")),
                self.say(("No. It is {third}.", "No, it is much {smaller_or_bigger} than that."), third=third,
                         smaller_or_bigger="smaller" if sizes.index(size) >= 2 else "bigger"),
            ]
        else:
            opts = [
                self.say(("No. It is {def_sized}{at}{extent}, not {asked}.",
                          "No. The test {obj} has {def_sized}{at}{extent}; I would not call it {asked}."), asked=asked),
                self.say(("No, it is a different size.", "No, its size is different.")),
                self.say(("No, it is {third}.",), third=third),
                self.say(("Yes. It is {asked}.", "Yes, I would call it {asked}."), asked=asked),
            ]
        return self._question("identification", q, asked_true, opts)

    def _defect_region(self) -> Question:
        """Is the defect's own cell consistent with the reference (no) / does it show a defect (yes)?"""
        consistent = self.rng.random() < 0.5
        q = self.say(self._REGION_Q["consistent" if consistent else "flawed"], asked=self.f.location)
        v, nv = self._v(not consistent), self._v(consistent)
        opts = [
            self.say(("{v}. The {loc_true} shows {def_sized}{extent}: {look}; {ref} is clean there.",
                      "{v}. There is {def_sized} in the {loc_true}{box}, which {ref} does not have."),
                     v=v, loc_true=self.f.location),
            self.say(("{v}, that part differs from {ref}.", "{v}, there is a flaw there."), v=v),
            self.say(("{v}; there is {w1_a} there.", "{v}, there is a mark there, probably {w1_a}."), v=v),
            self.say(("{nv}. That part matches {ref}; nothing is out of place.", "{nv}, it looks fine there."), nv=nv),
        ]
        return self._question("identification", q, not consistent, opts)

    def _normal_type(self, family: str) -> Question:
        """"Is it free of X?" (yes), or "does it show X?" / "is the defect X?" (no: there is none)."""
        free = family == "free"
        q = self.say(self._TYPE_Q[family], asked_a=self.fields["w1_a"], asked=self.fields["w1"])
        v, nv = self._v(free), self._v(not free)
        opts = [
            self.say((
                "{v}. The {surface} is intact and even, as in {ref}; there is no defect of any kind.",
                "{v}. I checked the whole {obj} against {ref}: the {surface} is uniform and undamaged, with no flaw.",
            ), v=v),
            self.say(("{v}, I see nothing like that.", "{v}, it looks clean."), v=v),
            self.say(("{v}, although a faint mark{wat} might be an early {w1}.",
                      "{v}, probably, but the {wloc} is hard to see."), v=v),
            self.say(("{nv}. There is {w1_sized}{wat} of the {obj}.", "{nv}, the {obj} shows {w1_a}{wat}."), nv=nv),
        ]
        return self._question("identification", q, free, opts)

    def _normal_where(self, family: str) -> Question:
        """A place or size question that presupposes a defect: no, there is none."""
        asked = self.fields["loc"] if family == "place" else self.rng.choice(self._SIZES)
        q = self.say(self._PLACE_Q if family == "place" else self._SIZE_Q, asked=asked)
        opts = [
            self.say(("No. There is no defect on the test {obj}: its {surface} matches {ref} everywhere.",
                      "No. The test {obj} has no flaw to place or measure; outline and {surface} are as in {ref}.")),
            self.say(("No, there is no defect at all.", "No, the {obj} looks normal.")),
            self.say(("No, I see no defect, though the {wloc} is hard to judge.",
                      "No, probably nothing, but a shadow{wat} could hide {w1_a}.")),
            self.say(("Yes. There is {w1_a} in the {asked}.", "Yes, {w1_a} sits there.") if family == "place" else
                     ("Yes. It is {asked_w1}{wat}.", "Yes, {asked_w1} sits{wat}."),
                     asked=asked, asked_w1=self.f.wrong[0].a(asked)),
        ]
        return self._question("identification", q, False, opts)

    def _normal_region(self) -> Question:
        consistent = self.rng.random() < 0.5  # "is the X consistent?" (yes) or "does X show a defect?" (no)
        q = self.say(self._REGION_Q["consistent" if consistent else "flawed"], asked=self.fields["loc"])
        v, nv = self._v(consistent), self._v(not consistent)
        opts = [
            self.say((
                "{v}. The {loc} matches {ref} in colour, texture and outline; nothing is out of place.",
                "{v}. In the {loc} the {surface} is intact and looks just like {ref}.",
            ), v=v),
            self.say(("{v}, it looks fine there.", "{v}, that part is normal."), v=v),
            self.say(("{v}, probably; a faint mark there could be {w1_a}, though it may only be lighting.",
                      "{v}, I think, but I would look again for {w1_a} there."), v=v),
            self.say(("{nv}. There is {w1_sized} in the {loc}.", "{nv}, the {loc} shows {w1_a}."), nv=nv),
        ]
        return self._question("identification", q, consistent, opts)

    # ------------------------------------------------------------------------------------- conclusion

    def conclusion(self) -> str:
        if not self.f.anomalous:
            return self.say((
                "The test {obj} matches {ref}; no defect found.",
                "No defect: the {surface} and outline of the test {obj} are the same as in {ref}. It can pass.",
                "The test {obj} is normal; it can pass inspection.",
            ))
        return self.say((
            "The test {obj} has {def_sized}{at}{extent}. Likely cause: {cause}; {action}.",
            "Defective: {def_sized}{at}{extent}, which {consequence}. {action_cap}.",
        ), **self._action())
