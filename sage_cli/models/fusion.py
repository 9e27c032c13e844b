"""Fusion Attention (Eq. 2) and the fact projection head (Eq. 9).

Queries are the pooled fact embeddings t^g [B, L, C]. With a reference image (one-shot) the keys
are the difference features v_t[i] - v_r[nn(i)] of the K comparison patches and the values are
their test features v_t[i] (the paper's variant, `values="test"`). Because test features alone
carry *where* the test differs but not *how much*, two documented switches also carry the
dissimilarity into the values: `"diff"` (values = difference features) and `"test+sim"` (test
features with one channel appended: the patch's 1 - s_i relative to the image's mean 1 - s, times the
patch's feature norm). Raw, 1 - s_i is ~0.02 on a normal patch and ~0.08 on a defect beside features of
norm ~30: one such channel is invisible to W_v, and the fused tokens carried no more than "test". The
ratio to the image's mean is also independent of how tight the trained adapter packs the features.
`test+sim` also hands the projection the anomaly map's peak, max_i (1 - s_i): the training-free
detector, and a far better one than anything the attention averages (AUROC 0.95 on synthetic and 0.96
on real hazelnut pairs with a sage-smol at 100 SFE steps, against 0.79 / 0.87 for the attention-weighted
ratio the fact tokens carried before).
Zero-shot: keys = values = all test patches, as the paper says.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sage_cli.models.comparison import anomaly_peak, gather_patches, least_similar, nearest_similarity

VALUE_MODES = ("test", "diff", "test+sim")


@dataclass
class Comparison:
    """What Eq. 1 found: kept for the anomaly map, the heatmap and the tests."""

    s: torch.Tensor | None  # [B, P] nearest-reference similarity; None zero-shot
    idx: torch.Tensor | None  # [B, K] selected test patches, most anomalous first; None zero-shot
    # [B, L, 1] the anomaly map's peak max_i (1 - s_i), the same for every fact slot (values="test+sim",
    # one-shot only); the projection adds it after its LayerNorm
    fact_sim: torch.Tensor | None = None


class FusionAttention(nn.Module):
    """Multi-head cross-attention from fact queries to comparison patches: t^s = softmax(QK^T/√d)V."""

    def __init__(self, dim: int, heads: int = 4, k_patches: int = 16, values: str = "test"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} fusion heads")
        if values not in VALUE_MODES:
            raise ValueError(f"fusion values must be one of {VALUE_MODES}, got {values!r}")
        self.heads, self.k_patches, self.values = heads, k_patches, values
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim + (values == "test+sim"), dim, bias=False)

    def forward(
        self, t_g: torch.Tensor, v_t: torch.Tensor, v_r: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Comparison]:
        """t_g [B, L, C] facts, v_t [B, P, C] test patches, v_r [B, R, C] reference or None.

        Returns t^s [B, L, C] and the comparison. Facts are independent queries, so a padded fact
        slot changes no other slot's output (the caller masks padded slots in the LLM).
        """
        fact_sim = None  # [B, L, 1] (test+sim, one-shot)
        if v_r is None:
            keys = values = v_t  # [B, P, C]
            s = idx = None
            if self.values == "test+sim":
                values = torch.cat([v_t, v_t.new_zeros(*v_t.shape[:2], 1)], dim=-1)
        else:
            s, nn_idx = nearest_similarity(v_t, v_r)  # [B, P], [B, P]
            idx = least_similar(s, self.k_patches)  # [B, K]
            test_k = gather_patches(v_t, idx)  # [B, K, C]
            ref_k = gather_patches(v_r, torch.gather(nn_idx, 1, idx))  # [B, K, C] nearest reference patches
            keys = test_k - ref_k
            if self.values == "test":
                values = test_k
            elif self.values == "diff":
                values = keys
            else:
                rel = relative_dissimilarity(s, idx).to(v_t.dtype)
                values = torch.cat([test_k, rel * test_k.norm(dim=-1, keepdim=True)], dim=-1)
                peak = anomaly_peak(s).to(v_t.dtype)  # [B]
                fact_sim = peak[:, None, None].expand(-1, t_g.shape[1], 1)
        return self._attend(t_g, keys, values), Comparison(s, idx, fact_sim)

    def _attend(self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        """Attention output [B, L, C]."""
        b, l, c = q_in.shape
        h, d = self.heads, c // self.heads
        q = self.w_q(q_in).view(b, l, h, d).transpose(1, 2)  # [B, h, L, d]
        k = self.w_k(k_in).view(b, -1, h, d).transpose(1, 2)  # [B, h, K, d]
        v = self.w_v(v_in).view(b, -1, h, d).transpose(1, 2)  # [B, h, K, d]
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # [B, h, L, d]
        return out.transpose(1, 2).reshape(b, l, c)  # heads stacked back: [B, L, C]


def relative_dissimilarity(s: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(1 - s_i) / mean_j (1 - s_j) of the selected patches: s [B, P], idx [B, K] -> [B, K, 1].

    About 1-2 on a normal image's least similar patches, several times that on a defect.
    """
    d = 1.0 - s  # [B, P]
    return (torch.gather(d, 1, idx) / d.mean(1, keepdim=True).clamp(min=1e-6)).unsqueeze(-1)


