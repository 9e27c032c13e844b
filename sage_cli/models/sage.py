"""SageModel: SAGE on top of any Backbone (SPEC.md steps 1-5).

The LLM sees one chat turn laid out as

    [system] Reference image (normal): <ref patches>   (one-shot only)
             Test image: <test patches>
             <L_F fused fact tokens>  Above is the feature related to the anomaly facts.
             <question>               [assistant] <answer>

The fact tokens are t^s = φ_FA(t^g, v_t, v_d) (Eq. 2) after φ_Proj (Eq. 9). `facts_mode="hard"`
writes the facts into the prompt as text instead (the paper's Fact[Hard]); `"none"` drops them.
With `peak_hint` (one-shot, not in the paper) the question's tokens also carry log(anomaly-map peak)
times a learned direction.
Placeholders in the rendered chat template mark where embeddings are spliced in, so every
backbone keeps its own template. Position ids run on without repeats (the LLM derives them from
the attention mask); a backbone with `rope_positions` (Qwen2-VL's M-RoPE) gets them computed per piece
and attached to `inputs_embeds` (`with_positions`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from sage_cli.models.backbone import Backbone
from sage_cli.models.comparison import nearest_similarity, reference_bank
from sage_cli.models.fusion import Comparison, FactProjector, FusionAttention, pool_fact_embeddings

REF, TEST, FACTS, QUESTION = "<sage:reference>", "<sage:test>", "<sage:facts>", "<sage:question>"
_SLOTS = re.compile("(" + "|".join(re.escape(t) for t in (REF, TEST, FACTS, QUESTION)) + ")")
FACT_PROMPT = "Above is the feature related to the anomaly facts."  # the paper's auxiliary prompt
SYSTEM = ("You are an industrial inspection expert. Compare the test image with the normal reference, "
          "answer the question, then explain where the defect is, why it matters and what it breaks.")
IGNORE = -100  # label of tokens the loss skips
POSITIONS = "sage_position_ids"  # attribute of an inputs_embeds tensor [B, T, C]: its positions [3, B, T]


def with_positions(embeds: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """`embeds` carrying its M-RoPE positions [3, B, T] to the LLM (None: positions count tokens)."""
    if positions is not None:
        setattr(embeds, POSITIONS, positions)
    return embeds


@dataclass
class Encoding:
    """What SAGE computes from the images and facts before any question is read."""

    v_t: torch.Tensor  # [B, P, C] test patches
    v_r: torch.Tensor | None  # [B, P, C] reference patches (the first reference's of several); None = zero-shot
    facts: list[list[str]]  # the sentences used (at most num_facts each)
    fact_tokens: list[torch.Tensor] | None  # per sample [L_i, C] after fusion + projection; None unless "fe"
    comparison: Comparison  # Eq. 1 (s [B, P] is None zero-shot)

    def repeat(self, n: int) -> "Encoding":
        """Each sample n times in a row (several questions per image without re-encoding it)."""
        rep = lambda t: t.repeat_interleave(n, dim=0) if t is not None else None  # noqa: E731
        return Encoding(rep(self.v_t), rep(self.v_r), [f for f in self.facts for _ in range(n)],
                        [t for t in self.fact_tokens for _ in range(n)] if self.fact_tokens is not None else None,
                        Comparison(rep(self.comparison.s), rep(self.comparison.idx)))

    def sample(self, i: int) -> "Encoding":
        """Sample i alone, as a batch of one (several requests encoded together, split back)."""
        one = lambda t: t[i:i + 1] if t is not None else None  # noqa: E731
        c = self.comparison
        return Encoding(one(self.v_t), one(self.v_r), [self.facts[i]],
                        [self.fact_tokens[i]] if self.fact_tokens is not None else None,
                        Comparison(one(c.s), one(c.idx), one(c.fact_sim)))


@dataclass
class SageBatch:
    inputs_embeds: torch.Tensor  # [B, T, C]
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor | None  # [B, T], IGNORE outside the answers
    comparison: Comparison  # Eq. 1 per sample (s [B, P] is None zero-shot)
    position_ids: torch.Tensor | None = None  # [3, B, T] M-RoPE positions; None: they count tokens


class SageModel(nn.Module):
    # the constructor's settings beyond the backbone: a checkpoint's config.json stores them, a recipe's
    # `model:` section sets them
    SETTINGS = ("facts_mode", "num_facts", "k_patches", "fusion_heads", "fusion_values", "peak_hint")

    def __init__(self, backbone: Backbone, facts_mode: str = "fe", num_facts: int = 8, k_patches: int = 16,
                 fusion_heads: int = 4, fusion_values: str = "test", peak_hint: bool = False):
        super().__init__()
        if facts_mode not in ("fe", "hard", "none"):
            raise ValueError(f"facts_mode must be fe, hard or none, got {facts_mode!r}")
        self.backbone = backbone
        self.facts_mode, self.num_facts = facts_mode, num_facts
        c = backbone.hidden_size
        self.fusion = FusionAttention(c, fusion_heads, k_patches, fusion_values)
        self.projector = FactProjector(c, sim=fusion_values == "test+sim", hint=peak_hint)

    def settings(self) -> dict:
        """The SETTINGS this model was built with (SageModel(backbone, **model.settings()) rebuilds it)."""
        return {"facts_mode": self.facts_mode, "num_facts": self.num_facts, "k_patches": self.fusion.k_patches,
                "fusion_heads": self.fusion.heads, "fusion_values": self.fusion.values,
                "peak_hint": self.projector.hint is not None}

    @property
    def device(self) -> torch.device:
        return self.projector.proj.weight.device

    # ---- text ------------------------------------------------------------------------------

    def prompt(self, question: str, has_reference: bool, facts: list[str]) -> str:
        """The rendered chat prompt with placeholders where image and fact embeddings go."""
        user = f"Reference image (normal): {REF}\n" if has_reference else ""
        user += f"Test image: {TEST}\n"
        if facts and self.facts_mode == "fe":
            user += f"{FACTS}\n{FACT_PROMPT}\n"
        elif facts and self.facts_mode == "hard":
            user += "Facts: " + " ".join(facts) + "\n"
        user += question.strip()
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        return self.backbone.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def fact_embeddings(self, facts: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """t^g [B, L, C] (mean over each sentence's real tokens) and the fact-slot mask [B, L]."""
        tok = self.backbone.tokenizer
        b, l = len(facts), max(1, max(len(f) for f in facts))
        c = self.backbone.hidden_size
        t_g = torch.zeros(b, l, c, device=self.device)
        mask = torch.zeros(b, l, dtype=torch.bool, device=self.device)
        flat = [(i, j, s) for i, fs in enumerate(facts) for j, s in enumerate(fs)]
        if flat:
            enc = tok([s for _, _, s in flat], return_tensors="pt", padding=True, add_special_tokens=False)
            ids, am = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
            pooled = pool_fact_embeddings(self.backbone.embed_tokens(ids), am)  # [N, C]
            rows = torch.tensor([i for i, _, _ in flat], device=self.device)
            cols = torch.tensor([j for _, j, _ in flat], device=self.device)
            t_g = t_g.to(pooled.dtype).index_put((rows, cols), pooled)
            mask[rows, cols] = True
        return t_g, mask

    # ---- the batch the LLM sees -----------------------------------------------------------

    def encode(self, test_pixels: torch.Tensor, ref_pixels: torch.Tensor | None,
               facts: list[list[str]]) -> Encoding:
        """Images [B, 3, H, W] (ref None = zero-shot) and fact sentences -> everything but the question.

        ref_pixels [B, N, 3, H, W]: N normal references per sample; Eq. 1 compares with the union of
        their patches (`encode_features`).
        """
        with torch.no_grad():  # the vision encoder is frozen
            f_t = self.backbone.vision_features(test_pixels.to(self.device))  # [B, N, D]
            f_r = None
            if ref_pixels is not None and ref_pixels.dim() == 5:  # several references: one encoder batch
                f_r = self.backbone.vision_features(ref_pixels.flatten(0, 1).to(self.device))  # [B * R, N, D]
                f_r = f_r.unflatten(0, tuple(ref_pixels.shape[:2]))  # [B, R, N, D]
            elif ref_pixels is not None:
                f_r = self.backbone.vision_features(ref_pixels.to(self.device))
        return self.encode_features(f_t, f_r, facts)

    def encode_features(self, f_t: torch.Tensor, f_r: torch.Tensor | None, facts: list[list[str]]) -> Encoding:
        """Like `encode`, from the frozen encoder's features [B, N, D] (training caches them).

        f_r [B, R, N, D] holds R normal references per sample: Eq. 1 (the map, the K comparison patches,
        their nearest reference patches, the peak) runs over the union of their patches
        (`comparison.reference_bank`), while the prompt shows the first reference's patches only (the
        one slot the model was trained with; `Encoding.v_r`). One reference, either shape, is today's.
        """
        facts = [list(f[: self.num_facts]) for f in facts]
        v_t = self.backbone.adapt(f_t.to(self.device))  # [B, P, C]
        v_r = bank = None  # the reference the prompt shows [B, P, C]; every reference's patches [B, R * P, C]
        if f_r is not None and f_r.dim() == 4:
            v_all = self.backbone.adapt(f_r.flatten(0, 1).to(self.device)).unflatten(0, tuple(f_r.shape[:2]))
            v_r, bank = v_all[:, 0], reference_bank(v_all)  # [B, R, P, C] -> [B, P, C], [B, R * P, C]
        elif f_r is not None:
            v_r = bank = self.backbone.adapt(f_r.to(self.device))
        fact_tokens = None
        if self.facts_mode == "fe" and any(facts):
            t_g, fact_mask = self.fact_embeddings(facts)  # [B, L, C], [B, L]
            t_s, cmp = self.fusion(t_g.to(v_t.dtype), v_t, bank)  # [B, L, C]
            t_s = self.projector(t_s, cmp.fact_sim)
            fact_tokens = [t_s[i][fact_mask[i]] for i in range(len(facts))]  # real facts only: [L_i, C]
        elif bank is not None:
            s, _ = nearest_similarity(v_t, bank)  # the anomaly map is shown whatever the facts mode
            cmp = Comparison(s, None)
        else:
            cmp = Comparison(None, None)
        return Encoding(v_t, v_r, facts, fact_tokens, cmp)

    def prompt_pieces(self, enc: Encoding, i: int, question: str) -> tuple[list[torch.Tensor], int]:
        """Sample i's prompt as embedding pieces [T_j, C] in order, and the index of the question piece.

        Everything before the question depends only on the images and facts, so generation can prefill
        it once and reuse it for every question of a group.
        """
        pieces, at, _ = self.prompt_layout(enc, i, question)
        return pieces, at

    def prompt_layout(self, enc: Encoding, i: int, question: str) -> tuple[list[torch.Tensor], int, list[bool]]:
        """`prompt_pieces` and which pieces are images (M-RoPE gives them 2-D positions)."""
        text = self.prompt(QUESTION, enc.v_r is not None, enc.facts[i])
        slots = {TEST: enc.v_t[i]}
        if enc.v_r is not None:
            slots[REF] = enc.v_r[i]
        if enc.fact_tokens is not None:
            slots[FACTS] = enc.fact_tokens[i]
        pieces, images, at = [], [], -1
        for part in _SLOTS.split(text):
            if part in slots:
                pieces.append(slots[part])
            elif part == QUESTION:
                at = len(pieces)
                pieces.append(self.question_piece(enc, i, question))
            elif part:
                pieces.append(self.embed_text(part))
            else:
                continue
            images.append(part in slots and part in (TEST, REF))
        return [p.to(enc.v_t.dtype) for p in pieces], at, images

    def rope_positions(self, pieces: list[torch.Tensor], images: list[bool], start: int = 0) -> torch.Tensor | None:
        """M-RoPE positions [3, T] of pieces from `start`, or None for a backbone whose positions count tokens."""
        fn = getattr(self.backbone, "rope_positions", None)
        if fn is None:
            return None
        return fn([p.shape[0] for p in pieces], images, start, device=self.device)[0]

    def question_piece(self, enc: Encoding, i: int, question: str) -> torch.Tensor:
        """Sample i's question as [T, C] embeddings; with peak_hint (one-shot) plus the anomaly-map hint."""
        q = self.embed_text(question.strip())
        if self.projector.hint is not None and enc.comparison.s is not None:
            q = q + self.projector.question_hint(enc.comparison.s[i]).to(q.dtype)  # [T, C] + [C]
        return q

    def embed_text(self, text: str) -> torch.Tensor:
        """Text -> [T, C] with the LLM's input embeddings (no special tokens added)."""
        ids = self.backbone.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        return self.backbone.embed_tokens(ids.to(self.device))

    def answer_piece(self, answer: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """A training target: the answer and the end-of-turn token as embeddings [T, C] and their ids [T]
        (the labels). Training's plain batches (`assemble`) and packed ones (train/packing.py) share it."""
        tok = self.backbone.tokenizer
        ids = tok(answer.strip() + tok.eos_token, add_special_tokens=False,
                  return_tensors="pt")["input_ids"][0].to(self.device)
        return self.backbone.embed_tokens(ids).to(dtype), ids

    def build(self, test_pixels: torch.Tensor, ref_pixels: torch.Tensor | None, questions: list[str],
              facts: list[list[str]] | None = None, answers: list[str] | None = None,
              padding_side: str = "right") -> SageBatch:
        """Embed a batch: images [B, 3, H, W] (ref None = zero-shot), one question per sample.

        With `answers`, labels mark the answer tokens (training); without, the prompt ends where the
        assistant starts (generation; use padding_side="left").
        """
        b = test_pixels.shape[0]
        enc = self.encode(test_pixels, ref_pixels, facts or [[] for _ in range(b)])
        return self.assemble(enc, questions, answers, padding_side)

    def assemble(self, enc: Encoding, questions: list[str], answers: list[str] | None = None,
                 padding_side: str = "right") -> SageBatch:
        """Sample i of `enc` with questions[i] (and answers[i]) -> the padded batch the LLM sees."""
        seqs, labs, poss = [], [], []
        for i, question in enumerate(questions):
            pieces, _, images = self.prompt_layout(enc, i, question)
            labels = [torch.full((p.shape[0],), IGNORE, dtype=torch.long, device=self.device) for p in pieces]
            if answers is not None:
                answer, ids = self.answer_piece(answers[i], enc.v_t.dtype)
                pieces.append(answer)
                labels.append(ids)
                images.append(False)
            seqs.append(torch.cat(pieces))  # [T_i, C]
            labs.append(torch.cat(labels))
            poss.append(self.rope_positions(pieces, images))
        return _pad(seqs, labs if answers is not None else None, padding_side, enc.comparison,
                    poss if poss and poss[0] is not None else None)

    # ---- training and inference -----------------------------------------------------------

    def forward(self, batch: SageBatch):
        """The LLM on a built batch; returns the HF output (loss = CE on answer tokens, Eq. 8)."""
        extra = {"position_ids": batch.position_ids} if batch.position_ids is not None else {}
        return self.backbone.language_model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                            labels=batch.labels, **extra)

    def generate(self, batch: SageBatch, max_new_tokens: int = 128, **sampling) -> list[str]:
        """Answers to a built, left-padded batch, through the Engine's token loop (decoding.py).

        Kept for callers holding a SageBatch; answering images goes through `Engine` (prefix reuse).
        `sampling`: temperature, top_p, generator, penalty.
        """
        from sage_cli.models.decoding import generate_padded

        return generate_padded(self.backbone, batch.inputs_embeds, batch.attention_mask, max_new_tokens, **sampling)


def _pad(seqs: list[torch.Tensor], labs: list[torch.Tensor] | None, side: str, cmp: Comparison,
         poss: list[torch.Tensor] | None = None) -> SageBatch:
    """Stack variable-length sequences [T_i, C] into [B, T, C] with a mask (and labels, M-RoPE positions
    [3, T_i] -> [3, B, T], 0 on padding)."""
    t = max(s.shape[0] for s in seqs)
    b, c = len(seqs), seqs[0].shape[1]
    embeds = seqs[0].new_zeros(b, t, c)
    mask = torch.zeros(b, t, dtype=torch.long, device=seqs[0].device)
    labels = torch.full((b, t), IGNORE, dtype=torch.long, device=seqs[0].device) if labs is not None else None
    pos = torch.zeros(3, b, t, dtype=torch.long, device=seqs[0].device) if poss is not None else None
    for i, s in enumerate(seqs):
        n = s.shape[0]
        span = slice(t - n, t) if side == "left" else slice(0, n)
        embeds[i, span], mask[i, span] = s, 1
        if labels is not None:
            labels[i, span] = labs[i]
        if pos is not None:
            pos[:, i, span] = poss[i]
    return SageBatch(with_positions(embeds, pos), mask, labels, cmp, pos)
