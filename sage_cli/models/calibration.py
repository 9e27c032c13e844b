"""Calibrated detection: P(defect) from the first-token P(yes) and the Eq. 1 anomaly map (`sage calibrate`).

A trained checkpoint's P(yes) to DEFAULT_QUESTION ranks defects fairly well, but its level need not be
learnt: sage-smol 1 said 0.50 on a cracked hazelnut and 0.32 on a normal one, so "P(yes) >= 0.5" meant nothing.
`sage calibrate CKPT --on VAL` measures, on every labelled one-shot pair of VAL (any format sage reads;
meant to be synthetic: `sage data synth`), the detection features of FEATURES, and fits a logistic
calibration

    P(defect) = sigmoid(w . features + b)

with a few Newton steps (float64, features standardised for the fit and folded back, ridge L2 on the
weights, classes weighted equally so that a VAL with six defects per normal image does not move the
line). The verdict is P(defect) >= threshold (0.5 by default: with balanced classes that is the point
where both errors cost the same). The fit, its threshold, what VAL was and the figures on it (AUROC of
the raw P(yes), of the map peak and of P(defect); accuracy and balanced accuracy at the threshold;
leave-one-category-out figures when VAL has several categories: how the line carries over to a category
it was not fitted on) go under config.json's "calibration" key (`checkpoint.write_calibration`).
`--features auto` (`choose_features`) measures every feature once and keeps the combination whose
leave-one-category-out balanced accuracy is best, so which signals to trust is read off VAL, not chosen
by hand.

`apply(config["calibration"], p_yes, amap) -> (p_defect, defective)` is what `sage infer`, `sage bench`
and `sage serve` call; `detect(engine, calibration, prefix, ...)` the same from an encoded pair. The
features need a reference: zero-shot (no map) nothing is reported. With several references the map's
peak and mean run lower, so `--shots N` fits on pairs with N references each (stored as "shots"), for
`sage infer TEST REF1 .. REFN` and `sage bench --shots N`; a run with another number of references says
that its maps are of a kind the calibration was not fitted on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from sage_cli.bench.auroc import auroc  # the benchmarks' AUROC: ties one half, None with one class
from sage_cli.defaults import DEFAULT_QUESTION
from sage_cli.errors import SageError

FORMAT = "sage-calibration/1"
EPS = 1e-4  # P(yes) is clipped to [EPS, 1 - EPS] before its logit; map values below EPS count as EPS
L2 = 0.01  # ridge on the standardised weights: synthetic VAL sets are often separable, where the plain fit diverges
THRESHOLD = 0.5


def _logit(p: float) -> float:
    p = min(max(float(p), EPS), 1.0 - EPS)
    return math.log(p / (1.0 - p))


def _top_mean(values: list[float], k: int) -> float:
    return sum(sorted(values, reverse=True)[:k]) / min(k, len(values))


# name -> (what it is, f(p_yes, peak, mean, flat map or None)); every one higher = more anomalous
FEATURES = {
    "logit_p_yes": ("logit of the first-token P(yes) to the calibration question",
                    lambda p, mx, mean, flat: _logit(p)),
    "log_map_max": ("log of the Eq. 1 map's peak, max_i (1 - s_i)",
                    lambda p, mx, mean, flat: math.log(max(mx, EPS))),
    "log_map_ratio": ("log of the map's peak over its mean (how much one place stands out of the image)",
                      lambda p, mx, mean, flat: math.log(max(mx, EPS) / max(mean, EPS))),
    "log_map_top4": ("log of the mean of the map's 4 highest patches",
                     lambda p, mx, mean, flat: math.log(max(_top_mean(flat, 4), EPS))),
}
NEEDS_MAP = {"log_map_top4"}  # features read from the whole map, not only its peak and mean
NEEDS_P_YES = {"logit_p_yes"}  # features read from the model's answer
ZERO_SHOT_FEATURES = ("logit_p_yes",)  # --shots 0: no reference, so no map
DEFAULT_FEATURES = ("log_map_max", "log_map_ratio")  # chosen by leave-one-category-out on synthetic VAL
AUTO = "auto"  # --features auto: every subset of FEATURES tried, the best leave-one-category-out one kept


# ---------------------------------------------------------------------------------------------- apply


def _map_stats(amap) -> tuple[float, float, list[float] | None] | None:
    """(peak, mean, flat map or None) of an engine.AnomalyMap, or of a dict with max / mean (/ map)."""
    if amap is None:
        return None
    if isinstance(amap, dict):
        if amap.get("max") is None or amap.get("mean") is None:
            return None
        flat = amap.get("map")
        flat = [float(v) for row in flat for v in row] if flat is not None else None
        return float(amap["max"]), float(amap["mean"]), flat
    flat = [float(v) for v in amap.map.flatten().tolist()] if getattr(amap, "map", None) is not None else None
    return float(amap.max), float(amap.mean), flat


def feature_values(names, p_yes: float | None, amap) -> list[float] | None:
    """The named features of one pair; None when one cannot be computed (no P(yes) where one is read,
    zero-shot: no map)."""
    stats = _map_stats(amap)
    if p_yes is None and any(n in NEEDS_P_YES for n in names):
        return None
    if stats is None:  # zero-shot: only features of P(yes) alone
        return [FEATURES[n][1](p_yes, None, None, None) for n in names] if set(names) <= NEEDS_P_YES else None
    mx, mean, flat = stats
    if flat is None and any(n in NEEDS_MAP for n in names):
        return None
    return [FEATURES[n][1](p_yes, mx, mean, flat) for n in names]


def check(calibration: dict, where: str = "calibration") -> dict:
    """The stored calibration, checked: SageError naming what is wrong."""
    if not isinstance(calibration, dict) or calibration.get("format") != FORMAT:
        raise SageError(f"{where}: not a {FORMAT} calibration (rerun `sage calibrate`)")
    names, weights = calibration.get("features"), calibration.get("weights")
    if not isinstance(names, list) or not isinstance(weights, list) or len(names) != len(weights) or not names:
        raise SageError(f"{where}: features and weights must be two lists of the same length")
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise SageError(f"{where}: unknown feature {unknown[0]!r} (this sage knows {', '.join(FEATURES)})")
    return calibration


def probability(calibration: dict, values: list[float]) -> float:
    z = float(calibration["bias"]) + sum(float(w) * v for w, v in zip(calibration["weights"], values))
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def apply(calibration: dict | None, p_yes: float | None, amap) -> tuple[float | None, bool | None]:
    """(calibrated P(defect), verdict: True = defective) of one pair from its P(yes) to the calibration's
    question and its anomaly map (engine.AnomalyMap, or a dict with max and mean); (None, None) without a
    calibration, a P(yes) or a map (zero-shot)."""
    if not calibration:
        return None, None
    values = feature_values(calibration["features"], p_yes, amap)
    if values is None:
        return None, None
    p = probability(calibration, values)
    return p, p >= float(calibration.get("threshold", THRESHOLD))


def detect(engine, calibration: dict | None, prefix, amap=None, p_yes: float | None = None,
           question: str | None = None) -> dict | None:
    """The calibrated detection of an encoded pair, JSON-ready: {question, p_yes, p_defect, verdict,
    threshold}; None without a calibration or zero-shot. `p_yes` is reused when it was read for the
    calibration's own question (`question`); otherwise, if a feature reads it, that question's P(yes) is
    read now (one forward after the cached prefix, no decoding); else it stays None."""
    if not calibration:
        return None
    amap = amap if amap is not None else engine.anomaly(prefix)
    if amap is None and calibration.get("shots", 1) != 0:
        return None  # a fit on maps, and no map (zero-shot)
    q = calibration.get("question") or DEFAULT_QUESTION
    if p_yes is None or question is None or question.strip() != q:
        p_yes = engine.p_yes(prefix, q) if set(calibration["features"]) & NEEDS_P_YES else None
    p, defective = apply(calibration, p_yes, amap)
    if p is None:
        return None
    return {"question": q, "p_yes": p_yes, "p_defect": p, "verdict": "defect" if defective else "normal",
            "threshold": float(calibration.get("threshold", THRESHOLD))}


def of_checkpoint(checkpoint: str | Path | None, zero_shot: bool = False) -> dict | None:
    """The checked calibration stored in a checkpoint's config (`zero_shot`: the one for pairs without a
    reference, `sage calibrate --shots 0`), or None (no checkpoint, none stored)."""
    if not checkpoint:
        return None
    from sage_cli.models.checkpoint import CALIBRATION, CALIBRATION_ZERO_SHOT, read_calibration

    cal = read_calibration(checkpoint, zero_shot)
    key = CALIBRATION_ZERO_SHOT if zero_shot else CALIBRATION
    return check(cal, f"{checkpoint}: {key}") if cal is not None else None


# ---------------------------------------------------------------------------------------------- fit


def fit(x: list[list[float]], y: list[bool], l2: float = L2, balanced: bool = True) -> tuple[list[float], float]:
    """Logistic regression by Newton's method: (weights on the raw features, bias).

    Features are standardised for the fit (so `l2` means the same whatever their scale) and the result is
    folded back. `balanced`: each class weighs half of the loss, whatever its count."""
    import torch

    if not x or len(x) != len(y):
        raise ValueError("fit needs as many labels as feature rows, and at least one")
    X = torch.tensor(x, dtype=torch.float64)  # [n, f]
    t = torch.tensor([float(v) for v in y], dtype=torch.float64)  # [n]
    n_pos = float(t.sum())
    if n_pos in (0.0, float(len(y))):
        raise ValueError("fit needs both classes")
    mu, sd = X.mean(0), X.std(0, unbiased=False).clamp(min=1e-8)
    Z = torch.cat([(X - mu) / sd, torch.ones(len(y), 1, dtype=torch.float64)], dim=1)  # [n, f + 1]
    sw = torch.where(t > 0, 0.5 / n_pos, 0.5 / (len(y) - n_pos)) if balanced else torch.full_like(t, 1 / len(y))
    reg = torch.full((Z.shape[1],), float(l2), dtype=torch.float64)
    reg[-1] = 0.0  # the bias is not shrunk
    theta = torch.zeros(Z.shape[1], dtype=torch.float64)
    for _ in range(100):
        p = torch.sigmoid(Z @ theta)
        grad = Z.T @ (sw * (p - t)) + reg * theta
        hess = (Z.T * (sw * p * (1 - p))) @ Z + torch.diag(reg)
        step = torch.linalg.solve(hess, grad)
        theta = theta - step
        if float(step.abs().max()) < 1e-12:
            break
    w = theta[:-1] / sd
    b = theta[-1] - (w * mu).sum()
    return [float(v) for v in w], float(b)


def accuracies(labels: list[bool], verdicts: list[bool]) -> dict:
    """{accuracy, balanced_accuracy (mean of the per-class accuracies), n}."""
    n = len(labels)
    per = [sum(v == y for v, y in zip(verdicts, labels) if y == c) / k
           for c in (True, False) if (k := sum(1 for y in labels if y == c))]
    return {"accuracy": sum(v == y for v, y in zip(verdicts, labels)) / n if n else None,
            "balanced_accuracy": sum(per) / len(per) if per else None, "n": n}


def evaluate(rows: list[dict], names, weights, bias, threshold: float, l2: float = L2) -> dict:
    """Figures on VAL: AUROC of the raw P(yes), of the map peak and of P(defect); accuracy at the raw
    P(yes) >= 0.5 and at the threshold; leave-one-category-out with two categories or more."""
    cal = {"features": list(names), "weights": weights, "bias": bias}
    y = [r["defective"] for r in rows]
    x = [r["features"] for r in rows]
    p = [probability(cal, v) for v in x]
    maps = [r["map_max"] for r in rows]  # None zero-shot
    out = {"auroc_p_yes": auroc(y, [r["p_yes"] for r in rows]),
           "auroc_map_max": auroc(y, maps) if None not in maps else None,
           "auroc_calibrated": auroc(y, p),
           "raw_at_0.5": accuracies(y, [r["p_yes"] >= 0.5 for r in rows]),
           "at_threshold": accuracies(y, [v >= threshold for v in p])}
    held = held_out_figures(x, y, [r["category"] for r in rows], threshold, l2)
    if held is not None:
        out["leave_one_category_out"] = held
    return out


def held_out_figures(x: list[list[float]], y: list[bool], categories: list[str], threshold: float,
                     l2: float = L2) -> dict | None:
    """Each category predicted by a fit on the others (a category whose others hold one class only is
    skipped): {auroc, accuracy, balanced_accuracy, n} over every held-out prediction, or None when VAL has
    one category or no category could be held out."""
    if len(set(categories)) < 2:
        return None
    held_p, held_y = [], []
    for c in sorted(set(categories)):
        train = [i for i, k in enumerate(categories) if k != c]
        ty = [y[i] for i in train]
        if all(ty) or not any(ty):
            continue
        w, b = fit([x[i] for i in train], ty, l2)
        test = [i for i, k in enumerate(categories) if k == c]
        held_p += [probability({"weights": w, "bias": b}, x[i]) for i in test]
        held_y += [y[i] for i in test]
    if not held_y:
        return None
    return {"auroc": auroc(held_y, held_p), **accuracies(held_y, [v >= threshold for v in held_p])}


def choose_features(rows: list[dict], threshold: float) -> tuple[tuple[str, ...], dict]:
    """--features auto: every non-empty subset of FEATURES fitted with each category of VAL held out in turn;
    the subset with the best held-out balanced accuracy wins (then AUROC, then fewer features). `rows` hold
    every feature, in FEATURES order. Returns (names, {"+"-joined subset: its held-out figures})."""
    from itertools import combinations

    names = tuple(FEATURES)
    y, cats = [r["defective"] for r in rows], [r["category"] for r in rows]
    scores: dict[str, dict] = {}
    best, best_key = None, None
    for k in range(1, len(names) + 1):
        for subset in combinations(range(len(names)), k):
            loco = held_out_figures([[r["features"][i] for i in subset] for r in rows], y, cats, threshold)
            if not loco:
                continue
            key = (round(loco["balanced_accuracy"], 6), round(loco["auroc"] or 0.0, 6), -k)
            scores["+".join(names[i] for i in subset)] = {"balanced_accuracy": loco["balanced_accuracy"],
                                                          "auroc": loco["auroc"]}
            if best_key is None or key > best_key:
                best, best_key = tuple(names[i] for i in subset), key
    if best is None:
        raise SageError("--features auto needs a VAL with two categories or more that each hold normal and "
                        "defective pairs (it picks the features by holding each category out)")
    return best, scores


# ---------------------------------------------------------------------------------------------- VAL


@dataclass
class Pair:
    test: Path
    reference: Path
    defective: bool
    category: str
    more: list[Path] = field(default_factory=list)  # --shots N: N - 1 more normal references

    @property
    def references(self) -> list[Path]:
        return [self.reference, *self.more]


def labelled_pairs(root: str | Path, seed: int = 0, limit: int | None = None,
                   shots: int = 1) -> tuple[list[Pair], str, int]:
    """(every labelled one-shot pair of the data set at `root`, its format, pairs left out for want of a
    reference or a label). Image sets (MVTec layout, VisA): each test image with its seeded train/good
    reference; for a `sage data synth` output, never the normal image the defect was drawn on (a
    reference identical outside the defect would be an easy pair no user has). QA sets: each group's
    pair and label, once per pair. MMAD: each image with its first template, normal when "good" is in
    its path. `limit`: at most that many normal and that many defective pairs per category (a stable
    seeded choice). `shots` > 1: each pair gets shots - 1 more normal references, chosen as `sage bench
    --shots` chooses them (the category's train/good images, or the references its groups use; MMAD: the
    next templates), never the test image, its own reference or a synth defect's source image."""
    from sage_cli.data.categories import more_references
    from sage_cli.data.formats import open_dataset

    root = Path(root)
    ds = open_dataset(root, seed=seed)
    pairs: list[Pair] = []
    skipped = 0
    if ds.kind == "image":
        sources = _synth_sources(root)
        normals: dict[str, list[str]] = {}
        for r in ds.records:
            if r.split == "train":
                normals.setdefault(r.category, []).append(r.image)
        for r in ds.records:
            if r.split != "test":
                continue
            ref = r.reference
            src = sources.get(r.image)
            if src is not None and ref == src:
                from sage_cli.data._common import choose_reference

                ref = choose_reference([n for n in normals.get(r.category, []) if n != src], seed, r.image)
            if ref is None:
                skipped += 1
                continue
            more = more_references(normals.get(r.category, []), (r.image, ref, src), r.image, shots - 1, seed)
            pairs.append(Pair(r.path(), r.path(ref), r.is_anomaly, r.category, [r.path(m) for m in more]))
    elif ds.kind == "qa":
        seen = set()
        used: dict[str, list[str]] = {}
        for g in ds.records:
            if g.reference_image is not None and g.reference_image not in used.setdefault(g.category, []):
                used[g.category].append(g.reference_image)
        for g in ds.records:
            if g.reference_image is None or g.anomalous is None:
                skipped += 1
                continue
            key = (g.test_image, g.reference_image)
            if key in seen:
                continue
            seen.add(key)
            base = Path(g.root) if g.root is not None else root
            more = more_references(used.get(g.category, []), (g.test_image, g.reference_image), g.test_image,
                                   shots - 1, seed)
            pairs.append(Pair(base / g.test_image, base / g.reference_image, bool(g.anomalous), g.category,
                              [base / m for m in more]))
    else:
        for it in ds.records:
            refs = list(it.similar_templates or []) + list(it.random_templates or [])
            if not refs:
                skipped += 1
                continue
            base = Path(it.root)
            more = [r for r in refs[1:] if r != it.image][: shots - 1]
            pairs.append(Pair(base / it.image, base / refs[0], "good" not in it.image,
                              it.category or it.dataset or "(none)", [base / m for m in more]))
    if limit is not None:
        pairs = _limit(pairs, seed, limit)
    return pairs, ds.format, skipped


