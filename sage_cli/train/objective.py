"""The module each training step runs (and DDP wraps): cached features + text -> loss terms.

Everything trainable (adapter, fusion, projection, LLM) runs inside `forward`, so data-parallel
wrappers see the whole step. The frozen encoder is not here: its features come from the cache.
"""

from __future__ import annotations

import torch
from torch import nn

from sage_cli.train.losses import sequence_logps


def _answer_logps(model, batch, first_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The LLM's decoder on a built batch, then log-probs of the answer tokens only: sums [B], counts [B]."""
    lm = model.backbone.language_model
    hidden = lm.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask).last_hidden_state
    return sequence_logps(hidden, lm.lm_head, batch.labels, first_weight)  # hidden: [B, T, C]


class SFEObjective(nn.Module):
    """Stage 1: cross-entropy on the answer tokens (Eq. 8), averaged over all answer tokens of the batch.

    `verdict_weight` > 1 counts each answer's first token that many times. The verdict is one token in
    ~40 of an expert answer; a small model otherwise spends the stage learning the wording around it.
    """

    def __init__(self, model, verdict_weight: float = 1.0):
        super().__init__()
        self.model, self.verdict_weight = model, verdict_weight

    def forward(self, f_t: torch.Tensor, f_r: torch.Tensor | None, facts: list[list[str]], questions: list[str],
                answers: list[str]) -> torch.Tensor:
        m = self.model
        batch = m.assemble(m.encode_features(f_t, f_r, facts), questions, answers)
        sums, counts = _answer_logps(m, batch, self.verdict_weight)
        return -sums.sum() / counts.sum().clamp(min=1)


class PairLogps(nn.Module):
    """Stage 2: log π(chosen | x) and log π(rejected | x) of each pair, one forward for both ([B] each)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, f_t: torch.Tensor, f_r: torch.Tensor | None, facts: list[list[str]], questions: list[str],
                chosen: list[str], rejected: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        enc = m.encode_features(f_t, f_r, facts).repeat(2)  # sample i at rows 2i (chosen) and 2i+1 (rejected)
        answers = [a for pair in zip(chosen, rejected) for a in pair]
        sums, _ = _answer_logps(m, m.assemble(enc, [q for q in questions for _ in range(2)], answers))
        logps = sums.view(-1, 2)  # [B, 2]
        return logps[:, 0], logps[:, 1]
