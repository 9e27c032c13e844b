"""What the two stages learn from: SFE examples (question -> expert answer) and E-DPO preference pairs.

Both are read once, up front, and checked: a missing image, an empty file or a malformed line stops
the run with one line (file and line) before anything is written.

Each can come as JSON Lines (`sage prefs build`, `sage score mle`) or as the dataset `sage data export`
made of them (a `save_to_disk` folder or a parquet file). A dataset's images are written once to
<cache>/dataset-images/<sha256><suffix> and its examples point there, so the trainer, the feature
cache and the facts (both keyed by the image's sha256) read a file path either way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from sage_cli import jsonl
from sage_cli.data import hf_datasets as hf
from sage_cli.data.paths import inside
from sage_cli.data.qa_jsonl import manifest_root
from sage_cli.errors import SageError


@dataclass
class SFEExample:
    key: str  # group id + question index
    test: Path
    reference: Path | None  # None = zero-shot
    question: str
    answer: str  # the best-ranked option (A1), or Yes./No. when a question has no options
    facts: list[str] = field(default_factory=list)
    prefix: str | None = None  # key of the prompt prefix it shares (`share_prefixes`); None: runs alone


@dataclass
class PairExample:
    key: str
    test: Path
    reference: Path | None
    question: str
    chosen: str
    rejected: str
    delta_h: float
    kind: str  # "min" or "max" (Eq. 5)
    facts: list[str] = field(default_factory=list)
    prefix: str | None = None  # key of the prompt prefix it shares (`share_prefixes`); None: runs alone


def _image(root: Path, rel: str | None, where: str) -> Path | None:
    if rel is None:
        return None
    try:
        path = inside(root, rel)
    except SageError as e:
        raise SageError(f"{where}: {e}") from None
    if not path.is_file():
        raise SageError(f"{where}: image {rel} not found under {root}")
    return path


class FactsIndex:
    """Facts by test image (sage_cli.facts.store.FactsFile); none given = no facts, no record = no facts."""

    def __init__(self, path: str | Path | None):
        from sage_cli.facts.store import FactsFile

        self.file = FactsFile(path) if path is not None else None

    def __call__(self, image: Path) -> list[str]:
        return (self.file.lookup(image) or []) if self.file is not None else []


def _dataset_image(cell, where: str) -> Path:
    """A dataset's image cell ({bytes, path}) as a file: its bytes written once under the cache, keyed
    by their sha256; a cell without bytes must point at an existing file."""
    from sage_cli.atomic import replacing
    from sage_cli.models.cache import cache_root

    data = (cell or {}).get("bytes")
    name = (cell or {}).get("path") or ""
    if data is None:
        if name and Path(name).is_file():
            return Path(name)
        raise SageError(f"{where}: image {name or '(none)'} has no bytes and is not a file")
    path = cache_root() / "dataset-images" / f"{hashlib.sha256(data).hexdigest()}{Path(name).suffix or '.png'}"
    if not path.is_file():
        with replacing(path) as tmp:
            tmp.write_bytes(data)
    return path


def _dataset_images(row: dict, where: str, shots: int) -> tuple[Path, Path | None]:
    """(test, reference) of a row whose `images` are [test] or [test, reference]."""
    images = row.get("images") or []
    if not images:
        raise SageError(f"{where}: no images")
    ref = _dataset_image(images[1], where) if shots == 1 and len(images) > 1 else None
    return _dataset_image(images[0], where), ref


def _rows(path: Path, kind: str):
    """(where, row) of a dataset of `kind`; SageError when it holds the other layout."""
    found, ds = hf.load(path)
    if found != kind:
        want = {"qa": "QA groups (sfe)", "pairs": "preference pairs (edpo)"}[kind]
        raise SageError(f"{path}: holds {'QA groups' if found == 'qa' else 'preference pairs'}, not {want}")
    for i, row in enumerate(ds):
        yield f"{path}: row {i}", row


def _qa_groups(qa_path: Path, root, shots: int):
    """(group, test, reference) of a QA file or dataset; malformed groups stop with file and line / row."""
    from sage_cli.data.problems import Problems
    from sage_cli.data.qa_jsonl import read_qa_jsonl
    from sage_cli.data.records import QAGroup

    if hf.is_dataset(qa_path):
        for where, row in _rows(qa_path, "qa"):
            try:
                g = QAGroup.from_json({k: v for k, v in row.items() if k != "images"})
            except KeyError as e:
                raise SageError(f"{where}: missing field {e.args[0]!r}") from None
            except (TypeError, ValueError, AttributeError) as e:
                raise SageError(f"{where}: malformed record ({e})") from None
            yield g, *_dataset_images(row, where, shots)
        return
    if not qa_path.is_file():
        raise SageError(f"{qa_path}: QA file not found")
    for g in read_qa_jsonl(qa_path, Problems(strict=True), root=root):
        where = f"{qa_path}: group {g.id}"
        ref = _image(g.root, g.reference_image, where) if shots == 1 else None
        yield g, _image(g.root, g.test_image, where), ref


def sfe_examples(qa_path: str | Path, root: str | Path | None, facts: FactsIndex, shots: int) -> list[SFEExample]:
    """One example per question of every QA group; the target is its best-ranked answer."""
    qa_path = Path(qa_path)
    out = []
    for g, test, ref in _qa_groups(qa_path, root, shots):
        for i, q in enumerate(g.questions):
            answer = q.options[0] if q.options else ("Yes." if q.answer else "No.")
            out.append(SFEExample(f"{g.id}:{i}", test, ref, q.question, answer, facts(test)))
    if not out:
        raise SageError(f"{qa_path}: no questions to train on")
    return out


PAIR_FIELDS = hf.PAIR_FIELDS


def _pairs(pairs_path: Path, root, shots: int):
    """(record, test, reference) of a pairs file or dataset, each record checked (hf.checked_pair)."""
    if hf.is_dataset(pairs_path):
        for where, row in _rows(pairs_path, "pairs"):
            rec = {**row, "question": hf.turn_text(row["prompt"], where, "prompt"),
                   "chosen": hf.turn_text(row["chosen"], where, "chosen"),
                   "rejected": hf.turn_text(row["rejected"], where, "rejected")}
            rec.setdefault("test_image", "(embedded)")
            yield hf.checked_pair(rec, where), *_dataset_images(row, where, shots)
        return
    if not pairs_path.is_file():
        raise SageError(f"{pairs_path}: preference-pair file not found")
    base = Path(root) if root else manifest_root(pairs_path.parent) or pairs_path.parent
    for n, rec in jsonl.read(pairs_path):
        where = f"{pairs_path}:{n}"
        if rec is None:
            raise SageError(f"{where}: not a JSON object")
        hf.checked_pair(rec, where)
        ref = _image(base, rec.get("reference_image"), where) if shots == 1 else None
        yield rec, _image(base, rec["test_image"], where), ref


def pair_examples(pairs_path: str | Path, root: str | Path | None, facts: FactsIndex, shots: int,
                  which: str = "both") -> list[PairExample]:
    """The preference pairs of `sage score mle` (pairs.jsonl, or its export); `which` keeps both kinds, or
    min / max only."""
    pairs_path = Path(pairs_path)
    out = []
    for rec, test, ref in _pairs(pairs_path, root, shots):
        if which != "both" and rec["kind"] != which:
            continue
        out.append(PairExample(f"{rec['group_id']}:{rec['q']}:{rec['kind']}", test, ref,
                               rec["question"], rec["chosen"], rec["rejected"], float(rec["delta_h"]), rec["kind"],
                               facts(test)))
    if not out:
        raise SageError(f"{pairs_path}: no preference pairs to train on")
    return out


# ---- shared prefixes ----------------------------------------------------------------------------------


def prefix_key(example) -> str:
    """What decides an example's prompt before its question: the test image, the reference, the facts.
    Examples with the same key share those tokens exactly (the encoder's features are a function of the
    image file, the fused fact tokens of the features and the sentences)."""
    ref = str(example.reference) if example.reference is not None else None
    return hashlib.sha256(json.dumps([str(example.test), ref, list(example.facts)]).encode()).hexdigest()[:16]


def share_prefixes(examples: list) -> list:
    """The examples with their `prefix` keys set, reordered so that examples sharing a prefix are
    consecutive, and within them those sharing a question (E-DPO's ΔH_min and ΔH_max pairs).

    The order is otherwise kept (a stable sort on first appearance): a training order that cuts the list
    into consecutive blocks (setup.epoch_batches) then puts a group's questions, or a question's pairs,
    into one micro-batch, where the objective runs their prefix once.
    """
    first: dict = {}
    for e in examples:
        e.prefix = prefix_key(e)
        first.setdefault(e.prefix, len(first))
        first.setdefault((e.prefix, e.question), len(first))
    return sorted(examples, key=lambda e: (first[e.prefix], first[(e.prefix, e.question)]))


def run_alone(examples: list) -> None:
    """Clear the examples' prefix keys in place: the objectives then run each sequence on its own, in the
    order the keys gave (the baseline that shared-prefix training is compared with, same batches)."""
    for e in examples:
        e.prefix = None
