"""Comparison patches (Eq. 1): how unlike its nearest reference patch each test patch is.

The paper's "minimum similarity to any reference patch" is read as the nearest-neighbour rule of
PatchCore (SPEC.md step 2): s_i = max_j cos(v_t[i], v_r[j]); the K test patches with the lowest s_i
are the comparison patches. 1 - s over the patch grid is an anomaly map for free.

Several normal references (beyond the paper): the reference side is the union of every reference's
patches, a memory bank of normal patches as PatchCore keeps one (`reference_bank`). A test patch is
then as normal as its nearest patch in any of them, so a second reference can only raise s_i (lower
the map); with one reference the bank is that reference's patches and nothing changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nearest_similarity(v_t: torch.Tensor, v_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of each test patch to its nearest reference patch.

    v_t: [B, P, C] test patches; v_r: [B, R, C] reference patches.
    Returns s [B, P] (the similarity) and nn [B, P] (index of that reference patch).
    """
    sim = F.normalize(v_t.float(), dim=-1) @ F.normalize(v_r.float(), dim=-1).transpose(1, 2)  # [B, P, R]
    s, nn = sim.max(dim=-1)
    return s, nn


def reference_bank(v_r: torch.Tensor) -> torch.Tensor:
    """The union of N references' patches: [B, N, P, C] -> [B, N * P, C] (reference after reference).

    A [B, P, C] tensor is one reference already and is returned as it is.
    """
    return v_r.flatten(1, 2) if v_r.dim() == 4 else v_r


def least_similar(s: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, K] of the K patches with the lowest similarity, most anomalous first."""
    k = min(k, s.shape[-1])
    return torch.topk(s, k, dim=-1, largest=False).indices


def gather_patches(v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """v [B, P, C], idx [B, K] -> [B, K, C]."""
    return torch.gather(v, 1, idx.unsqueeze(-1).expand(-1, -1, v.shape[-1]))


def anomaly_peak(s: torch.Tensor) -> torch.Tensor:
    """The anomaly map's maximum max_i (1 - s_i): [..., P] -> [...]; the training-free detector."""
    return (1.0 - s).amax(dim=-1)


def anomaly_map(s: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """1 - s reshaped to the patch grid: [B, P] -> [B, h, w]; higher = more anomalous."""
    h, w = grid
    return (1.0 - s).reshape(s.shape[0], h, w)
