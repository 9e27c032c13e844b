"""QA groups as JSON Lines (``format: sage-qa/1``): the file that passes between ``sage`` commands.

One QAGroup per line (records.QAGroup.to_json / from_json; fields in SPEC.md), UTF-8. Image paths are
relative to a dataset root: by default the folder holding the file. Files are written atomically
(temporary file in the same folder, then ``os.replace``), or appended to, one complete line per
record, so an interrupted run can resume by skipping ``existing_ids``.

Every group read gets ``anomalous`` / ``label_source`` (records.py): as stored when the file has them;
otherwise (files written before those fields, or ``anomalous: null``) from the data. A group that
`sage prefs build` made from images (its folder's ``prefs.json`` names an image format in
``source_format``: BUILT_FROM) is normal exactly when ``defect`` is null, as the builder wrote it;
any other group is labelled by `labels.anomaly_label` (conclusion, questions), which never makes
``defect: null`` mean normal by itself.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from sage_cli import jsonl
from sage_cli.atomic import replacing
from sage_cli.data.reader import Reader
from sage_cli.data._common import checked_rel, verify_image
from sage_cli.data.labels import anomaly_label
from sage_cli.data.problems import Problems
from sage_cli.data.records import LABEL_ANNOTATION, QA_FORMAT, QAGroup
from sage_cli.errors import SageError

SUFFIX = ".jsonl"
# `sage prefs build` source formats whose groups the builder wrote from annotated images: defect null = normal.
BUILT_FROM = ("mvtec", "visa", "mmad")


def _line(group: QAGroup | dict) -> str:
    d = group.to_json() if isinstance(group, QAGroup) else {"format": QA_FORMAT, **group}
    return json.dumps(d, ensure_ascii=False) + "\n"


def _first_record(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    d = json.loads(line)
                    return d if isinstance(d, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None


def is_qa_file(path: Path) -> bool:
    """A ``.jsonl`` file whose first record says ``format: sage-qa/...``."""
    path = Path(path)
    if path.suffix != SUFFIX or not path.is_file():
        return False
    d = _first_record(path)
    return d is not None and str(d.get("format", "")).startswith("sage-qa/")


def qa_files(root: Path) -> list[Path]:
    """The QA-group files directly in ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [p for p in sorted(root.glob(f"*{SUFFIX}")) if is_qa_file(p)]


def read_qa_jsonl(
    path: Path | str,
    problems: Problems | None = None,
    *,
    root: Path | str | None = None,
    check_images: bool = False,
) -> Iterator[QAGroup]:
    """The QA groups of one file, ``root`` set (default: the root its folder's manifest names, else the folder).

    A line that is not JSON (e.g. torn by an interrupted write), has another format, misses a field,
    or has an image path that escapes the root or names no file is reported to ``problems``
    (None = strict) and skipped.
    """
    path = Path(path)
    root = Path(root) if root is not None else manifest_root(path.parent) or path.parent
    built = manifest_source(path.parent) in BUILT_FROM
    problems = problems if problems is not None else Problems(strict=True)
    try:
        name = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        name = str(path)
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise SageError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        n = 0
        while True:
            n += 1
            try:
                line = f.readline()
            except UnicodeDecodeError:
                problems.report(name, f"line {n} and after: not UTF-8 text")
                return
            if not line:
                return
            if not line.strip():
                continue
            group = _parse(line, root, problems, f"{name} line {n}", check_images)
            if group is not None:
                if group.anomalous is None:
                    group.anomalous, group.label_source = (
                        (group.defect is not None, LABEL_ANNOTATION) if built else anomaly_label(group))
                yield group


