"""The one token loop every answer goes through: n rows at once, greedy or sampled, repetition penalty.

`Engine` drives it for a single streamed answer, for a group of questions over a shared prefix and
for plain chat; `SageModel.generate` for an already built, left-padded batch. The caller owns the LLM
call (`step`), so the loop knows nothing of caches, masks or positions; the `LanguageModel` wrapper
hides how transformers names the cache argument.
"""

from __future__ import annotations

import inspect
import time

import torch


class LanguageModel:
    """The backbone's LLM, one forward at a time on a KV cache it extends in place."""

    def __init__(self, lm):
        self.lm = lm
        params = inspect.signature(lm.forward).parameters
        # transformers renamed past_key_values to cache; only the last position's logits are needed
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def new_cache(self):
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.lm.config)
        except TypeError:  # older transformers
            return DynamicCache()

    def __call__(self, cache, **inputs) -> torch.Tensor:
        """The last position's logits of every row [n, V], float32."""
        out = self.lm(**inputs, use_cache=True, **{self._cache_kw: cache}, **self._last_only)
        return out.logits[:, -1].float()


class PaddedRows:
    """`step` for rows of different lengths padded on the left of their own part: each step appends one
    token per row, extends the attention mask [n, L] and continues each row's positions [n]."""

    def __init__(self, lm: LanguageModel, cache, mask: torch.Tensor, last: torch.Tensor):
        self.lm, self.cache, self.mask, self.last = lm, cache, mask, last

    def __call__(self, nxt: torch.Tensor) -> torch.Tensor:  # [n] -> logits [n, V]
        self.last = self.last + 1
        one = torch.ones(self.mask.shape[0], 1, dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, one], dim=1)
        return self.lm(self.cache, input_ids=nxt[:, None], attention_mask=self.mask, position_ids=self.last[:, None])


def decode(step, logits: torch.Tensor, max_new_tokens: int | list[int], stop_ids: set[int], *,
           penalty: float = 1.0, temperature: float = 0.0, top_p: float = 1.0,
           generator: torch.Generator | None = None, on_token=None,
           per_row: list[dict] | None = None) -> tuple[list[list[int]], float]:
    """Decode every row from its first-token `logits` [n, V] until a stop token or its budget.

    `step(tokens [n]) -> logits [n, V]` feeds one token per row (rows already finished get a stop token,
    which nobody reads). `max_new_tokens` is one budget or one per row; `per_row` gives each row its own
    sampling (penalty, temperature, top_p, generator; requests batched together differ). `on_token(row,
    ids)` sees each row's ids after every new token; returning False ends that row (its client left).
    Returns the new ids per row (stop token excluded) and the time the first token was picked.
    """
    n = logits.shape[0]
    budget = list(max_new_tokens) if isinstance(max_new_tokens, (list, tuple)) else [max_new_tokens] * n
    same = {"penalty": penalty, "temperature": temperature, "top_p": top_p, "generator": generator}
    rows = [{**same, **r} for r in per_row] if per_row is not None else [same] * n
    ids: list[list[int]] = [[] for _ in range(n)]
    done = [b < 1 for b in budget]
    filler = min(stop_ids) if stop_ids else 0
    t_first = None
    for _ in range(max(budget, default=0)):
        if all(done):
            break
        # finished rows draw nothing, so a sampled row gets the same draws alone or in a batch
        nxt = [filler if done[i] else _pick_row(logits[i], ids[i], **rows[i]) for i in range(n)]
        t_first = t_first or time.perf_counter()
        for i, tok in enumerate(nxt):
            if done[i]:
                continue
            if tok in stop_ids:
                done[i] = True
                continue
            ids[i].append(tok)
            done[i] = len(ids[i]) >= budget[i]
            if on_token is not None and on_token(i, ids[i]) is False:
                done[i] = True
        if all(done):
            break
        logits = step(torch.tensor(nxt, device=logits.device))
    return ids, t_first or time.perf_counter()


def _pick_row(logits: torch.Tensor, seen: list[int], penalty: float, temperature: float, top_p: float,
              generator) -> int:
    return pick(penalise(logits, seen, penalty), temperature, top_p, generator)


class TextStream:
    """`on_token` for one row that hands `on_text` the new text as it is decoded (whole characters only)."""

    def __init__(self, tokenizer, on_text):
        self.tok, self.on_text, self.shown = tokenizer, on_text, ""

    def __call__(self, row: int, ids: list[int]) -> None:
        text = self.tok.decode(ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            new, self.shown = text[len(self.shown):], text
            return self.on_text(new)  # False: the row ends (decode's on_token)

    def close(self, ids: list[int]) -> None:
        text = self.tok.decode(ids, skip_special_tokens=True)
        if len(text) > len(self.shown):
            self.on_text(text[len(self.shown):])


def penalise(logits: torch.Tensor, seen: list[int], penalty: float) -> torch.Tensor:
    """The usual repetition penalty on the tokens generated so far: positive logits divided, negative ones
    multiplied by `penalty`. logits [V]."""
    if penalty == 1.0 or not seen:
        return logits
    idx = torch.tensor(sorted(set(seen)), device=logits.device)
    picked = logits[idx]
    out = logits.clone()
    out[idx] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return out


def pick(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    """Greedy at temperature 0; otherwise nucleus sampling. logits [V]."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def first_ids(tok, words) -> set[int]:
    """The first token of each word, bare and after a space (how an answer may start)."""
    ids = set()
    for w in words:
        for form in (w, " " + w):
            enc = tok(form, add_special_tokens=False)["input_ids"]
            if enc:
                ids.add(enc[0])
    return ids


def stop_ids(backbone) -> set[int]:
    """End of sequence and the chat turn ends of common templates."""
    tok, lm = backbone.tokenizer, backbone.language_model
    stops = set()
    for v in (tok.eos_token_id, getattr(getattr(lm, "generation_config", None), "eos_token_id", None)):
        stops.update(v if isinstance(v, (list, tuple)) else [v] if v is not None else [])
    for t in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id and i >= 0:
            stops.add(i)
    return stops


@torch.no_grad()
def generate_padded(backbone, embeds: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, **sampling) -> list[str]:
    """Answers to a left-padded batch of whole prompts, embeds [n, T, C] with mask [n, T]: positions
    count real tokens only (as transformers' generate does), padding is masked out."""
    lm = LanguageModel(backbone.language_model)
    cache = lm.new_cache()
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [n, T]
    logits = lm(cache, inputs_embeds=embeds, attention_mask=mask, position_ids=pos)  # [n, V]
    rows = PaddedRows(lm, cache, mask, pos[:, -1])
    ids, _ = decode(rows, logits, max_new_tokens, stop_ids(backbone), **sampling)
    return [backbone.tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