def _synth_sources(root: Path) -> dict[str, str]:
    """A synth output's defect image -> the normal image it was drawn on (both relative to root)."""
    import json

    path = root / "synth.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("image"), str) and isinstance(rec.get("source"), str):
            out[rec["image"]] = rec["source"]
    return out


def _limit(pairs: list[Pair], seed: int, limit: int) -> list[Pair]:
    from sage_cli.data.categories import stable_score

    by: dict[tuple[str, bool], list[Pair]] = {}
    for p in pairs:
        by.setdefault((p.category, p.defective), []).append(p)
    keep = set()
    for group in by.values():
        ranked = sorted(group, key=lambda p: stable_score("calibrate", seed, str(p.test)))
        keep.update(id(p) for p in ranked[:limit])
    return [p for p in pairs if id(p) in keep]


def measure(engine, pairs: list[Pair], names, question: str = DEFAULT_QUESTION, progress=None,
            shots: int = 1) -> list[dict]:
    """Each pair encoded as `sage infer` encodes it (the checkpoint's default facts), its P(yes) to
    `question` and its map: rows {test, reference, category, defective, p_yes, map_max, map_mean, features}.
    `shots` 0: the test image alone (no map: map_max and map_mean None)."""
    from sage_cli.data.images import load_rgb

    rows = []
    for i, pair in enumerate(pairs):
        refs = [load_rgb(r) for r in pair.references] if shots else []
        prefix = engine.encode(load_rgb(pair.test), refs if len(refs) > 1 else refs[0] if refs else None, [])
        p = engine.p_yes(prefix, question)
        amap = engine.anomaly(prefix)
        if p is None:
            raise SageError(f"{engine.backbone_name}: its tokenizer has no yes/no tokens; P(yes) cannot be read")
        more = {"more_references": [str(m) for m in pair.more]} if pair.more else {}
        rows.append({"test": str(pair.test), "reference": str(pair.reference), **more, "category": pair.category,
                     "defective": pair.defective, "p_yes": p, "map_max": amap.max if amap else None,
                     "map_mean": amap.mean if amap else None,
                     "features": feature_values(names, p, amap)})
        if progress is not None:
            progress(i + 1, len(pairs))
    return rows


