"""Facts written by the local backbone: each prompt asked about the image, the replies split into sentences."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


def split_sentences(text: str, min_words: int = 3) -> list[str]:
    """Reply text -> fact sentences: split at sentence ends and list items, drop fragments."""
    out = []
    for line in text.splitlines():
        line = _LIST_MARK.sub("", line).strip()
        for s in _SENTENCE_END.split(line):
            s = s.strip()
            if len(s.split()) >= min_words:
                out.append(s if s[-1] in ".!?" else s + ".")
    return out


def local_facts(engine, image, prompts: list[str], max_new_tokens: int = 64, limit: int | None = None) -> list[str]:
    """Ask each prompt about `image` (zero-shot, no facts) with the engine's backbone; unique sentences in order."""
    prefix = engine.encode(image, None, [])
    facts: list[str] = []
    for p in prompts:
        for s in split_sentences(engine.answer(prefix, p, max_new_tokens=max_new_tokens).text):
            if s not in facts:
                facts.append(s)
    return facts[:limit] if limit else facts
