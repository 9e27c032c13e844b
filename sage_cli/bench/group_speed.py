"""Speed of answering a question group the way `sage bench` does against answering each question from scratch.

Grouped: one image encoding + prefill of the shared prompt, then every question decoded together
(`Engine.answer_group`). From scratch: for each question its own encoding, prefill and decoding
(`Engine.encode` + `Engine.answer`), as a client asking one question per request would. Same engine,
images, facts and token limit in one run; each side warmed up once, then timed `repeats` times
(medians). Target: scratch / grouped >= 2. Greedy decoding, so both sides should give the same texts;
the report says whether they do (batched matmuls can round differently in rare cases).
"""

from __future__ import annotations

import statistics
import time

DEFAULT_QUESTIONS = (
    "Is there any defect on the test object compared with the reference?",
    "Is the test object free of scratches?",
    "Is the defect located in the upper left of the image?",
    "Should the test object be rejected?",
    "Does the flaw affect how the object works, beyond its appearance?",
)


def _sync(engine) -> None:
    import torch

    if engine.model.device.type == "cuda":
        torch.cuda.synchronize(engine.model.device)


def _grouped(engine, test, ref, facts, questions, new_tokens):
    t0 = time.perf_counter()
    prefix = engine.encode(test, ref, facts)
    answers = engine.answer_group(prefix, list(questions), max_new_tokens=new_tokens)
    _sync(engine)
    return time.perf_counter() - t0, answers


def _scratch(engine, test, ref, facts, questions, new_tokens):
    t0 = time.perf_counter()
    answers = []
    for q in questions:
        prefix = engine.encode(test, ref, facts)
        answers.append(engine.answer(prefix, q, max_new_tokens=new_tokens))
    _sync(engine)
    return time.perf_counter() - t0, answers


def group_speed(engine, test, ref, facts: list[str], questions=DEFAULT_QUESTIONS, new_tokens: int = 32,
                repeats: int = 3, progress=None) -> dict:
    """Medians of both sides, their ratio, per-question latency and whether the answers agree."""
    questions = list(questions)
    times = {"grouped": [], "scratch": []}
    answers = {}
    for side, fn in (("grouped", _grouped), ("scratch", _scratch)):
        fn(engine, test, ref, facts, questions, new_tokens)  # warm-up: first-call allocations, lazy inits
        for _ in range(repeats):
            dt, answers[side] = fn(engine, test, ref, facts, questions, new_tokens)
            times[side].append(dt)
            if progress:
                progress()
    g, s = statistics.median(times["grouped"]), statistics.median(times["scratch"])
    n = len(questions)
    same = [a.text == b.text for a, b in zip(answers["grouped"], answers["scratch"])]
    return {
        "backbone": engine.backbone_name,
        "device": str(engine.model.device),
        "dtype": str(next(engine.model.parameters()).dtype).replace("torch.", ""),
        "questions": n,
        "new_tokens_max": new_tokens,
        "facts": len(facts),
        "one_shot": ref is not None,
        "repeats": repeats,
        "grouped": {"total_s": g, "per_question_s": g / n, "times_s": times["grouped"],
                    "new_tokens": sum(a.new_tokens for a in answers["grouped"])},
        "scratch": {"total_s": s, "per_question_s": s / n, "times_s": times["scratch"],
                    "new_tokens": sum(a.new_tokens for a in answers["scratch"])},
        "ratio": s / g if g > 0 else None,
        "target": 2.0,
        "same_answers": sum(same),
        "answers": [{"question": q, "grouped": a.text, "scratch": b.text}
                    for q, a, b in zip(questions, answers["grouped"], answers["scratch"])],
    }
