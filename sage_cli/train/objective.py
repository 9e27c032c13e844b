"""The two training objectives, one interface: `objective(batch) -> (loss, stats)`.

Each is the module a training step calls (and DDP wraps, FSDP shards): everything trainable (adapter,
fusion, projection, LLM) runs inside `forward`, so the wrappers see the whole step. The frozen encoder
is not here: its features come from the cache. `stats` are detached tensors; reading them (`.item()`),
averaging over micro-batches and processes and logging them is the training loop's job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sage_cli.train.losses import edpo_loss, sequence_logps


@dataclass
class Batch:
    """B examples of one stage and what the objectives read besides their text."""
    examples: list  # SFEExample (stage 1) or PairExample (stage 2)
    f_t: torch.Tensor  # [B, N, D] the frozen encoder's features of the test images (the model moves them)
    f_r: torch.Tensor | None  # [B, N, D] of the reference images; None zero-shot
    ref_logps: torch.Tensor | None = None  # [B, 2] E-DPO: log π_ref(chosen), log π_ref(rejected)


def _encode(model, batch: Batch):
    return model.encode_features(batch.f_t, batch.f_r, [e.facts for e in batch.examples])


def _answer_logps(model, built, first_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The LLM's decoder on a built batch, then log-probs of the answer tokens only: sums [B], counts [B]."""
    lm = model.backbone.language_model
    extra = {"position_ids": built.position_ids} if built.position_ids is not None else {}  # M-RoPE (Qwen2-VL)
    hidden = lm.model(inputs_embeds=built.inputs_embeds, attention_mask=built.attention_mask, **extra).last_hidden_state
    return sequence_logps(hidden, lm.lm_head, built.labels, first_weight)  # hidden: [B, T, C]


class SFEObjective(nn.Module):
    """Stage 1: cross-entropy on the answer tokens (Eq. 8), averaged over all answer tokens of the batch.

    `verdict_weight` > 1 counts each answer's first token that many times. The verdict is one token in
    ~40 of an expert answer; a small model otherwise spends the stage learning the wording around it.
    """

    val_stats: tuple[str, ...] = ()  # stats that validation reports besides the loss

    def __init__(self, model, verdict_weight: float = 1.0):
        super().__init__()
        self.model, self.verdict_weight = model, verdict_weight

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m, exs = self.model, batch.examples
        built = m.assemble(_encode(m, batch), [e.question for e in exs], [e.answer for e in exs])
        sums, counts = _answer_logps(m, built, self.verdict_weight)  # [B], [B]
        return -sums.sum() / counts.sum().clamp(min=1), {}


class EDPOObjective(nn.Module):
    """Stage 2: the E-DPO loss (Eqs. 6-7) of each pair against the reference log-probs the batch carries,
    with β and η bound once. `pair_logps` alone is the policy's side (and, on the frozen start model,
    the reference's)."""

    val_stats: tuple[str, ...] = ("rewards/accuracy",)

    def __init__(self, model, beta: float, eta: float):
        super().__init__()
        self.model, self.beta, self.eta = model, beta, eta

    def pair_logps(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """log π(chosen | x) and log π(rejected | x) of each pair, one forward for both: [B], [B]."""
        m, exs = self.model, batch.examples
        enc = _encode(m, batch).repeat(2)  # sample i at rows 2i (chosen) and 2i+1 (rejected)
        answers = [a for e in exs for a in (e.chosen, e.rejected)]
        sums, _ = _answer_logps(m, m.assemble(enc, [e.question for e in exs for _ in range(2)], answers))
        logps = sums.view(-1, 2)  # [B, 2]
        return logps[:, 0], logps[:, 1]

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pc, pr = self.pair_logps(batch)  # [B], [B]
        ref = batch.ref_logps.to(pc.device)  # [B, 2]
        dh = torch.tensor([e.delta_h for e in batch.examples], device=pc.device)  # [B]
        return edpo_loss(pc, pr, ref[:, 0], ref[:, 1], dh, self.beta, self.eta)
