"""The facts file: JSON Lines `{format, image, image_sha256, model, prompt_id, prompts, facts[]}`.

A record is keyed by (image sha256, model, prompt_id): the same photo under another name is not
asked again, and changing the model or the prompts makes new records instead of mixing old ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sage_cli import jsonl
from sage_cli.errors import SageError
from sage_cli.models.cache import sha256_file  # noqa: F401  (re-exported: facts are keyed by it)

FACTS_FORMAT = "sage-facts/1"


def prompt_set_id(prompts: list[str]) -> str:
    """A short stable id of an ordered prompt list."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode("utf-8")).hexdigest()[:12]


def key(rec: dict) -> tuple[str, str, str]:
    return rec["image_sha256"], rec["model"], rec["prompt_id"]


REQUIRED_TEXT = ("image_sha256", "model", "prompt_id")  # the key
OPTIONAL_TEXT = ("image", "category", "shared_from")
OPTIONAL_LISTS = ("prompts", "replies")  # lists of strings, like the required `facts`


def check_record(rec: dict) -> str | None:
    """What is wrong with a sage-facts record (None when nothing): the fields readers use, with their types."""
    for name in REQUIRED_TEXT:
        if name not in rec:
            return f"missing field {name!r}"
    if "facts" not in rec:
        return "missing field 'facts'"
    for name in REQUIRED_TEXT + OPTIONAL_TEXT:
        if name in rec and not isinstance(rec[name], str):
            return f"{name!r} must be a string, got {_kind(rec[name])}"
    for name in ("facts",) + OPTIONAL_LISTS:
        value = rec.get(name, [])
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            return f"{name!r} must be a list of strings, got {_kind(value)}"
    return None


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        bad = next((x for x in value if not isinstance(x, str)), None)
        return f"a list holding {type(bad).__name__} {_short(bad)}" if bad is not None else "a list"
    return f"{type(value).__name__} {_short(value)}"


def _short(value, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_facts(path: Path | str) -> dict[tuple[str, str, str], dict]:
    """Every record, the last one winning for a key. Torn or foreign lines (not JSON, or another format)
    are skipped; a sage-facts record with missing or mistyped fields is an error naming its line."""
    path = Path(path)
    out: dict[tuple[str, str, str], dict] = {}
    if not path.exists():
        return out
    try:
        for n, rec in jsonl.read(path):
            if rec is None or rec.get("format") != FACTS_FORMAT:
                continue
            problem = check_record(rec)
            if problem:
                raise SageError(f"{path} line {n}: not a valid {FACTS_FORMAT} record ({problem})")
            out[key(rec)] = rec
    except OSError as e:
        raise SageError(f"{path}: facts file cannot be read ({e.strerror or e.__class__.__name__})") from None
    return out


class FactsFile:
    """Facts per image from one file: a facts JSON Lines file (matched by image content; the facts of every
    record of an image, in file order) or a text file with one fact per line, used for every image."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            what = "not found" if isinstance(e, FileNotFoundError) else f"cannot be read ({e.__class__.__name__})"
            raise SageError(f"{path}: facts file {what}") from None
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        self.same: list[str] | None = None  # the plain-text list
        self.by_sha: dict[str, list[str]] = {}
        self._sha: dict[Path, str] = {}
        if not first.lstrip().startswith("{"):
            self.same = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            if not self.same:
                raise SageError(f"{path}: no facts in the file")
            return
        for (sha, _, _), rec in read_facts(self.path).items():
            self.by_sha.setdefault(sha, []).extend(rec.get("facts", []))
        if not self.by_sha:
            raise SageError(f"{path}: no sage-facts records in this file")

    def lookup(self, image: Path | str) -> list[str] | None:
        """The image's facts; None when a facts JSON Lines file has no record of it."""
        if self.same is not None:
            return self.same
        image = Path(image)
        if image not in self._sha:
            self._sha[image] = sha256_file(image)
        return self.by_sha.get(self._sha[image])


def facts_for_image(path: Path | str, image: Path | str) -> list[str]:
    """Facts for one image (`sage infer --facts FILE`); an image without a record is an error."""
    found = FactsFile(path).lookup(image)
    if found is None:
        raise SageError(f"{path}: no facts for {image} (run `sage facts extract` on it, or use --facts auto)")
    return found
