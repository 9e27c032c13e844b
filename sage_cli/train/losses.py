"""The losses of the two stages as pure functions of log-probabilities (SPEC.md steps 6 and 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sage_cli.models.sage import IGNORE


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over each sequence's labelled tokens: logits [B, T, V], labels [B, T] -> [B].

    Position t predicts token t+1, so logits and labels are shifted by one; IGNORE labels count zero.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE
    picked = torch.gather(F.log_softmax(logits, dim=-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    return (picked * mask).sum(-1)


def edpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, delta_h: torch.Tensor, beta: float, eta: float) -> tuple[torch.Tensor, dict]:
    """Eqs. 6-7, per pair [B]: d = β[(πc − rc) − (πr − rr)] − η·ΔH, L = −log σ(d).

    η = 0 is the standard DPO sigmoid loss. A larger ΔH lowers d, so the pair's loss rises: pairs whose
    answers the judge told apart clearly must be separated by a wider margin.
    Returns the mean loss and the per-batch statistics TRL-style trainers log.
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)  # [B]
    rejected_reward = beta * (policy_rejected - ref_rejected)
    d = chosen_reward - rejected_reward - eta * delta_h
    loss = -F.logsigmoid(d)
    stats = {
        "rewards/chosen": chosen_reward.detach().mean().item(),
        "rewards/rejected": rejected_reward.detach().mean().item(),
        "rewards/margins": (chosen_reward - rejected_reward).detach().mean().item(),
        "rewards/accuracy": (chosen_reward > rejected_reward).float().mean().item(),
        "entropy_term": (eta * delta_h).detach().float().mean().item(),
    }
    return loss.mean(), stats
