"""Answering questions with a SageModel: one image encoding and one prefill per image pair, reused.

`Engine.encode` runs the vision encoder, adapter and fusion once. The first `Engine.answer` prefills
the prompt up to the question (system, images, fact tokens) together with its question, in one forward
as plain generate would, then cuts the KV cache back to that prefix; later questions copy the prefix
cache and feed only their own tokens. `Engine.answer_group` decodes several questions over the prefix
as one batch (`answer_groups`: over several prefixes of the same length). Every answer goes through
the same token loop (decoding.py: greedy or sampled, repetition penalty, stop tokens). The first
answer token's distribution gives P(yes) = p(yes tokens) / (p(yes tokens) + p(no tokens)).

Used by `sage infer`, `sage serve`, `sage bench` and `sage facts extract`; not thread-safe (callers
serialise).
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sage_cli.errors import SageError
from sage_cli.seeding import seeded
from sage_cli.models import decoding
from sage_cli.models.comparison import anomaly_map, least_similar
from sage_cli.models.sage import Encoding, SageModel, with_positions

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
    positions: torch.Tensor | None = None  # [3, P] M-RoPE positions of the prefix; None: they count tokens
    start_tokens: int = 0  # the tokens before the test image (system text, reference image); 0 zero-shot

    @property
    def has_reference(self) -> bool:
        return self.encoding.v_r is not None

    def embeds(self) -> torch.Tensor:
        """The prompt before the question [P, C]."""
        return torch.cat(self.pieces[: self.at])

    def rope(self, extra: int = 0) -> torch.Tensor | None:
        """M-RoPE positions [3, 1, P + extra] of the prefix and `extra` text tokens after it; None unless M-RoPE."""
        if self.positions is None:
            return None
        nxt = int(self.positions.max()) + 1 if self.positions.numel() else 0
        rest = (torch.arange(extra, device=self.positions.device) + nxt).expand(3, extra)
        return torch.cat([self.positions, rest], dim=1)[:, None]


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
    guided: bool = False  # the first word was set by the caller (models/guide.py), not picked by the model

    @property
    def tokens_per_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else 0.0


@dataclass
class AnomalyMap:
    """The Eq. 1 map of a one-shot pair: 1 - s over the patch grid (higher = more anomalous)."""

    map: torch.Tensor  # [h, w] float32 on the CPU
    grid: tuple[int, int]  # (h, w) patches
    selected: list[int]  # the K patch indices (row-major on the grid) the fusion reads
    max: float
    mean: float
    peak: tuple[int, int]  # (row, col) of the max

    def rounded(self, digits: int = 4) -> list[list[float]]:
        """The map as nested lists [h][w] (JSON, samples.jsonl)."""
        return [[round(float(v), digits) for v in row] for row in self.map.tolist()]

    def summary(self) -> dict:
        """Everything but the map, JSON-ready."""
        return {"peak": list(self.peak), "max": self.max, "mean": self.mean, "grid": list(self.grid),
                "selected": list(self.selected)}


@dataclass
class Prompt:
    """One request's whole prompt for `Engine.answer_batch`: its embeds [T, C], budget and sampling."""

    embeds: torch.Tensor
    question: str
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None
    repetition_penalty: float | None = None
    on_text: object = None  # on_text(str) -> False to stop this row; None: not streamed
    # (key, n): the first n embeds are those of every prompt with this key (`Engine.shared_start`)
    shared: tuple[str, int] | None = None
    verdict: bool | None = None  # the first word: True = yes, False = no (models/guide.py); None: the model's


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
        yes, no = decoding.first_ids(tok, YES_WORDS), decoding.first_ids(tok, NO_WORDS)
        # a token that starts both (a bare space, a single letter "N") says nothing either way
        self.yes_ids, self.no_ids = sorted(yes - no), sorted(no - yes)
        self.stop_ids = decoding.stop_ids(model.backbone)
        self.lm = decoding.LanguageModel(model.backbone.language_model)

    @classmethod
    def load(cls, backbone: str | None = None, checkpoint: str | None = None, dtype: str = "auto",
             device: str = "auto", seed: int = 0, repetition_penalty: float = 1.0, **sage_kwargs) -> Engine:
        """A backbone by name/path, wrapped in SageModel, with a checkpoint's trained weights if given.

        Without a checkpoint the adapter, fusion and projection are untrained, drawn from `seed` (the
        same seed gives the same weights); the process's own random state is left as it was.
        """
        from sage_cli.models import checkpoint as ckpt
        from sage_cli.models.registry import SAGE_SMOL, load_backbone

        config = ckpt.read_config(checkpoint) if checkpoint else {}
        if checkpoint and backbone and backbone != config["backbone"]:
            raise SageError(f"{checkpoint}: checkpoint is for backbone {config['backbone']!r}, not {backbone!r}")
        name = config.get("backbone") or backbone or SAGE_SMOL
        settings = {**config.get("sage", {}), **{k: v for k, v in sage_kwargs.items() if v is not None}}
        dev = resolve_device(device)
        with seeded(seed):
            bb = load_backbone(name, dtype=resolve_dtype(dtype, dev), image_size=config.get("image_size"))
            model = SageModel(bb, **settings).to(dev, resolve_dtype(dtype, dev))
        if checkpoint:
            ckpt.load_into(model, checkpoint, name)
        return cls(model, name, checkpoint, repetition_penalty)

    # ---- images ----------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, test, reference=None, facts: list[str] | None = None, default_facts: bool = True) -> Prefix:
        """PIL test (+ reference) image and fact sentences -> a Prefix every question can reuse.

        `reference`: one PIL image, a list of them (several normal references: Eq. 1 over the union of
        their patches, the prompt showing the first; `SageModel.encode_features`), or None / [] for
        zero-shot. No facts = the checkpoint's default facts, if it has any (`self.default_facts`),
        unless `default_facts` is False (writing facts: the model reads none).
        """
        return self.encode_pixels([self.pixels(test, reference)], [facts], default_facts)[0]

    def pixels(self, test, reference=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """PIL images -> the encoder's input: test [1, 3, H, W] and reference [1, 3, H, W], or several
        references [1, R, 3, H, W], or None (zero-shot). Small: a request's full-size images can go."""
        bb = self.model.backbone
        refs = list(reference) if isinstance(reference, (list, tuple)) else [reference] if reference is not None else []
        test_px = bb.preprocess([test])  # [1, 3, H, W]
        ref_px = bb.preprocess(refs) if refs else None  # [R, 3, H, W]
        if ref_px is not None and len(refs) > 1:
            ref_px = ref_px[None]  # [1, R, 3, H, W]: one sample with R references
        return test_px, ref_px

    @torch.no_grad()
    def encode_pixels(self, pixels: list[tuple[torch.Tensor, torch.Tensor | None]], facts: list[list[str] | None],
                      default_facts: bool = True) -> list[Prefix]:
        """Several pairs (`pixels` of each) and their facts -> one Prefix each, as `encode` gives them.
        Pairs of one shape (as many references, images of one size) go through the vision encoder,
        adapter and fusion as one batch: serving, several requests' images at once."""
        t0 = time.perf_counter()
        facts = [list(f or []) or (self.default_facts if default_facts else []) for f in facts]
        groups: dict[tuple, list[int]] = {}
        for i, (test_px, ref_px) in enumerate(pixels):
            groups.setdefault((tuple(test_px.shape), None if ref_px is None else tuple(ref_px.shape)), []).append(i)
        prefixes: list[Prefix | None] = [None] * len(pixels)
        for idx in groups.values():
            refs = [pixels[i][1] for i in idx]
            enc = self.model.encode(torch.cat([pixels[i][0] for i in idx]),  # [B, 3, H, W]
                                    torch.cat(refs) if refs[0] is not None else None, [facts[i] for i in idx])
            for j, i in enumerate(idx):
                prefixes[i] = self._prefix(enc.sample(j) if len(idx) > 1 else enc)
        for p in prefixes:
            p.encode_s = (time.perf_counter() - t0) / len(pixels)
        return prefixes

    def _prefix(self, enc: Encoding) -> Prefix:
        """One encoded pair (a batch of one) -> its Prefix, not prefilled yet."""
        pieces, at, images = self.model.prompt_layout(enc, 0, "")
        n = sum(p.shape[0] for p in pieces[:at])
        positions = self.model.rope_positions(pieces[:at], images[:at])
        # No prefill yet: the first question is prefilled together with the prefix (one forward, as plain
        # generate does), and the cache is then cut back to the prefix for the questions after it.
        test_at = [i for i, image in enumerate(images) if image][-1]  # the reference comes first, then the test
        start = sum(p.shape[0] for p in pieces[:test_at]) if enc.v_r is not None else 0
        return Prefix(enc, pieces, at, None, n, encode_s=0.0, prefill_s=0.0, positions=positions, start_tokens=start)

    def _prefill(self, prefix: Prefix) -> None:
        """Give `prefix` its cache by itself (a group or a probe needs it before any question)."""
        if prefix.cache is None:
            t0 = time.perf_counter()
            prefix.cache = self.lm.new_cache()
            self.lm(prefix.cache, inputs_embeds=with_positions(prefix.embeds()[None], prefix.rope()))
            prefix.prefill_s += time.perf_counter() - t0

    def anomaly(self, prefix: Prefix) -> AnomalyMap | None:
        """The Eq. 1 anomaly map and the K patches the fusion reads; None zero-shot."""
        s = prefix.encoding.comparison.s  # [1, P]
        if s is None:
            return None
        grid = tuple(self.model.backbone.patch_grid)
        amap = anomaly_map(s.float(), grid)[0].cpu()  # [h, w]
        idx = prefix.encoding.comparison.idx
        top = (idx[0] if idx is not None else least_similar(s, self.model.fusion.k_patches)[0]).tolist()
        flat = amap.flatten()
        peak = int(flat.argmax())
        return AnomalyMap(amap, grid, [int(i) for i in top], float(flat.max()), float(flat.mean()),
                          (peak // grid[1], peak % grid[1]))

    # ---- questions ---------------------------------------------------------------------------

    @torch.no_grad()
    def answer(self, prefix: Prefix, question: str, max_new_tokens: int = 128, on_text=None,
               temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None,
               repetition_penalty: float | None = None, verdict: bool | None = None) -> Answer:
        """Answer one question on an encoded pair; `on_text(str)` receives the text as it is decoded.
        `verdict` (True = yes, False = no) sets the answer's first word; the model writes the rest."""
        if not question.strip():
            raise SageError("the question is empty")
        rest = self._question_rest(prefix, question)[None]  # [1, T_rest, C]
        first = prefix.cache is None  # first question: prefix + question in one forward
        cache = self.lm.new_cache() if first else copy.deepcopy(prefix.cache)  # the prefix stays untouched
        embeds = with_positions(torch.cat([prefix.embeds()[None], rest], dim=1), prefix.rope(rest.shape[1])) \
            if first else rest  # after the cached prefix, M-RoPE positions continue from the cache's delta
        a = self._answer_one(cache, embeds, question, max_new_tokens, on_text,
                             {"temperature": temperature, "top_p": top_p, "generator": generator,
                              "penalty": self._penalty(repetition_penalty)}, verdict)
        if first:
            cache.crop(-(cache.get_seq_length() - prefix.prefix_tokens))  # keep the prefix for the next questions
            prefix.cache = cache
        a.prompt_tokens = prefix.prefix_tokens + rest.shape[1]
        return a

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
        return self._p_yes(self.lm(cache, inputs_embeds=self._question_rest(prefix, question)[None])[0])

    @torch.no_grad()
    def answer_group(self, prefix: Prefix, questions: list[str], max_new_tokens: int = 128,
                     verdicts: list[bool | None] | None = None, **sampling) -> list[Answer]:
        """Answers to several questions on one encoded pair, decoded together as one batch.

        Gives the same text as `answer` for each question (up to float rounding in batched matmuls).
        `verdicts`: each answer's first word as `answer` takes it; `sampling`: temperature, top_p,
        generator, repetition_penalty, as `answer` takes them.
        """
        return self.answer_groups([prefix], [questions], max_new_tokens,
                                  verdicts=[verdicts] if verdicts is not None else None, **sampling)[0]

    @torch.no_grad()
    def answer_groups(self, prefixes: list[Prefix], questions: list[list[str]], max_new_tokens: int = 128,
                      temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None,
                      repetition_penalty: float | None = None,
                      verdicts: list[list[bool | None]] | None = None) -> list[list[Answer]]:
        """questions[i] on prefixes[i], every row decoded in one batch; answers per prefix. `verdicts[i][j]`
        sets the first word of answer j on prefix i (as `answer` takes it; None: the model's).

        Row (i, j) is [prefix i | padding | question j + assistant header]: the prefix caches are repeated
        per row, each row's question is right-aligned so all rows end together, and explicit position
        ids keep every row's positions contiguous across the padding (which the attention mask hides).
        One batch needs prefixes of one length and as many questions each (zero-shot images without
        facts, as `sage facts extract` asks them); otherwise each prefix is its own batch.
        """
        if any(not q.strip() for qs in questions for q in qs):
            raise SageError("a question is empty")
        if len({p.prefix_tokens for p in prefixes}) > 1 or len({len(qs) for qs in questions}) > 1:
            return [self.answer_groups([p], [qs], max_new_tokens, temperature, top_p, generator, repetition_penalty,
                                       [verdicts[i]] if verdicts is not None else None)[0]
                    for i, (p, qs) in enumerate(zip(prefixes, questions))]
        per, plen = len(questions[0]), prefixes[0].prefix_tokens
        rests = [self._question_rest(p, q) for p, qs in zip(prefixes, questions) for q in qs]  # [T_r, C] each
        embeds, mask, pos = self._right_aligned(rests, plen)  # [n, W, C], [n, P + W], [n, W]
        cache = self._prefix_cache(prefixes)
        cache.batch_repeat_interleave(per)  # row r reads prefix r // per
        t0 = time.perf_counter()
        logits = self.lm(cache, inputs_embeds=embeds, attention_mask=mask, position_ids=pos)  # [n, V]
        p_yes = [self._p_yes(row) for row in logits]
        rows = decoding.PaddedRows(self.lm, cache, mask, pos[:, -1])
        flat_verdicts = [v for vs in verdicts for v in vs] if verdicts is not None else [None] * len(rests)
        logits, guided = self._forced(logits, flat_verdicts)
        ids, t_first = decoding.decode(rows, logits, max_new_tokens, self.stop_ids, temperature=temperature,
                                       top_p=top_p, generator=generator, penalty=self._penalty(repetition_penalty))
        t_end = time.perf_counter()
        tok = self.model.backbone.tokenizer
        flat = [q for qs in questions for q in qs]
        answers = [Answer(q, tok.decode(ids[r], skip_special_tokens=True).strip(), p_yes[r], len(ids[r]),
                          plen + rests[r].shape[0], t_first - t0, t_end - t_first, guided=guided[r])
                   for r, q in enumerate(flat)]
        return [answers[i * per:(i + 1) * per] for i in range(len(prefixes))]

    def _right_aligned(self, rests: list[torch.Tensor], plen: int):
        """Rows [prefix | padding | rest]: the rests' embeds [n, W, C], the mask [n, P + W] and the
        positions of the rests' tokens [n, W] (each row's count on from the prefix)."""
        n, width, c = len(rests), max(r.shape[0] for r in rests), rests[0].shape[1]
        dev = self.model.device
        embeds = torch.zeros(n, width, c, dtype=rests[0].dtype, device=dev)
        mask = torch.zeros(n, plen + width, dtype=torch.long, device=dev)
        mask[:, :plen] = 1
        pos = torch.zeros(n, width, dtype=torch.long, device=dev)
        for i, r in enumerate(rests):
            t = r.shape[0]
            embeds[i, width - t:] = r
            mask[i, plen + width - t:] = 1
            pos[i, width - t:] = torch.arange(plen, plen + t, device=dev)
        return embeds, mask, pos

    def _prefix_cache(self, prefixes: list[Prefix]):
        """A cache of every prefix, one row each: a copy of a lone prefix's own (prefilled once and kept),
        or the prefixes prefilled together."""
        if len(prefixes) == 1:
            self._prefill(prefixes[0])
            return copy.deepcopy(prefixes[0].cache)
        cache = self.lm.new_cache()
        rope = [p.rope() for p in prefixes]
        self.lm(cache, inputs_embeds=with_positions(torch.stack([p.embeds() for p in prefixes]),  # [b, P, C]
                                                    torch.cat(rope, dim=1) if rope[0] is not None else None))
        return cache

    @torch.no_grad()
    def chat(self, messages: list[dict], max_new_tokens: int = 128, on_text=None, temperature: float = 0.0,
             top_p: float = 1.0, generator: torch.Generator | None = None) -> Answer:
        """Plain text chat with the backbone's LLM (no images): for judges and fact writers."""
        embeds = self.chat_embeds(messages)[None]  # [1, T, C]
        question = messages[-1].get("content", "") if messages else ""
        a = self._answer_one(self.lm.new_cache(), embeds, question, max_new_tokens, on_text,
                             {"temperature": temperature, "top_p": top_p, "generator": generator,
                              "penalty": self.repetition_penalty})
        a.prompt_tokens = embeds.shape[1]
        return a

    def chat_embeds(self, messages: list[dict]) -> torch.Tensor:
        """The chat template's prompt for `messages`, embedded [T, C]."""
        text = self.model.backbone.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.model.embed_text(text)

    # ---- whole prompts of different requests, batched --------------------------------------------

    @property
    def batches_prompts(self) -> bool:
        """Whether `answer_batch` can take this backbone's prompts (M-RoPE positions are not token counts)."""
        return getattr(self.model.backbone, "rope_positions", None) is None

    def pair_embeds(self, prefix: Prefix, question: str) -> torch.Tensor:
        """The whole prompt of one question on an encoded pair [T, C] (prefix and question), for `answer_batch`."""
        if not question.strip():
            raise SageError("the question is empty")
        return torch.cat([prefix.embeds(), self._question_rest(prefix, question)])

    def shared_start(self, prefix: Prefix) -> tuple[str, int] | None:
        """`Prompt.shared` for a one-shot pair: its prompt starts with the system text and the reference
        image, the same embeds for every test image checked against that reference (a station's golden
        sample). The key is a digest of those embeds, so only starts that are bit for bit equal share."""
        if not prefix.start_tokens:
            return None
        head = prefix.embeds()[: prefix.start_tokens].contiguous()  # [S, C]
        return hashlib.sha1(head.view(torch.uint8).cpu().numpy().tobytes()).hexdigest(), prefix.start_tokens

    @torch.no_grad()
    def answer_batch(self, prompts: list[Prompt]) -> list[Answer]:
        """Whole prompts of any lengths (different requests) answered as one batch.

        The prompts are left-padded into one prefill; positions count each row's real tokens and the
        attention mask hides the padding, so each row decodes as it would alone (greedy: the same text
        up to float rounding in batched matmuls). Prompts that start with the same tokens (`Prompt.shared`:
        image pairs with one reference, whose system text and reference image come first) prefill that
        start once, and their rows continue from its cache. Each row keeps its own budget and sampling; a
        row whose `on_text` returns False stops there (its client left) while the others go on.
        """
        if not self.batches_prompts:
            raise SageError("answer_batch: this backbone's M-RoPE positions need one request at a time")
        shared = {p.shared[1] for p in prompts if p.shared is not None}
        if len(shared) > 1 or (shared and any(p.shared is None for p in prompts)):
            # one batch per length of shared start (none is one of them); answers in the prompts' order
            by_start: dict[int, list[int]] = {}
            for i, p in enumerate(prompts):
                by_start.setdefault(p.shared[1] if p.shared else 0, []).append(i)
            out: list[Answer | None] = [None] * len(prompts)
            for idx in by_start.values():
                for i, a in zip(idx, self.answer_batch([prompts[i] for i in idx])):
                    out[i] = a
            return out
        t0 = time.perf_counter()
        cache, logits, rows = self._shared_prefill(prompts) if shared else self._padded_prefill(prompts)
        p_yes = [self._p_yes(row) for row in logits]
        logits, guided = self._forced(logits, [p.verdict for p in prompts])
        tok = self.model.backbone.tokenizer
        streams = [decoding.TextStream(tok, p.on_text) if p.on_text is not None else None for p in prompts]
        ids, t_first = decoding.decode(
            rows, logits, [p.max_new_tokens for p in prompts], self.stop_ids,
            per_row=[{"penalty": self._penalty(p.repetition_penalty), "temperature": p.temperature,
                      "top_p": p.top_p, "generator": p.generator} for p in prompts],
            on_token=lambda i, row: streams[i](i, row) if streams[i] is not None else None)
        t_end = time.perf_counter()
        answers = []
        for i, p in enumerate(prompts):
            if streams[i] is not None:
                streams[i].close(ids[i])
            answers.append(Answer(p.question, tok.decode(ids[i], skip_special_tokens=True).strip(), p_yes[i],
                                  len(ids[i]), p.embeds.shape[0], t_first - t0, t_end - t_first, guided=guided[i]))
        return answers

    def _padded_prefill(self, prompts: list[Prompt]):
        """Rows [padding | prompt]: the cache, the first logits [n, V] and the decoding step."""
        n, width = len(prompts), max(p.embeds.shape[0] for p in prompts)
        c, dev = prompts[0].embeds.shape[1], self.model.device
        embeds = torch.zeros(n, width, c, dtype=prompts[0].embeds.dtype, device=dev)  # [n, W, C]
        mask = torch.zeros(n, width, dtype=torch.long, device=dev)  # [n, W]
        for i, p in enumerate(prompts):
            t = p.embeds.shape[0]
            embeds[i, width - t:], mask[i, width - t:] = p.embeds, 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # [n, W]: each row counts from its first real token
        cache = self.lm.new_cache()
        logits = self.lm(cache, inputs_embeds=embeds, attention_mask=mask, position_ids=pos)  # [n, V]
        return cache, logits, decoding.PaddedRows(self.lm, cache, mask, pos[:, -1])

    def _shared_prefill(self, prompts: list[Prompt]):
        """Rows [shared start | padding | rest] (one length of shared start): each distinct start is
        prefilled once, then the rests after it, as `answer_groups` does for one pair's questions."""
        plen = prompts[0].shared[1]
        keys = list(dict.fromkeys(p.shared[0] for p in prompts))
        first = {p.shared[0]: p for p in reversed(prompts)}
        cache = self.lm.new_cache()
        self.lm(cache, inputs_embeds=torch.stack([first[k].embeds[:plen] for k in keys]))  # [k, P, C]
        cache.batch_select_indices(torch.tensor([keys.index(p.shared[0]) for p in prompts],
                                                device=self.model.device))  # row r reads its start's cache
        embeds, mask, pos = self._right_aligned([p.embeds[plen:] for p in prompts], plen)  # [n, W, C], [n, P + W], [n, W]
        logits = self.lm(cache, inputs_embeds=embeds, attention_mask=mask, position_ids=pos)  # [n, V]
        return cache, logits, decoding.PaddedRows(self.lm, cache, mask, pos[:, -1])

    def _answer_one(self, cache, embeds, question: str, max_new_tokens: int, on_text, sampling: dict,
                    verdict: bool | None = None) -> Answer:
        """Feed `embeds` [1, T, C] after `cache`, then decode one row (streamed to `on_text`)."""
        tok = self.model.backbone.tokenizer
        t0 = time.perf_counter()
        logits = self.lm(cache, inputs_embeds=embeds)  # [1, V]
        p_yes = self._p_yes(logits[0])
        logits, guided = self._forced(logits, [verdict])
        stream = decoding.TextStream(tok, on_text) if on_text is not None else None
        ids, t_first = decoding.decode(lambda nxt: self.lm(cache, input_ids=nxt[:, None]), logits, max_new_tokens,
                                       self.stop_ids, on_token=stream, **sampling)
        t_end = time.perf_counter()
        if stream is not None:
            stream.close(ids[0])
        text = tok.decode(ids[0], skip_special_tokens=True).strip()
        return Answer(question, text, p_yes, len(ids[0]), embeds.shape[1], t_first - t0, t_end - t_first,
                      guided=guided[0])

    def _forced(self, logits: torch.Tensor, verdicts: list[bool | None]) -> tuple[torch.Tensor, list[bool]]:
        """The first-token logits [n, V] with each row that has a verdict left only its yes (True) or no
        tokens, so that its first token is the model's own likeliest spelling of that word; and which rows
        were set. A tokenizer without yes/no tokens sets none."""
        rows = [i for i, v in enumerate(verdicts) if v is not None] if self.yes_ids and self.no_ids else []
        if not rows:
            return logits, [False] * len(verdicts)
        out = logits.clone()
        for i in rows:
            keep = torch.tensor(self.yes_ids if verdicts[i] else self.no_ids, device=logits.device)
            out[i] = float("-inf")
            out[i, keep] = logits[i, keep]
        return out, [i in rows for i in range(len(verdicts))]

    def _penalty(self, override: float | None) -> float:
        return self.repetition_penalty if override is None else override

    def _p_yes(self, logits: torch.Tensor) -> float | None:
        """From the first answer token's logits [V]."""
        if not self.yes_ids or not self.no_ids:
            return None
        p = torch.softmax(logits, dim=-1)
        yes, no = float(p[self.yes_ids].sum()), float(p[self.no_ids].sum())
        return yes / (yes + no) if yes + no > 0 else 0.5


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