@dataclass
class Options:
    checkpoint: str | Path
    val: Path
    out: Path | None = None
    features: tuple[str, ...] | None = None  # None: DEFAULT_FEATURES; zero-shot, ZERO_SHOT_FEATURES
    threshold: float = THRESHOLD
    limit: int | None = None
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    question: str = DEFAULT_QUESTION
    rows: Path | None = None  # also write each pair's measurements here (JSON Lines)
    shots: int = 1  # normal references per pair: fit the maps `sage infer TEST REF1 .. REFN` will show; 0: none

    def check(self) -> Options:
        if self.shots < 0:
            raise SageError(f"--shots must be 0 (zero-shot) or more (references per pair), got {self.shots}")
        if self.features is None or (self.shots == 0 and self.features == (AUTO,)):
            self.features = ZERO_SHOT_FEATURES if self.shots == 0 else DEFAULT_FEATURES
        if self.shots == 0 and not set(self.features) <= NEEDS_P_YES:
            raise SageError("--shots 0: without a reference there is no anomaly map; the only feature is "
                            f"{', '.join(sorted(NEEDS_P_YES))}")
        unknown = [n for n in self.features if n not in FEATURES] if self.features != (AUTO,) else []
        if unknown:
            raise SageError(f"unknown feature {unknown[0]!r}; known: {', '.join(FEATURES)}")
        if not self.features or len(set(self.features)) != len(self.features):
            raise SageError("--features needs one or more different feature names")
        if not 0.0 < self.threshold < 1.0:
            raise SageError(f"--threshold must be between 0 and 1, got {self.threshold}")
        if self.limit is not None and self.limit < 1:
            raise SageError(f"--limit must be 1 or more, got {self.limit}")
        if not self.question.strip():
            raise SageError("--question is empty")
        if self.rows is not None and Path(self.rows).is_dir():
            raise SageError(f"{self.rows}: is a folder; --rows needs a file name")
        return self


