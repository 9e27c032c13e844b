"""The losses of the two stages as pure functions of log-probabilities (SPEC.md steps 6 and 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sage_cli.models.sage import IGNORE


def sequence_logps(hidden: torch.Tensor, head, labels: torch.Tensor,
                   first_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(token) over each sequence's labelled tokens, and how many there are: [B], [B].

    hidden [B, T, C] is the decoder's last hidden state, `head` the LM head, labels [B, T] (IGNORE outside
    the answers). Position t predicts token t+1. The head runs only at the N positions that predict an
    answer token: full-vocabulary logits for every prompt position would be most of a small LLM's step
    and are never used.
    """
    h, labels = hidden[:, :-1], labels[:, 1:]
    mask = labels != IGNORE  # [B, T-1]
    logits = head(h[mask]).float()  # [N, V]
    picked = F.log_softmax(logits, dim=-1).gather(1, labels[mask].unsqueeze(1)).squeeze(1)  # [N]
    rows = mask.nonzero(as_tuple=True)[0]
    counts = mask.sum(-1).to(picked.dtype)  # [B]
    if first_weight != 1.0:
        first = torch.ones_like(rows, dtype=torch.bool)
        first[1:] = rows[1:] != rows[:-1]  # mask.nonzero is row-major: a row's first answer token starts its run
        weight = torch.where(first, first_weight, 1.0).to(picked.dtype)  # [N]
        picked = picked * weight
        counts = counts + (first_weight - 1.0) * (counts > 0)
    sums = torch.zeros(labels.shape[0], dtype=picked.dtype, device=picked.device).index_add(0, rows, picked)
    return sums, counts


def edpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, delta_h: torch.Tensor, beta: float,
              eta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Eqs. 6-7, per pair [B]: d = β[(πc − rc) − (πr − rr)] − η·ΔH, L = −log σ(d).

    η = 0 is the standard DPO sigmoid loss. A larger ΔH lowers d, so the pair's loss rises: pairs whose
    answers the judge told apart clearly must be separated by a wider margin.
    Returns the mean loss and the batch statistics TRL-style trainers log, as detached 0-d tensors
    (reading them, which waits for the device, is left to the caller).
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)  # [B]
    rejected_reward = beta * (policy_rejected - ref_rejected)  # [B]
    d = chosen_reward - rejected_reward - eta * delta_h  # [B]
    loss = -F.logsigmoid(d)  # [B]
    stats = {
        "rewards/chosen": chosen_reward.detach().mean(),
        "rewards/rejected": rejected_reward.detach().mean(),
        "rewards/margins": (chosen_reward - rejected_reward).detach().mean(),
        "rewards/accuracy": (chosen_reward > rejected_reward).float().mean(),
        "entropy_term": (eta * delta_h).detach().float().mean(),
    }
    return loss.mean(), stats
