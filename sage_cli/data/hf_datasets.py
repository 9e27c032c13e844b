"""sage's JSON Lines files as Hugging Face datasets (`sage data export`), and reading such a dataset back.

Two layouts, each self-contained (the photos are embedded as `datasets.Image()` bytes):

* pairs (from sage-pairs/1): one row per preference pair in TRL's vision preference columns —
  ``images`` [test, reference?], ``prompt`` (a user turn: one ``{"type": "image"}`` per image, then the
  question), ``chosen`` / ``rejected`` (an assistant turn each) — plus sage's fields of the record
  (``group_id``, ``q``, ``kind``, ``delta_h``, the ranks and MLE scores, ``category``, ``level``, ``answer``,
  ``judge``, and the image paths it was made from).
* qa (from sage-qa/1): one row per QA group with its fields (``questions`` a list of structs, ``defect`` a
  struct or null) plus ``images`` [test, reference?].

`datasets` and PIL are imported inside the functions: `train/examples.py` imports this module for the
pair checks, and nothing that only reads JSON Lines should pay for them.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path

from sage_cli import jsonl
from sage_cli.data.paths import inside
from sage_cli.errors import SageError

FORMATS = ("hf", "parquet")
KIND_OF_FORMAT = {"sage-qa/": "qa", "sage-pairs/": "pairs"}
PAIR_FIELDS = ("group_id", "q", "test_image", "question", "chosen", "rejected", "delta_h", "kind")
PAIR_COLUMNS = ("images", "prompt", "chosen", "rejected")  # TRL's; a dataset with them is read as pairs
QA_COLUMNS = ("images", "questions")


# ---- the fields of one preference pair (JSON Lines record or dataset row) ------------------------------


def checked_pair(rec: dict, where: str) -> dict:
    """`rec` if it is a usable sage-pairs record, else one-line SageError at `where` (file:line)."""
    missing = [k for k in PAIR_FIELDS if k not in rec]
    if missing:
        raise SageError(f"{where}: missing field {missing[0]!r} (is this a pairs.jsonl from `sage score mle`?)")
    for k in ("question", "chosen", "rejected", "test_image"):
        if not isinstance(rec[k], str):
            raise SageError(f"{where}: {k} must be a string, got {rec[k]!r}")
    ref = rec.get("reference_image")
    if ref is not None and not isinstance(ref, str):
        raise SageError(f"{where}: reference_image must be a string or null, got {ref!r}")
    dh = rec["delta_h"]
    if isinstance(dh, bool) or not isinstance(dh, (int, float)) or not math.isfinite(dh):
        raise SageError(f"{where}: delta_h must be a finite number, got {dh!r}")
    if rec["kind"] not in ("min", "max"):
        raise SageError(f"{where}: kind must be min or max, got {rec['kind']!r}")
    if isinstance(rec["q"], bool) or not isinstance(rec["q"], int):
        raise SageError(f"{where}: q must be an integer (the question's index), got {rec['q']!r}")
    if not isinstance(rec["group_id"], (str, int)) or isinstance(rec["group_id"], bool):
        raise SageError(f"{where}: group_id must be a string, got {rec['group_id']!r}")
    return rec


# ---- export --------------------------------------------------------------------------------------------


def file_kind(path: Path) -> str | None:
    """"qa" or "pairs" by the first record's ``format``; None for anything else (or an empty file)."""
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    for _, rec in jsonl.read(path):
        fmt = str((rec or {}).get("format", ""))
        return next((k for prefix, k in KIND_OF_FORMAT.items() if fmt.startswith(prefix)), None)
    return None


def _sources(src: Path) -> tuple[str, dict[str, Path]]:
    """(kind, {split: file}): one file is one split named by its stem; a folder gives one split per file."""
    if not src.exists():
        raise SageError(f"{src}: not found")
    files = [src] if src.is_file() else sorted(src.glob("*.jsonl"))
    kinds = {p: file_kind(p) for p in files}
    found = {p: k for p, k in kinds.items() if k}
    if not found:
        what = "is not" if src.is_file() else "holds no"
        raise SageError(f"{src}: {what} a sage-qa/1 or sage-pairs/1 JSON Lines file (`sage prefs build`, `sage score mle`)")
    if len(set(found.values())) > 1:
        raise SageError(f"{src}: holds both QA groups and preference pairs; export one file at a time")
    return next(iter(found.values())), {p.stem: p for p in found}


def _cell(root: Path, rel: str | None, where: str) -> dict | None:
    """An image as `datasets.Image` storage: its bytes (the export is self-contained) and its relative path."""
    if rel is None:
        return None
    try:
        path = inside(root, rel)
        return {"bytes": path.read_bytes(), "path": rel}
    except SageError as e:
        raise SageError(f"{where}: {e}") from None
    except OSError:
        raise SageError(f"{where}: image {rel} not found under {root}") from None


def _turn(role: str, text: str, images: int = 0) -> list[dict]:
    return [{"role": role, "content": [{"type": "image", "text": None}] * images + [{"type": "text", "text": text}]}]


