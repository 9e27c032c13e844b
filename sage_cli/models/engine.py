"""Answering questions with a SageModel: one image encoding and one prefill per image pair, reused.

`Engine.encode` runs the vision encoder, adapter and fusion once. The first `Engine.answer` prefills
the prompt up to the question (system, images, fact tokens) together with its question, in one forward
as plain generate would, then cuts the KV cache back to that prefix; later questions copy the prefix
cache, feed only their own tokens and decode greedily (or sampled), streaming text to a callback.
`Engine.answer_group` decodes several questions over the prefix as one batch. The first
answer token's distribution gives P(yes) = p(yes tokens) / (p(yes tokens) + p(no tokens)).

Used by `sage infer`, `sage serve` and `sage bench`; not thread-safe (callers serialise).
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sage_cli.errors import SageError
from sage_cli.models.comparison import anomaly_map, least_similar
from sage_cli.models.sage import Encoding, SageModel

YES_WORDS = ("Yes", "yes", "YES", "True", "true")
NO_WORDS = ("No", "no", "NO", "False", "false")


@dataclass
class Prefix:
    """An image pair after encoding: the fused features and the LLM's cache of the shared prompt."""

    encoding: Encoding
    pieces: list[torch.Tensor]  # the prompt after the question: [T_j, C] pieces with the question at `at`
    at: int
    cache: object  # the LLM's KV cache of the prefix; None until the first question prefills it
    prefix_tokens: int
    encode_s: float
    prefill_s: float  # prefix-only prefill (0 when it was prefilled with the first question)

    @property
    def has_reference(self) -> bool:
        return self.encoding.v_r is not None


@dataclass
class Answer:
    question: str
    text: str
    p_yes: float | None  # None when the tokenizer has no yes/no tokens
    new_tokens: int
    prompt_tokens: int
    ttft_s: float  # prefill (with the prefix for a first question, else the question alone) + first token
    decode_s: float  # after the first token
    timings: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else 0.0