class FactProjector(nn.Module):
    """φ_Proj of Eq. 9 for the fused fact tokens: LayerNorm + Linear into the LLM's input space.

    With `sim` (values="test+sim") a learned direction scaled by log(peak / PEAK_SCALE), the anomaly
    map's peak, is added after the LayerNorm, which would otherwise divide away how strongly the test
    differs, the very thing a verdict needs.
    """

    # A typical peak between a normal (~0.02) and a defective (~0.1) pair: centres the log near 0.
    PEAK_SCALE = 0.05

    def __init__(self, dim: int, sim: bool = False, hint: bool = False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.sim = nn.Linear(1, dim) if sim else None
        # peak_hint: the same evidence for the question's tokens, where the answer reads for certain.
        # It starts small (norm ~0.5 per unit of log-peak; sage-smol's text embeddings have norm ~3):
        # an untrained hint barely moves the question, yet the LLM sees it from the first step.
        self.hint = nn.Linear(1, dim) if hint else None
        if self.hint is not None:
            nn.init.normal_(self.hint.weight, std=0.02)
            nn.init.zeros_(self.hint.bias)

    def forward(self, t_s: torch.Tensor, fact_sim: torch.Tensor | None = None) -> torch.Tensor:
        """t_s [B, L, C], fact_sim [B, L, 1] or None -> [B, L, C]."""
        out = self.proj(self.norm(t_s))
        if self.sim is not None and fact_sim is not None:
            out = out + self.sim(self._log_peak(fact_sim).to(out.dtype))
        return out

    def question_hint(self, s: torch.Tensor) -> torch.Tensor:
        """s [P] one pair's nearest-reference similarity -> [C] added to each of its question's tokens."""
        peak = anomaly_peak(s.float()).reshape(1)  # [1]
        return self.hint(self._log_peak(peak).to(self.hint.weight.dtype))

    def _log_peak(self, peak: torch.Tensor) -> torch.Tensor:
        """The one scalar feature both directions are scaled by: log(peak / PEAK_SCALE), same shape."""
        return (peak.clamp(min=1e-6) / self.PEAK_SCALE).log()


def pool_fact_embeddings(token_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of each fact sentence's token embeddings over its real tokens, never its padding.

    token_embeds [N, T, C] (the LLM's input embedding of N sentences), attention_mask [N, T] -> [N, C].
    """
    m = attention_mask.unsqueeze(-1).to(token_embeds.dtype)  # [N, T, 1]
    return (token_embeds * m).sum(1) / m.sum(1).clamp(min=1.0)
