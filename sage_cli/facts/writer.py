"""Facts written by the local backbone: each prompt asked about the image, the replies split into sentences."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")
_LONGEST_WORD = 30  # longer "words" are a model stuck repeating a syllable, not a fact


def split_sentences(text: str, min_words: int = 3, drop: tuple[str, ...] = ()) -> list[str]:
    """Reply text -> fact sentences: split at sentence ends and list items; drop fragments, sentences in
    `drop` (an echoed prompt) and degenerate ones (a small model looping inside a word)."""
    out = []
    for line in text.splitlines():
        line = _LIST_MARK.sub("", line).strip()
        for s in _SENTENCE_END.split(line):
            s = s.strip()
            words = s.split()
            if len(words) < min_words or max(len(w) for w in words) > _LONGEST_WORD:
                continue
            s = s if s[-1] in ".!?" else s + "."
            if s not in drop:
                out.append(s)
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