def _parse(line: str, root: Path, problems: Problems, where: str, check: bool) -> QAGroup | None:
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        problems.report(where, f"not valid JSON ({e.msg}, column {e.colno})")
        return None
    if not isinstance(d, dict):
        problems.report(where, f"record is not a JSON object ({type(d).__name__})")
        return None
    if d.get("id") is not None:
        where = f"{where} (id {str(d['id'])!r})"
    fmt = d.get("format")
    if fmt is not None and fmt != QA_FORMAT:
        problems.report(where, f"format {fmt!r} is not {QA_FORMAT}; this sage reads {QA_FORMAT} only")
        return None
    try:
        group = QAGroup.from_json(d, root=root)
    except KeyError as e:
        problems.report(where, f"missing field {e.args[0]!r}")
        return None
    except (TypeError, ValueError, AttributeError) as e:
        problems.report(where, f"malformed record ({e})")
        return None
    test = checked_rel(root, group.test_image, problems, where, "test image")
    if test is None:
        return None
    group.test_image = test
    if group.reference_image is not None:
        ref = checked_rel(root, group.reference_image, problems, where, "reference image")
        if ref is None:
            return None
        group.reference_image = ref
    if group.defect is not None and group.defect.mask:
        if checked_rel(root, group.defect.mask, problems, where, "mask") is None:
            return None
    if check:
        for rel in (group.test_image, group.reference_image):
            if rel is not None and verify_image(root, rel, problems) is None:
                return None
    return group


def read_qa_dir(root: Path | str, problems: Problems | None = None, *, check_images: bool = False) -> Iterator[QAGroup]:
    """The QA groups of every sage-qa ``.jsonl`` file directly in ``root`` (paths relative to root, or to
    the data set root its manifest names)."""
    root = Path(root)
    base = manifest_root(root) or root
    for p in qa_files(root):
        yield from read_qa_jsonl(p, problems, root=base, check_images=check_images)


MANIFESTS = ("prefs.json", "score.json")  # written beside QA / pair files by `sage prefs build` / `sage score mle`


def _manifest_field(folder: Path | str, key: str, names=MANIFESTS):
    for name in names:
        try:
            value = json.loads((Path(folder) / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            return value
    return None


def manifest_root(folder: Path | str) -> Path | None:
    """The data set root a manifest in `folder` records (QA files keep image paths relative to it)."""
    root = _manifest_field(folder, "root")
    return Path(root) if root else None


def manifest_source(folder: Path | str) -> str | None:
    """The ``source_format`` of the `sage prefs build` manifest in `folder` (None without one)."""
    v = _manifest_field(folder, "source_format", ("prefs.json",))
    return v if isinstance(v, str) else None


def write_qa_jsonl(path: Path | str, groups: Iterable[QAGroup | dict]) -> int:
    """Write ``groups`` to ``path`` atomically (all or nothing); returns how many were written."""
    n = 0
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for g in groups:
            f.write(_line(g))
            n += 1
        f.flush()
        os.fsync(f.fileno())
    return n


def append_qa_jsonl(path: Path | str, groups: Iterable[QAGroup | dict]) -> int:
    """Append ``groups`` to ``path`` (created if missing), one flushed line each; returns the count."""
    return jsonl.append(path, (_line(g) for g in groups))


def existing_ids(path: Path | str) -> set[str]:
    """Ids of the readable records already in ``path`` (empty if it does not exist): what to skip on resume."""
    path = Path(path)
    ids: set[str] = set()
    if not path.exists():
        return ids
    for _, d in jsonl.read(path):
        if d is not None and d.get("id") is not None:
            ids.add(str(d["id"]))
    return ids


def looks_like_qa(root: Path) -> bool:
    """A sage-qa file, or a folder that holds one."""
    return is_qa_file(root) if Path(root).is_file() else bool(qa_files(root))


def read_qa(root: Path | str, problems: Problems | None = None, *, check_images: bool = False) -> Iterator[QAGroup]:
    """One sage-qa file, or every one in a folder; SageError for a folder that holds none."""
    root = Path(root)
    if root.is_file():
        return read_qa_jsonl(root, problems, check_images=check_images)
    if not qa_files(root):
        raise SageError(f"{root}: no sage-qa .jsonl file here")
    return read_qa_dir(root, problems, check_images=check_images)


READER = Reader("qa", "qa", "sage-qa/1 .jsonl files (or ROOT is one)", looks_like_qa, read_qa, file_ok=True)