def parse_features(text: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in text.split(",") if w.strip())


def calibrate(opts: Options, progress=None) -> dict:
    """Fit and store the calibration (module doc); returns it. Every check runs before the model loads."""
    from sage_cli.models import checkpoint as ckpt

    opts.check()
    src = ckpt.resolve(opts.checkpoint, None)
    if src is None:
        raise SageError("give a checkpoint to calibrate")
    ckpt.read_config(src)  # a folder that is not a checkpoint fails here
    if opts.out is not None:
        ckpt.check_calibration_out(src, opts.out)
    val = Path(opts.val)
    if not val.exists():
        raise SageError(f"{val}: no such file or directory")
    pairs, fmt, skipped = labelled_pairs(val, opts.seed, opts.limit, max(opts.shots, 1))  # 0: the reference unused
    n_def = sum(p.defective for p in pairs)
    if not pairs:
        why = f" ({skipped} without a reference image or a label)" if skipped else ""
        raise SageError(f"{val}: no labelled one-shot pairs to calibrate on{why}")
    short = sum(len(p.references) < opts.shots for p in pairs)
    if short:
        raise SageError(f"{val}: {short} of {len(pairs)} pairs find fewer than {opts.shots} normal references in "
                        "their category; lower --shots")
    if n_def in (0, len(pairs)):
        which = "defective" if n_def else "normal"
        raise SageError(f"{val}: all {len(pairs)} labelled pairs are {which}; calibration needs normal and "
                        "defective pairs (a synth output's test/good holds its normal test images)")
    auto = opts.features == (AUTO,)
    if auto and len({p.category for p in pairs}) < 2:  # before the model loads: nothing to hold out
        raise SageError(f"{val}: --features auto needs two categories or more (it picks the features by holding "
                        "each category out); this VAL has one. Name the features instead")
    from sage_cli.models.engine import Engine

    engine = Engine.load(None, str(src), dtype=opts.dtype, device=opts.device, seed=opts.seed)
    t0 = time.perf_counter()
    rows = measure(engine, pairs, tuple(FEATURES) if auto else opts.features, opts.question, progress, opts.shots)
    names, tried = opts.features, None
    if auto:  # every feature measured once; each subset refitted from the rows
        names, tried = choose_features(rows, opts.threshold)
        at = [list(FEATURES).index(n) for n in names]
        rows = [{**r, "features": [r["features"][i] for i in at]} for r in rows]
    x, y = [r["features"] for r in rows], [r["defective"] for r in rows]
    weights, bias = fit(x, y)
    cats: dict[str, list[int]] = {}
    for r in rows:
        c = cats.setdefault(r["category"], [0, 0])
        c[int(r["defective"])] += 1
    calibration = {
        "format": FORMAT,
        "question": opts.question,
        "shots": opts.shots,
        "features": list(names),
        **({"features_chosen": {"rule": "best leave-one-category-out balanced accuracy on VAL", "tried": tried}}
           if tried is not None else {}),
        "weights": weights,
        "bias": bias,
        "threshold": opts.threshold,
        "threshold_rule": "fixed" if opts.threshold != THRESHOLD else
                          "0.5 on the class-balanced fit (equal cost for both errors)",
        "fit": {"method": "logistic regression, Newton steps, class-balanced", "l2": L2},
        "val": {"name": val.name, "path": str(val), "format": fmt, "pairs": len(rows), "defective": n_def,
                "normal": len(rows) - n_def, "left_out": skipped, "limit": opts.limit, "seed": opts.seed,
                "categories": {c: {"normal": v[0], "defective": v[1]} for c, v in sorted(cats.items())}},
        "date": time.strftime("%Y-%m-%d"),
        "metrics": evaluate(rows, names, weights, bias, opts.threshold),
        "measure_s": round(time.perf_counter() - t0, 1),
    }
    written = ckpt.write_calibration(src, calibration, opts.out, zero_shot=opts.shots == 0)
    if opts.rows is not None:  # what was fitted on, pair by pair: to audit it or refit without the model
        import json

        from sage_cli.atomic import write_text

        write_text(opts.rows, "".join(json.dumps({**r, "feature_names": list(names)}) + "\n" for r in rows))
    return {"checkpoint": str(written), "calibration": calibration, "rows": rows}
