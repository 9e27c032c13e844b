"""Facts written by the local backbone: each prompt asked about the image, the replies split into sentences.

`sage facts extract` (local) and `sage infer --facts auto` both ask through `ask`: the Engine's
decoder, zero-shot, without facts, greedy unless the recipe samples, and without a repetition penalty
(FACTS_PENALTY), however the engine answers other questions.

What an endpoint sends back is written through `redact`: a server that echoes the API key (in a reply,
a model name, an error) does not get it into a facts file or a log.
"""

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


FACTS_PENALTY = 1.0  # the facts checkpoints were trained on were written without one


def ask(engine, images: list, prompts: list[list[str]], max_new_tokens: int = 64, temperature: float = 0.0,
        seed: int = 0) -> list[list[str]]:
    """prompts[i] about PIL images[i], zero-shot and without facts, all decoded as one batch: the replies.

    Sampling (temperature > 0) draws from a generator seeded with `seed`, not the process's random state.
    """
    import torch

    prefixes = [engine.encode(img, None, [], default_facts=False) for img in images]
    gen = torch.Generator().manual_seed(seed) if temperature > 0 else None
    groups = engine.answer_groups(prefixes, prompts, max_new_tokens, temperature=temperature, generator=gen,
                                  repetition_penalty=FACTS_PENALTY)
    return [[a.text for a in g] for g in groups]


def sentences(replies: list[str], drop: tuple[str, ...] = (), limit: int | None = None) -> list[str]:
    """The unique fact sentences of some replies, in order (at most `limit`)."""
    facts: list[str] = []
    for reply in replies:
        for s in split_sentences(reply, drop=drop):
            if s not in facts:
                facts.append(s)
    return facts[:limit] if limit else facts


def local_facts(engine, image, prompts: list[str], max_new_tokens: int = 64, limit: int | None = None,
                temperature: float = 0.0) -> list[str]:
    """Ask each prompt about `image` with the engine's backbone; unique sentences in order."""
    return sentences(ask(engine, [image], [prompts], max_new_tokens, temperature)[0], limit=limit)
