"""The losses of the two stages as pure functions of log-probabilities (SPEC.md steps 6 and 10)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sage_cli.models.sage import IGNORE


@dataclass
class Targets:
    """The labelled tokens of a batch, flat: which hidden state predicts each and whose sum it joins.

    Tokens of one sequence are contiguous and in order (its first one is its answer's first token).
    """
    rows: torch.Tensor  # [N] batch row of the predicting position
    at: torch.Tensor  # [N] the predicting position in that row
    tokens: torch.Tensor  # [N] the token it must predict
    owner: torch.Tensor  # [N] the sequence whose log-prob it adds to, 0..n-1
    n: int  # sequences

    @classmethod
    def from_labels(cls, labels: torch.Tensor) -> Targets:
        """One sequence per row of labels [B, T] (IGNORE outside the answers): position t predicts t+1."""
        shifted = labels[:, 1:]
        rows, cols = (shifted != IGNORE).nonzero(as_tuple=True)  # row-major: each row's tokens in order
        return cls(rows, cols, shifted[rows, cols], rows, labels.shape[0])


def sequence_logps(hidden: torch.Tensor, head, labels: torch.Tensor,
                   first_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(token) over each sequence's labelled tokens, and how many there are: [B], [B].

    hidden [B, T, C] is the decoder's last hidden state, `head` the LM head, labels [B, T] (IGNORE outside
    the answers). Position t predicts token t+1.
    """
    return target_logps(hidden, head, Targets.from_labels(labels), first_weight)


def target_logps(hidden: torch.Tensor, head, targets: Targets,
                 first_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(token) over each sequence's targets, and how many there are: [n], [n].

    The head runs only at the N positions that predict an answer token: full-vocabulary logits for every
    prompt position would be most of a small LLM's step and are never used. A packed batch (packing.py)
    names its own predicting positions: two answers branching off one prefix are both predicted, at
    their first token, from the prefix's last position.
    """
    logits = head(hidden[targets.rows, targets.at]).float()  # [N, V]
    picked = F.log_softmax(logits, dim=-1).gather(1, targets.tokens.unsqueeze(1)).squeeze(1)  # [N]
    owner = targets.owner
    counts = torch.zeros(targets.n, dtype=picked.dtype, device=picked.device)
    counts = counts.index_add(0, owner, torch.ones_like(picked))  # [n]
    if first_weight != 1.0:
        first = torch.ones_like(owner, dtype=torch.bool)
        first[1:] = owner[1:] != owner[:-1]  # a sequence's tokens are contiguous: its first one starts the run
        weight = torch.where(first, first_weight, 1.0).to(picked.dtype)  # [N]
        picked = picked * weight
        counts = counts + (first_weight - 1.0) * (counts > 0)
    sums = torch.zeros(targets.n, dtype=picked.dtype, device=picked.device).index_add(0, owner, picked)
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
