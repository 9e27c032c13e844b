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

FACTS_FORMAT = "sage-facts/1"


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prompt_set_id(prompts: list[str]) -> str:
    """A short stable id of an ordered prompt list."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode("utf-8")).hexdigest()[:12]


def key(rec: dict) -> tuple[str, str, str]:
    return rec["image_sha256"], rec["model"], rec["prompt_id"]


def read_facts(path: Path | str) -> dict[tuple[str, str, str], dict]:
    """Every readable record, the last one winning for a key (torn or foreign lines are skipped)."""
    path = Path(path)
    out: dict[tuple[str, str, str], dict] = {}
    if not path.exists():
        return out
    for _, rec in jsonl.read(path):
        if rec is None or rec.get("format") != FACTS_FORMAT:
            continue
        try:
            out[key(rec)] = rec
        except KeyError:
            continue
    return out


def facts_for_image(path: Path | str, image: Path | str) -> list[str]:
    """Facts for one image from a facts JSON Lines file (matched by content hash) or a plain text file
    with one fact per line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SageError(f"{path}: cannot read the facts file ({e.__class__.__name__})") from None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if not first.lstrip().startswith("{"):
        facts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not facts:
            raise SageError(f"{path}: no facts in the file")
        return facts
    sha = sha256_file(image)
    found = [rec for k, rec in read_facts(path).items() if k[0] == sha]
    if not found:
        raise SageError(f"{path}: no facts for {image} (run `sage facts extract` on it, or use --facts auto)")
    return [f for rec in found for f in rec.get("facts", [])]
