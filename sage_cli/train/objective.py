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

from sage_cli.train.losses import Targets, edpo_loss, target_logps
from sage_cli.train.packing import Branch, can_pack, pack


@dataclass
class Batch:
    """B examples of one stage and what the objectives read besides their text."""
    examples: list  # SFEExample (stage 1) or PairExample (stage 2)
    f_t: torch.Tensor  # [B, N, D] the frozen encoder's features of the test images (the model moves them)
    f_r: torch.Tensor | None  # [B, N, D] of the reference images; None zero-shot
    ref_logps: torch.Tensor | None = None  # [B, 2] E-DPO: log π_ref(chosen), log π_ref(rejected)


def _encode(model, batch: Batch):
    return model.encode_features(batch.f_t, batch.f_r, [e.facts for e in batch.examples])


def _decoder_logps(model, embeds, mask, positions, targets: Targets, first_weight: float):
    """The LLM's decoder, then log-probs of the target tokens only: sums [n], counts [n]."""
    lm = model.backbone.language_model
    extra = {"position_ids": positions} if positions is not None else {}  # M-RoPE; packed rows
    hidden = lm.model(inputs_embeds=embeds, attention_mask=mask, **extra).last_hidden_state  # [B, T, C]
    return target_logps(hidden, lm.lm_head, targets, first_weight)


def _answer_logps(model, built, first_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One sequence per row of a built batch: log-probs of its answer tokens, sums [B], counts [B]."""
    return _decoder_logps(model, built.inputs_embeds, built.attention_mask, built.position_ids,
                          Targets.from_labels(built.labels), first_weight)


def _shares_prefixes(model, batch: Batch) -> bool:
    """Packed when every example names the prefix it shares (train.shared_prefix) and the LLM's attention
    takes the mask (not flash attention)."""
    return all(e.prefix is not None for e in batch.examples) and can_pack(model)


def _prefix_groups(examples: list) -> list[list[int]]:
    """Indices of the examples grouped by their prefix key, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(e.prefix, []).append(i)
    return list(groups.values())


def _shared_logps(model, batch: Batch, sequences, first_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of every example's sequences with each shared prefix run once: sums [B*S], counts [B*S] in
    example order, S = len(sequences(example)) (the (question, answer) pairs it trains on).

    The encoding (adapter, fusion, projection) runs once per prefix too; its gradient is the sum over the
    sequences that read it, as when each is run alone.
    """
    exs = batch.examples
    groups = _prefix_groups(exs)
    firsts = torch.tensor([g[0] for g in groups])
    enc = model.encode_features(batch.f_t[firsts], batch.f_r[firsts] if batch.f_r is not None else None,
                                [exs[g[0]].facts for g in groups])  # one sample per prefix
    rows, order = [], []
    for s, g in enumerate(groups):
        row = []
        for i in g:
            seqs = sequences(exs[i])
            row += [Branch(s, q, a) for q, a in seqs]
            order += [i * len(seqs) + k for k in range(len(seqs))]
        rows.append(row)
    packed = pack(model, enc, rows)
    sums, counts = _decoder_logps(model, packed.inputs_embeds, packed.attention_mask, packed.position_ids,
                                  packed.targets, first_weight)  # [B*S] in row order
    back = torch.argsort(torch.tensor(order, device=sums.device))  # row order -> example order
    return sums[back], counts[back]


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
        sums, counts = self.answer_logps(batch)  # [B], [B]
        return -sums.sum() / counts.sum().clamp(min=1), {}

    def answer_logps(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(Weighted) log-prob sums and token counts of each example's answer: [B], [B]. A QA group's
        questions in the batch share one prefix when the examples name it."""
        m, exs = self.model, batch.examples
        if _shares_prefixes(m, batch):
            return _shared_logps(m, batch, lambda e: [(e.question, e.answer)], self.verdict_weight)
        built = m.assemble(_encode(m, batch), [e.question for e in exs], [e.answer for e in exs])
        return _answer_logps(m, built, self.verdict_weight)


class EDPOObjective(nn.Module):
    """Stage 2: the E-DPO loss (Eqs. 6-7) of each pair against the reference log-probs the batch carries,
    with β and η bound once. `pair_logps` alone is the policy's side (and, on the frozen start model,
    the reference's)."""

    val_stats: tuple[str, ...] = ("rewards/accuracy",)

    def __init__(self, model, beta: float, eta: float):
        super().__init__()
        self.model, self.beta, self.eta = model, beta, eta

    def pair_logps(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """log π(chosen | x) and log π(rejected | x) of each pair, one forward for both: [B], [B].

        Packed (examples naming their prefix): one row per prefix in the batch, the prompt once and every
        answer of its pairs branching off it (a ΔH_min and a ΔH_max pair of one question: four answers).
        Plain: chosen and rejected as two full sequences, concatenated along the batch.
        """
        m, exs = self.model, batch.examples
        if _shares_prefixes(m, batch):
            sums, _ = _shared_logps(m, batch, lambda e: [(e.question, e.chosen), (e.question, e.rejected)])
        else:
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