class Engine:
    def __init__(self, model: SageModel, backbone_name: str, checkpoint: str | None = None,
                 repetition_penalty: float = 1.0):
        from sage_cli.models.checkpoint import default_facts

        self.model = model.eval()
        self.backbone_name, self.checkpoint = backbone_name, checkpoint
        # used by `encode` when a pair comes without facts (checkpoint.default_facts says why)
        self.default_facts = default_facts(checkpoint) if checkpoint and model.facts_mode != "none" else []
        # > 1 discourages tokens already generated (small models loop under greedy decoding); 1 = off
        self.repetition_penalty = repetition_penalty
        tok = model.backbone.tokenizer
        yes, no = _first_ids(tok, YES_WORDS), _first_ids(tok, NO_WORDS)
        # a token that starts both (a bare space, a single letter "N") says nothing either way
        self.yes_ids, self.no_ids = sorted(yes - no), sorted(no - yes)
        self.stop_ids = _stop_ids(model.backbone)
        params = inspect.signature(model.backbone.language_model.forward).parameters
        # transformers renamed past_key_values to cache; only the last position's logits are needed
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def _lm_rows(self, cache, **inputs) -> torch.Tensor:
        """One LLM step that extends `cache` in place; the last position's logits of every row [n, V], float32."""
        out = self.model.backbone.language_model(**inputs, use_cache=True, **{self._cache_kw: cache}, **self._last_only)
        return out.logits[:, -1].float()

    def _lm(self, cache, **inputs) -> torch.Tensor:
        """`_lm_rows` for a batch of one: logits [V]."""
        return self._lm_rows(cache, **inputs)[0]

    @classmethod
    def load(cls, backbone: str | None = None, checkpoint: str | None = None, dtype: str = "auto",
             device: str = "auto", seed: int = 0, repetition_penalty: float = 1.0, **sage_kwargs) -> "Engine":
        """A backbone by name/path, wrapped in SageModel, with a checkpoint's trained weights if given.

        Without a checkpoint the adapter, fusion and projection are untrained (seeded, so repeatable).
        """
        from sage_cli.models import checkpoint as ckpt
        from sage_cli.models.registry import SAGE_SMOL, load_backbone

        config = ckpt.read_config(checkpoint) if checkpoint else {}
        if checkpoint and backbone and backbone != config["backbone"]:
            raise SageError(f"{checkpoint}: checkpoint is for backbone {config['backbone']!r}, not {backbone!r}")
        name = config.get("backbone") or backbone or SAGE_SMOL
        settings = {**config.get("sage", {}), **{k: v for k, v in sage_kwargs.items() if v is not None}}
        dev = resolve_device(device)
        torch.manual_seed(seed)
        bb = load_backbone(name, dtype=resolve_dtype(dtype, dev), image_size=config.get("image_size"))
        model = SageModel(bb, **settings).to(dev, resolve_dtype(dtype, dev))
        if checkpoint:
            ckpt.load_into(model, checkpoint, name)
        return cls(model, name, checkpoint, repetition_penalty)

    # ---- images ----------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, test, reference=None, facts: list[str] | None = None) -> Prefix:
        """PIL test (+ reference) image and fact sentences -> a Prefix every question can reuse.

        No facts = the checkpoint's default facts, if it has any (`self.default_facts`).
        """
        t0 = time.perf_counter()
        facts = list(facts or []) or self.default_facts
        bb = self.model.backbone
        test_px = bb.preprocess([test])  # [1, 3, H, W]
        ref_px = bb.preprocess([reference]) if reference is not None else None
        enc = self.model.encode(test_px, ref_px, [facts])
        pieces, at = self.model.prompt_pieces(enc, 0, "")
        n = sum(p.shape[0] for p in pieces[:at])
        # No prefill yet: the first question is prefilled together with the prefix (one forward, as plain
        # generate does), and the cache is then cut back to the prefix for the questions after it.
        return Prefix(enc, pieces, at, None, n, encode_s=time.perf_counter() - t0, prefill_s=0.0)

    def _prefill(self, prefix: Prefix) -> None:
        """Give `prefix` its cache by itself (answer_group needs it before any question)."""
        if prefix.cache is None:
            t0 = time.perf_counter()
            prefix.cache = _new_cache(self.model.backbone.language_model)
            self._lm(prefix.cache, inputs_embeds=torch.cat(prefix.pieces[: prefix.at])[None])
            prefix.prefill_s += time.perf_counter() - t0

    def anomaly(self, prefix: Prefix) -> dict | None:
        """The Eq. 1 anomaly map (1 - s over the patch grid) and the K patches the fusion reads."""
        s = prefix.encoding.comparison.s
        if s is None:
            return None
        grid = self.model.backbone.patch_grid
        amap = anomaly_map(s.float(), grid)[0]  # [h, w]
        idx = prefix.encoding.comparison.idx
        top = (idx[0] if idx is not None else least_similar(s, self.model.fusion.k_patches)[0]).tolist()
        flat = amap.flatten()
        peak = int(flat.argmax())
        return {"map": amap.cpu(), "grid": list(grid), "selected": [int(i) for i in top],
                "max": float(flat.max()), "mean": float(flat.mean()), "peak": [peak // grid[1], peak % grid[1]]}

    # ---- questions ---------------------------------------------------------------------------

    @torch.no_grad()
    def answer(self, prefix: Prefix, question: str, max_new_tokens: int = 128, on_text=None,
               temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None) -> Answer:
        """Answer one question on an encoded pair; `on_text(str)` receives the text as it is decoded."""
        if not question.strip():
            raise SageError("the question is empty")
        rest = self._question_rest(prefix, question)[None]  # [1, T_rest, C]
        if prefix.cache is None:  # first question: prefix + question in one forward
            cache = _new_cache(self.model.backbone.language_model)
            out = self._decode(torch.cat([torch.cat(prefix.pieces[: prefix.at])[None], rest], dim=1), cache, max_new_tokens,
                               on_text, temperature, top_p, generator)
            cache.crop(-(cache.get_seq_length() - prefix.prefix_tokens))  # keep the prefix for the next questions
            prefix.cache = cache
        else:
            cache = copy.deepcopy(prefix.cache)  # the prefix stays untouched for the next question
            out = self._decode(rest, cache, max_new_tokens, on_text, temperature, top_p, generator)
        return Answer(question, out["text"], out["p_yes"], out["new_tokens"], prefix.prefix_tokens + rest.shape[1],
                      out["ttft_s"], out["decode_s"])

    def _question_rest(self, prefix: Prefix, question: str) -> torch.Tensor:
        """The tokens after the prefix for one question (question + assistant header) [T_rest, C]."""
        pieces = list(prefix.pieces)
        pieces[prefix.at] = self.model.question_piece(prefix.encoding, 0, question).to(pieces[0].dtype)
        return torch.cat(pieces[prefix.at:])

    @torch.no_grad()
    def p_yes(self, prefix: Prefix, question: str) -> float | None:
        """P(yes) of the first answer token to `question`, without decoding: one forward after the prefix."""
        self._prefill(prefix)
        cache = copy.deepcopy(prefix.cache)  # the prefix stays untouched for the next question
        return self._p_yes(self._lm(cache, inputs_embeds=self._question_rest(prefix, question)[None]))

    @torch.no_grad()
    def answer_group(self, prefix: Prefix, questions: list[str], max_new_tokens: int = 128) -> list[Answer]:
        """Greedy answers to several questions on one encoded pair, decoded together as one batch.

        Row i is [prefix | padding | question i + assistant header]: the prefix cache is repeated per
        row, each row's question is right-aligned so all rows end together, and explicit position ids
        keep every row's positions contiguous across the padding (which the attention mask hides).
        Gives the same text as `answer` for each question (up to float rounding in batched matmuls).
        """
        if any(not q.strip() for q in questions):
            raise SageError("a question is empty")
        self._prefill(prefix)
        n, dtype, dev = len(questions), prefix.pieces[0].dtype, self.model.device
        rests = [self._question_rest(prefix, q) for q in questions]  # [T_i, C] each
        width = max(r.shape[0] for r in rests)
        c = rests[0].shape[1]
        embeds = torch.zeros(n, width, c, dtype=dtype, device=dev)  # [n, W, C]
        mask = torch.zeros(n, prefix.prefix_tokens + width, dtype=torch.long, device=dev)  # [n, P + W]
        mask[:, : prefix.prefix_tokens] = 1
        pos = torch.zeros(n, width, dtype=torch.long, device=dev)
        for i, r in enumerate(rests):
            t = r.shape[0]
            embeds[i, width - t:] = r
            mask[i, prefix.prefix_tokens + width - t:] = 1
            pos[i, width - t:] = torch.arange(prefix.prefix_tokens, prefix.prefix_tokens + t, device=dev)
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(n)
        t0 = time.perf_counter()
        logits = self._lm_rows(cache, inputs_embeds=embeds, attention_mask=mask, position_ids=pos)  # [n, V]
        p_yes = [self._p_yes(row) for row in logits]
        t_first = time.perf_counter()
        ids: list[list[int]] = [[] for _ in range(n)]
        done = [False] * n
        last = pos[:, -1]  # [n] position of each row's last token
        for _ in range(max_new_tokens):
            nxt = torch.stack([_penalise(logits[i], ids[i], self.repetition_penalty) for i in range(n)]).argmax(-1)
            for i in range(n):
                if not done[i]:
                    tok_i = int(nxt[i])
                    if tok_i in self.stop_ids:
                        done[i] = True
                    else:
                        ids[i].append(tok_i)
                        done[i] = len(ids[i]) >= max_new_tokens
            if all(done):
                break
            last = last + 1
            mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype, device=dev)], dim=1)
            logits = self._lm_rows(cache, input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None])
        t_end = time.perf_counter()
        tok = self.model.backbone.tokenizer
        prompt = [prefix.prefix_tokens + r.shape[0] for r in rests]
        return [Answer(q, tok.decode(ids[i], skip_special_tokens=True).strip(), p_yes[i], len(ids[i]), prompt[i],
                       t_first - t0, t_end - t_first) for i, q in enumerate(questions)]

    @torch.no_grad()
    def chat(self, messages: list[dict], max_new_tokens: int = 128, on_text=None, temperature: float = 0.0,
             top_p: float = 1.0, generator: torch.Generator | None = None) -> Answer:
        """Plain text chat with the backbone's LLM (no images): for judges and fact writers."""
        tok = self.model.backbone.tokenizer
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        embeds = self.model.embed_text(text)[None]  # [1, T, C]
        cache = _new_cache(self.model.backbone.language_model)
        out = self._decode(embeds, cache, max_new_tokens, on_text, temperature, top_p, generator)
        return Answer(messages[-1].get("content", "") if messages else "", out["text"], out["p_yes"],
                      out["new_tokens"], embeds.shape[1], out["ttft_s"], out["decode_s"])

    def _decode(self, embeds, cache, max_new_tokens, on_text, temperature, top_p, generator) -> dict:
        """Feed `embeds` [1, T, C] after `cache`, then decode token by token until a stop token."""
        tok = self.model.backbone.tokenizer
        t0 = time.perf_counter()
        logits = self._lm(cache, inputs_embeds=embeds)  # [V]
        p_yes = self._p_yes(logits)
        ids: list[int] = []
        shown = ""
        t_first = None
        for _ in range(max_new_tokens):
            nxt = _pick(_penalise(logits, ids, self.repetition_penalty), temperature, top_p, generator)
            if t_first is None:
                t_first = time.perf_counter()
            if nxt in self.stop_ids:
                break
            ids.append(nxt)
            if on_text is not None:
                text = tok.decode(ids, skip_special_tokens=True)
                if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                    on_text(text[len(shown):])
                    shown = text
            if len(ids) == max_new_tokens:
                break
            step = torch.tensor([[nxt]], device=embeds.device)
            logits = self._lm(cache, input_ids=step)
        t_end = time.perf_counter()
        text = tok.decode(ids, skip_special_tokens=True)
        if on_text is not None and len(text) > len(shown):
            on_text(text[len(shown):])
        t_first = t_first or t_end
        return {"text": text.strip(), "p_yes": p_yes, "new_tokens": len(ids), "ttft_s": t_first - t0,
                "decode_s": t_end - t_first}

    def _p_yes(self, logits: torch.Tensor) -> float | None:
        if not self.yes_ids or not self.no_ids:
            return None
        p = torch.softmax(logits, dim=-1)
        yes, no = float(p[self.yes_ids].sum()), float(p[self.no_ids].sum())
        return yes / (yes + no) if yes + no > 0 else 0.5


