"""Guided yes/no: an answer's first word set from what the pair's detection says, the rest the model's.

sage-smol reads its question's polarity poorly on wordings it did not train on (one-shot on hazelnut's
held-out wordings it said "No" to every "Is it in perfect condition?", and "Yes" to "Do both photos show
it in the same condition?" for most cracked ones), while its calibrated detection (`sage calibrate`) is
right on 24 of 24 hazelnut pairs. So where the checkpoint is calibrated (for a pair with a reference, or
with `sage calibrate --shots 0` for a test image alone), the first word of the answer to

* a question whether the part is defective or normal, or a decision on it ("Is it flawless?", "Should
  it be scrapped?"), is the calibrated verdict, in the question's polarity (a question on a region, "Is
  the upper left in order?", counts the defect only where the map is hot in that region);
* a question whether the defect is at a named place ("Is the damage near the top-left corner?") is
  "no" for a normal part, else whether the anomaly map is hot (`hot_cells`) in a cell of the 3x3 grid
  that the place names (one-shot only: zero-shot there is no map);

and the model writes the rest after that word (which can say the opposite: bench/verdict.contradicts flags
those answers). Type, size, consequence and cause questions, and any question the reader cannot sort, keep
the model's own first word. Questions are sorted by the reader `sage bench` reads statements with
(bench/asks.py). Its rules were written with the held-out wording families of prefs/wordings.py in view,
so benches on those wordings flatter a guided model.
"""

from __future__ import annotations

import torch

from sage_cli.bench import lexicon as lx
from sage_cli.bench.asks import ask

# A cell is "hot" where a patch stands half the peak's height above the map's mean. Chosen on the release
# benches (the defect at the asked place: 86 of 92 right at 0.5; 84-87 from 0.4 to 0.8; the peak's cell
# alone 80, the model's own answers 73), so those figures flatter it a little.
HOT = 0.5


def guides(question: str) -> bool:
    """Whether the guide gives the first word of an answer to `question` (given a detection and a map)."""
    return _guided(ask(question))


def _guided(asked) -> bool:
    # a location question naming a part ("on the screw head?") names no place the map can say
    return asked.kind in ("presence", "normal") or (
        asked.kind == "location" and bool(asked.places) and asked.places <= lx.PLACE_WORDS)


def verdict_for(question: str, detection: dict | None, amap) -> bool | None:
    """The first word for `question` (True = yes, False = no) from the pair's calibrated detection
    (calibration.detect's dict) and anomaly map (engine.AnomalyMap; None zero-shot, where a zero-shot
    calibration still gives presence and normality); None: the model's own."""
    if detection is None:
        return None
    asked = ask(question)
    if not _guided(asked):
        return None
    # the place a location question names, or the region a presence / normal question is about ("Is the
    # upper left of this part in order?"): the defect counts only if the map is hot there
    places = asked.places if asked.kind == "location" else frozenset(lx.places(lx.words(question)))
    defective = detection["verdict"] == "defect"
    if places and amap is None and defective:
        return None  # zero-shot: no map says where
    bad = defective and (not places or bool(hot_cells(amap) & cells_of(places)))
    return not bad if asked.kind == "normal" else bad


def contradicted(answer) -> bool:
    """Whether an engine.Answer was guided and its words after the given yes/no say the opposite
    (bench/verdict.contradicts, with the question it was asked)."""
    from sage_cli.bench.verdict import contradicts

    return bool(answer.guided) and contradicts(answer.text, answer.question)


def hot_cells(amap, share: float = HOT) -> set[tuple[int, int]]:
    """The (row, col) cells of the 3x3 grid (that of data.masks.location_words) holding a patch whose map
    value stands at least `share` of the peak's height above the map's mean: where the defect reaches,
    not only where it peaks (a crack across two cells is in both)."""
    from sage_cli.data.masks import grid_cell

    m = amap.map.float()  # [h, w]
    h, w = m.shape
    rows, cols = torch.nonzero(m - amap.mean >= share * (amap.max - amap.mean), as_tuple=True)  # [n], [n]
    return {grid_cell((c + 0.5) / w, (r + 0.5) / h) for r, c in zip(rows.tolist(), cols.tolist())}


def cells_of(places: frozenset[str] | set[str]) -> set[tuple[int, int]]:
    """The 3x3 cells that canonical places (lexicon.places) name: {top, left, corner} -> the top-left
    cell; {top, edge} -> the top row; {bottom, center} -> the bottom middle; {center} -> the centre."""
    rows, cols = {0, 1, 2}, {0, 1, 2}
    vertical, horizontal = places & {"top", "bottom"}, places & {"left", "right"}
    rows &= {0} if "top" in places else {2} if "bottom" in places else rows
    cols &= {0} if "left" in places else {2} if "right" in places else cols
    if "center" in places:  # "top middle": the middle column; "middle left": the middle row; alone: the centre
        if vertical and not horizontal:
            cols = {1}
        elif horizontal and not vertical:
            rows = {1}
        elif not vertical and not horizontal:
            rows, cols = {1}, {1}
    cells = {(r, c) for r in rows for c in cols}
    if "edge" in places:
        cells.discard((1, 1))
    if "corner" in places:
        cells &= {(0, 0), (0, 2), (2, 0), (2, 2)}
    return cells
