"""Speed of `sage infer` against plain `generate` of the same LLM, measured in one run.

Both sides produce the same number of new tokens (stop tokens are ignored while timing) from a prompt
of the same length: SAGE's prompt (system, image patches, fact tokens, question) against the same
number of ordinary text tokens. Each side is warmed up once, then timed `repeats` times; medians are
reported, and the ratios sage / plain are what the targets are stated in.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

import torch


class _FirstToken:
    """A transformers streamer that notes when generate emits its first new token."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2 and self.first is None:  # call 1 is the prompt itself
            self.first = time.perf_counter()

    def end(self):
        pass


def _peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _cuda_peak_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _cuda_peak_mb(device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def _sage_once(engine, test, ref, facts, question, new_tokens) -> dict:
    t0 = time.perf_counter()
    prefix = engine.encode(test, ref, facts)
    a = engine.answer(prefix, question, max_new_tokens=new_tokens)
    # TTFT of the LLM: the prompt's prefill (prefix and question in one forward) + the first token, as plain
    # generate does; prefill_s is 0 here and only counts when a prefix is prefilled on its own
    return {"ttft_s": prefix.prefill_s + a.ttft_s, "ttft_with_images_s": prefix.encode_s + prefix.prefill_s + a.ttft_s,
            "tokens_per_s": a.tokens_per_s, "new_tokens": a.new_tokens, "prompt_tokens": a.prompt_tokens,
            "total_s": time.perf_counter() - t0, "prefill_s": prefix.prefill_s, "encode_s": prefix.encode_s}


@torch.no_grad()
def _plain_once(lm, input_ids, new_tokens) -> dict:
    streamer = _FirstToken()
    t0 = time.perf_counter()
    out = lm.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                      min_new_tokens=new_tokens, do_sample=False, streamer=streamer, pad_token_id=0)
    t_end = time.perf_counter()
    n = out.shape[1] - input_ids.shape[1]
    first = streamer.first or t_end
    return {"ttft_s": first - t0, "tokens_per_s": (n - 1) / (t_end - first) if n > 1 else 0.0, "new_tokens": n,
            "prompt_tokens": int(input_ids.shape[1]), "total_s": t_end - t0}


def infer_speed(engine, test, ref, facts: list[str], question: str, new_tokens: int = 64, repeats: int = 5,
                progress=None) -> dict:
    """Time SAGE (prefix reuse off: a fresh encoding each time, as `sage infer` on one question) and plain
    generate on a prompt of the same length; returns medians, ratios and peak memory."""
    lm, tok = engine.model.backbone.language_model, engine.model.backbone.tokenizer
    device = engine.model.device
    stops, engine.stop_ids = engine.stop_ids, set()  # both sides decode exactly new_tokens
    try:
        probe = _sage_once(engine, test, ref, facts, question, new_tokens)
        # Ordinary text of exactly the SAGE prompt's length (a repeated sentence, cut to size).
        filler = tok(" The hazelnut shell is smooth and brown." * 200, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([filler[: probe["prompt_tokens"]]], device=device)
        _plain_once(lm, ids, new_tokens)  # warm-up

        runs: dict[str, list[dict]] = {"plain": [], "sage": []}
        peaks: dict[str, float | None] = {}
        for side in ("plain", "sage"):  # plain first, so the RSS peak after it is the LLM's alone
            _cuda_peak_reset(device)
            for _ in range(repeats):
                r = _plain_once(lm, ids, new_tokens) if side == "plain" else _sage_once(
                    engine, test, ref, facts, question, new_tokens)
                runs[side].append(r)
                if progress:
                    progress()
            peaks[side] = _cuda_peak_mb(device)
            peaks[side + "_rss"] = _peak_rss_mb()
    finally:
        engine.stop_ids = stops

    def med(side, key):
        return statistics.median(r[key] for r in runs[side])

    plain = {k: med("plain", k) for k in ("ttft_s", "tokens_per_s", "total_s")}
    sage = {k: med("sage", k) for k in ("ttft_s", "ttft_with_images_s", "tokens_per_s", "total_s", "encode_s",
                                        "prefill_s")}
    return {
        "backbone": engine.backbone_name,
        "device": str(device),
        "dtype": str(next(lm.parameters()).dtype).replace("torch.", ""),
        "prompt_tokens": probe["prompt_tokens"],
        "new_tokens": new_tokens,
        "repeats": repeats,
        "plain": plain,
        "sage": sage,
        "ratios": {
            # time to first token of the LLM on a prompt of the same length
            "ttft": sage["ttft_s"] / plain["ttft_s"],
            # including SAGE's own work before the LLM: image encoding, fusion, prefix prefill
            "ttft_with_images": sage["ttft_with_images_s"] / plain["ttft_s"],
            # time per new token (inverse tokens/s): > 1 means slower decoding
            "per_token": plain["tokens_per_s"] / sage["tokens_per_s"] if sage["tokens_per_s"] else float("inf"),
        },
        "peak_memory_mb": {"plain_cuda": peaks["plain"], "sage_cuda": peaks["sage"],
                           "rss_after_plain": peaks["plain_rss"], "rss_after_sage": peaks["sage_rss"]},
    }