def _penalise(logits: torch.Tensor, seen: list[int], penalty: float) -> torch.Tensor:
    """The usual repetition penalty on the tokens generated so far: positive logits divided, negative ones
    multiplied by `penalty`. logits [V]."""
    if penalty == 1.0 or not seen:
        return logits
    idx = torch.tensor(sorted(set(seen)), device=logits.device)
    picked = logits[idx]
    out = logits.clone()
    out[idx] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return out


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    """Greedy at temperature 0; otherwise nucleus sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


def _first_ids(tok, words) -> set[int]:
    """The first token of each word, bare and after a space (how an answer may start)."""
    ids = set()
    for w in words:
        for form in (w, " " + w):
            enc = tok(form, add_special_tokens=False)["input_ids"]
            if enc:
                ids.add(enc[0])
    return ids


def _stop_ids(backbone) -> set[int]:
    tok, lm = backbone.tokenizer, backbone.language_model
    stops = set()
    for v in (tok.eos_token_id, getattr(getattr(lm, "generation_config", None), "eos_token_id", None)):
        stops.update(v if isinstance(v, (list, tuple)) else [v] if v is not None else [])
    for t in ("<|im_end|>", "<|eot_id|>", "<|end|>"):  # chat turn ends of common templates
        i = tok.convert_tokens_to_ids(t)
        if isinstance(i, int) and i != tok.unk_token_id and i >= 0:
            stops.add(i)
    return stops


def _new_cache(lm):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=lm.config)
    except TypeError:  # older transformers
        return DynamicCache()


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SageError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SageError(f"device {device!r} asked for, but torch sees no CUDA device")
    return dev


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto = bf16 on a GPU that supports it, float32 otherwise (CPU bf16 matmuls are slow)."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise SageError(f"unknown dtype {dtype!r} (use auto, float32, bfloat16 or float16)")
    return DTYPES[dtype]


def read_questions(path: str | Path) -> list[str]:
    """A questions file: one question per line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SageError(f"{path}: cannot read the questions file ({e.__class__.__name__})") from None
    qs = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not qs:
        raise SageError(f"{path}: no questions in the file")
    return qs
