"""Output folders guarded by a manifest: may this run write here, and what must it clear first?

Every command that fills an output folder (``data synth``, ``data normals``, ``prefs build``,
``score mle``, ``bench``, ``train``) follows the same rules, decided by :func:`check` before any work:

* a missing or empty folder is new (dot-files, such as a killed write's temporaries, do not count);
* ``overwrite`` lets the run replace what is there: the caller clears its own files
  (:func:`clear`, :func:`remove_files`), never anyone else's;
* otherwise the folder is resumed, but only when the settings recorded in its manifest (a JSON file
  written by an earlier run) equal the new ones; a difference is refused with one line naming each
  setting as ``name old -> new``. Commands that resume only on request (``resume=False`` until
  ``--resume`` is given) refuse any non-empty folder first;
* a non-empty folder without the manifest is someone else's and is refused, unless it holds only
  files this command writes (``ours``: a run killed before its manifest was written).

``check`` has no side effects (it reads, never writes), so a command can call it while validating
its options and act on the returned :class:`Decision` later. Manifests are written atomically
(:func:`write_manifest`), so a present manifest is always whole.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sage_cli.atomic import write_text
from sage_cli.errors import SageError

NEW, RESUME, OVERWRITE = "new", "resume", "overwrite"
_SHOW = 3  # foreign entries named in a refusal
_VALUE_CHARS = 60  # a setting's value is shortened to this in a refusal (paths, lists)


@dataclass(frozen=True)
class Decision:
    """What :func:`check` found: how the folder may be used and what the earlier run recorded."""

    mode: str  # NEW (missing or empty), RESUME (same settings, or no settings to compare) or OVERWRITE
    manifest: dict | None = None  # the earlier manifest as read; None when there was none (or it was not read)
    changed: bool = False  # OVERWRITE only: the earlier settings differ (or were unreadable): clear its files


def entries(folder: Path) -> list[str]:
    """Names in `folder` that count as content (dot-files do not); [] when it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def refuse_file(folder: Path, flag: str = "--out") -> None:
    """A one-line refusal when `folder` exists as something other than a folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SageError(f"{folder}: is a file; {flag} takes a folder")


def read_manifest(path: Path, lenient: bool = False, hint: str = "") -> dict | None:
    """The JSON object in `path`; None when there is no such file.

    An unreadable file (or one that is not a JSON object) is a one-line SageError naming it, followed
    by `hint`; with `lenient` it reads as {} instead (for callers that only need what they can get).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        why = None if isinstance(data, dict) else f"a JSON {type(data).__name__}, not an object"
    except OSError as e:
        why = e.strerror or str(e)
    except UnicodeDecodeError:
        why = "not UTF-8 text"
    except json.JSONDecodeError as e:
        why = f"not valid JSON: line {e.lineno}, column {e.colno}"
    if why is None:
        return data
    if lenient:
        return {}
    raise SageError(f"{path}: unreadable manifest ({why}){hint}")


def write_manifest(path: Path, data: dict, indent: int = 2, sort_keys: bool = False) -> None:
    """Write `data` as JSON (UTF-8, a final newline) atomically: a reader sees the old file or the new one."""
    write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 3] + "..."


def differences(was: dict, now: dict, keys: Sequence[str] | None = None) -> list[str]:
    """``name old -> new`` for every setting that differs: `keys` in their order, or else the new
    settings' keys in theirs and then those only the old ones have (a missing key reads as None)."""
    if keys is None:
        keys = [*now, *sorted(k for k in was if k not in now)]
    return [f"{k} {_show(was.get(k))} -> {_show(now.get(k))}" for k in keys if was.get(k) != now.get(k)]


def check(
    folder: Path,
    manifest: str,
    settings: dict | None,
    *,
    resume: bool | None = None,
    overwrite: bool = False,
    recorded: Callable[[dict], dict] | None = None,
    keys: Sequence[str] | None = None,
    ours: Iterable[str] = (),
    what: str = "run",
    flag: str = "--out",
    resume_flag: str = "--resume",
) -> Decision:
    """Decide whether `folder` may be used for a run with `settings`; a one-line SageError when not.

    manifest: the file name (in `folder`) in which a run records its settings.
    settings: what must match to resume, as the manifest would hold them; None compares nothing (any
        earlier run may be resumed; the manifest is not read, so it need not be JSON).
    resume: None resumes a folder with the same settings without being asked; True/False is the
        state of a ``--resume`` option the command requires for any non-empty folder.
    recorded: the settings inside an earlier manifest (default: the manifest itself). It may raise
        SageError for a manifest that belongs to some other tool.
    keys: compare only these settings (default: all of them).
    ours: names this command writes into the folder; a folder holding nothing else is accepted
        without a manifest (an unfinished run).
    what, flag, resume_flag: words for the messages ("synth output", "--out", "--resume").
    """
    folder = Path(folder)
    if resume and overwrite:
        raise SageError(f"{resume_flag} and --overwrite contradict each other; give one")
    refuse_file(folder, flag)
    found = entries(folder)
    if not found:
        return Decision(NEW)
    path = folder / manifest
    if overwrite:
        old = read_manifest(path, lenient=True) if settings is not None else None
        return Decision(OVERWRITE, old, old is not None and _differ(old, settings, recorded, keys))
    if resume is False:
        raise SageError(f"{folder} is not empty; pass {resume_flag} to continue that {what} or --overwrite to "
                        f"replace it (or choose another {flag})")
    if settings is None:
        return Decision(RESUME)
    old = read_manifest(path, hint=f"; pass --overwrite to start over or choose another {flag}")
    if old is None:
        mine = set(ours)
        others = [n for n in found if n not in mine]
        if others:
            shown = ", ".join(others[:_SHOW]) + (", ..." if len(others) > _SHOW else "")
            raise SageError(f"{folder} is not empty and holds no {manifest}, so it is not a {what} ({shown}); "
                            f"choose another {flag} or pass --overwrite")
        return Decision(RESUME)
    diff = differences(recorded(old) if recorded else old, settings, keys)
    if diff:
        raise SageError(f"{folder} holds a {what} with other settings ({', '.join(diff)}); "
                        f"pass --overwrite to replace it or choose another {flag}")
    return Decision(RESUME, old)


def _differ(old: dict, settings: dict, recorded, keys) -> bool:
    try:
        return bool(differences(recorded(old) if recorded else old, settings, keys))
    except SageError:  # not even our manifest: replaced all the same
        return True


def clear(folder: Path, names: Iterable[str] | None = None) -> None:
    """Remove `names` (files or folders) from `folder`; with no names, the whole folder.

    The whole folder is first renamed aside, so a reader never sees it half deleted.
    """
    folder = Path(folder)
    if names is not None:
        for name in names:
            p = folder / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        return
    if folder.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        folder.rename(aside / folder.name)
        shutil.rmtree(aside, ignore_errors=True)


def remove_files(folder: Path, rels: Iterable[str]) -> None:
    """Delete the files at these paths relative to `folder` (as an earlier run listed them); a path
    that leads outside `folder` is left alone."""
    root = Path(folder).resolve()
    for rel in rels:
        if not isinstance(rel, str):
            continue
        p = (root / rel).resolve()
        if root in p.parents and p.is_file():
            p.unlink()


def sweep_temporaries(folder: Path) -> None:
    """Delete the ``.NAME.XXXX.tmp`` files that an atomic write killed midway leaves behind."""
    for stale in Path(folder).rglob(".*.tmp"):
        if stale.is_file():
            stale.unlink()
