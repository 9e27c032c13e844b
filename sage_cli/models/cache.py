"""The local model cache: <root>/models/<name>/ folders built atomically and checked against a MANIFEST.json.

Root: $SAGE_CACHE, else ~/.cache/sage. An entry is built in a temporary folder next to it and moved
into place with os.replace, so a reader never sees a half-written entry. MANIFEST.json (written last)
records the size and sha256 of every file, the source file it was converted from (path, size, mtime,
sha256) and the converter version. A check compares sizes always and sha256s on request (verify=True);
the source is re-hashed only when its size or mtime changed, so a valid entry costs a few stat calls.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from sage_cli.atomic import swap_in_dir
from sage_cli.errors import SageError

MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 1
log = logging.getLogger(__name__)


class CacheError(SageError):
    """A cache entry that is missing, corrupted, stale, or cannot be written."""


def cache_root(root: str | Path | None = None) -> Path:
    """The cache root: `root` if given, else $SAGE_CACHE, else ~/.cache/sage."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("SAGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sage"


def entry_dir(name: str, root: str | Path | None = None) -> Path:
    """<root>/models/<name>/ (whether or not it exists)."""
    return cache_root(root) / "models" / name


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_record(path: str | Path, **extra) -> dict:
    """What a manifest keeps about the file an entry was converted from."""
    path = Path(path)
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": sha256_file(path), **extra}


def read_manifest(entry: str | Path) -> dict:
    """The parsed MANIFEST.json of an entry; CacheError if absent or unreadable."""
    p = Path(entry) / MANIFEST
    try:
        m = json.loads(p.read_text())
    except FileNotFoundError:
        raise CacheError(f"{entry} has no {MANIFEST}") from None
    except (OSError, ValueError) as e:
        raise CacheError(f"{p} is unreadable: {e}") from None
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict):
        raise CacheError(f"{p} is not a sage cache manifest")
    return m


def check_entry(entry: str | Path, *, verify: bool = False, source: str | Path | None = None,
                converter_version: int | str | None = None) -> str | None:
    """Why the entry is not usable, or None when it is.

    Sizes of all files are always compared; with verify=True their sha256 too. Given `source`, the
    entry must come from a file with the same content; given `converter_version`, from that converter.
    """
    entry = Path(entry)
    if not entry.is_dir():
        return f"{entry} does not exist"
    try:
        m = read_manifest(entry)
    except CacheError as e:
        return str(e)
    if converter_version is not None and m.get("converter_version") != converter_version:
        return f"{entry} was built by converter version {m.get('converter_version')}, this is {converter_version}"
    for rel, rec in m["files"].items():
        p = entry / rel
        try:
            size = p.stat().st_size
        except OSError:
            return f"{p} is missing"
        if size != rec.get("size"):
            return f"{p} has {size} bytes, the manifest says {rec.get('size')}"
        if verify and sha256_file(p) != rec.get("sha256"):
            return f"{p} does not match its sha256 in the manifest"
    if source is not None:
        src, rec = Path(source), m.get("source") or {}
        try:
            st = src.stat()
        except OSError:
            return None  # the source is gone (package removed): the entry itself is still fine
        same_stat = st.st_size == rec.get("size") and st.st_mtime_ns == rec.get("mtime_ns")
        # An unchanged size+mtime is trusted unless verify asks for the hash; a reinstall that only
        # touched the mtime costs one hash and no rebuild.
        if (verify or not same_stat) and sha256_file(src) != rec.get("sha256"):
            return f"{entry} was built from another {src.name} (its sha256 differs)"
    return None


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive advisory lock (POSIX), so that two processes do not build the same entry at once."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; os.replace still keeps each entry whole
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _hash_tree(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(d.rglob("*")) if p.is_file() and p.name != MANIFEST}


def build_entry(name: str, build: Callable[[Path], dict | None], *, source: str | Path,
                converter_version: int | str, root: str | Path | None = None, force: bool = False,
                verify: bool = False, source_info: dict | None = None) -> Path:
    """Make <root>/models/<name>/ from `source` unless a valid entry is there; returns its path.

    `build(tmp_dir)` writes the files into an empty folder and may return a dict kept in the
    manifest under "info". The result is moved into place atomically; the old entry, if any, is
    removed afterwards. With force=True the entry is rebuilt even when valid.
    """
    entry = entry_dir(name, root)
    why = "forced" if force else check_entry(entry, verify=verify, source=source, converter_version=converter_version)
    if why is None:
        return entry
    with _lock(entry.parent / f".{name}.lock"):
        # Another process may have finished the same build while we waited for the lock.
        if not force and check_entry(entry, verify=verify, source=source,
                                     converter_version=converter_version) is None:
            return entry
        log.info("building cache entry %s (%s)", name, why)
        t0 = time.perf_counter()
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=entry.parent))
        except OSError as e:
            raise CacheError(f"cannot write the model cache under {entry.parent}: {e} (set SAGE_CACHE to a "
                             f"writable folder)") from None
        try:
            info = build(tmp)
            manifest = {
                "format": MANIFEST_FORMAT,
                "name": name,
                "converter_version": converter_version,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_seconds": None,
                "source": source_record(source, **(source_info or {})),
                "files": _hash_tree(tmp),
                "info": info or {},
            }
            manifest["build_seconds"] = round(time.perf_counter() - t0, 2)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n")
            swap_in_dir(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry


def remove_entry(name: str, root: str | Path | None = None) -> bool:
    """Delete an entry; True if there was one."""
    entry = entry_dir(name, root)
    if not entry.exists():
        return False
    shutil.rmtree(entry)
    return True