def _pair_rows(path: Path, root: Path | None) -> list[dict]:
    from sage_cli.data.qa_jsonl import manifest_root

    base = Path(root) if root else manifest_root(path.parent) or path.parent
    rows = []
    for n, rec in jsonl.read(path):
        where = f"{path}:{n}"
        if rec is None:
            raise SageError(f"{where}: not a JSON object")
        checked_pair(rec, where)
        images = [c for c in (_cell(base, rec["test_image"], where), _cell(base, rec.get("reference_image"), where)) if c]
        extra = {k: v for k, v in rec.items() if k not in ("format", "question", "chosen", "rejected")}
        rows.append({"images": images, "prompt": _turn("user", rec["question"], len(images)),
                     "chosen": _turn("assistant", rec["chosen"]), "rejected": _turn("assistant", rec["rejected"]),
                     **extra, "group_id": str(rec["group_id"]), "delta_h": float(rec["delta_h"])})
    return rows


def _qa_rows(path: Path, root: Path | None) -> list[dict]:
    from sage_cli.data.problems import Problems
    from sage_cli.data.qa_jsonl import read_qa_jsonl

    rows = []
    for g in read_qa_jsonl(path, Problems(strict=True), root=root):
        where = f"{path}: group {g.id}"
        images = [c for c in (_cell(g.root, g.test_image, where), _cell(g.root, g.reference_image, where)) if c]
        rows.append({**g.to_json(), "images": images})
    for r in rows:
        r.pop("format")
    return rows


def _dataset(rows: list[dict]):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    features = ds.features.copy()
    features["images"] = datasets.List(datasets.Image())
    return ds.cast(features)


def export(src: str | Path, out: str | Path, fmt: str, root: str | Path | None = None,
           overwrite: bool = False) -> dict:
    """Write the QA groups or pairs of `src` (a file, or a folder with one file per split) to `out` as a
    `save_to_disk` folder (fmt "hf": a Dataset, or a DatasetDict for several splits) or one parquet file
    per split (fmt "parquet"), atomically; returns what was written."""
    import datasets

    src, out = Path(src), Path(out)
    if fmt not in FORMATS:
        raise SageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if out.exists() and not overwrite:
        raise SageError(f"{out}: already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise SageError(f"{out}: is a file; --out names a folder")
    kind, files = _sources(src)
    read = _pair_rows if kind == "pairs" else _qa_rows
    splits = {name: rows for name, p in files.items() if (rows := read(p, Path(root) if root else None))}
    if not splits:
        raise SageError(f"{src}: no records to export")
    datasets.disable_progress_bars()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        built = {name: _dataset(rows) for name, rows in splits.items()}
        if fmt == "parquet":
            for name, ds in built.items():
                ds.to_parquet(str(tmp / f"{name}.parquet"))
        elif len(built) == 1:  # a single split stays a plain Dataset: `--train OUT` reads it as it is
            next(iter(built.values())).save_to_disk(str(tmp))
        else:
            datasets.DatasetDict(built).save_to_disk(str(tmp))
        os.chmod(tmp, 0o777 & ~_umask())
        from sage_cli.atomic import swap_in_dir

        swap_in_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"kind": kind, "format": fmt, "out": str(out), "splits": {k: len(v) for k, v in splits.items()}}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- reading a dataset back ----------------------------------------------------------------------------


def is_dataset(path: Path) -> bool:
    """A `save_to_disk` folder, a parquet file, or a folder holding parquet files (not JSON Lines)."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".parquet"
    if not path.is_dir():
        return False
    return any((path / n).is_file() for n in ("state.json", "dataset_dict.json")) or any(path.glob("*.parquet"))


def load(path: str | Path):
    """(kind "qa" | "pairs", Dataset) of a dataset path, images left as {bytes, path} (not decoded)."""
    import datasets

    path = Path(path)
    datasets.disable_progress_bars()
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
        raise SageError(f"{path}: holds the splits {', '.join(splits)}; name one, e.g. {path / splits[0]}")
    if path.is_dir() and not (path / "state.json").is_file():
        parquets = sorted(path.glob("*.parquet"))
        if len(parquets) != 1:
            raise SageError(f"{path}: holds {len(parquets)} parquet files; name one of them")
        path = parquets[0]
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq
            from datasets.table import InMemoryTable

            # not Dataset.from_parquet: that builds a copy under the Hugging Face cache
            ds = datasets.Dataset(InMemoryTable(pq.read_table(str(path))))
        else:
            ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as e:
        raise SageError(f"{path}: cannot read as a dataset ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    cols = set(ds.column_names)
    kind = "pairs" if cols >= set(PAIR_COLUMNS) else "qa" if cols >= set(QA_COLUMNS) else None
    if kind is None:
        raise SageError(f"{path}: neither the pairs layout ({', '.join(PAIR_COLUMNS)}) nor the QA layout "
                        f"({', '.join(QA_COLUMNS)}) of `sage data export`")
    return kind, ds.cast_column("images", datasets.List(datasets.Image(decode=False)))


def turn_text(turn, where: str, column: str) -> str:
    """The text of a chat turn (the last text part of its last message), or the value if it is a string."""
    if isinstance(turn, str):
        return turn
    try:
        parts = [c for c in turn[-1]["content"] if c.get("type") == "text"]
        text = parts[-1]["text"]
    except (TypeError, KeyError, IndexError, AttributeError):
        text = None
    if not isinstance(text, str):
        raise SageError(f"{where}: {column} is neither a string nor a chat turn with a text part")
    return text
