"""Eq. 1 comparison patches, Eq. 2 fusion attention, Eq. 9 projection, fact pooling: shapes and masking."""

import pytest
import torch

from sage_cli.models.comparison import anomaly_map, least_similar, nearest_similarity
from sage_cli.models.fusion import FactProjector, FusionAttention, pool_fact_embeddings, relative_dissimilarity

B, P, C, L = 2, 16, 32, 5


def _patches(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, P, C, generator=g)


def test_nearest_similarity_is_one_for_identical_images():
    v = _patches()
    s, nn = nearest_similarity(v, v)
    assert s.shape == (B, P) and torch.allclose(s, torch.ones(B, P), atol=1e-5)
    assert torch.equal(nn, torch.arange(P).expand(B, P))


def test_nearest_rule_ignores_patch_order():
    # The reference may be shifted: a permuted reference is still a perfect match.
    v = _patches()
    s, _ = nearest_similarity(v, v[:, torch.randperm(P)])
    assert torch.allclose(s, torch.ones(B, P), atol=1e-5)


def test_top_k_picks_the_altered_patches():
    ref = _patches()
    test = ref.clone()
    altered = torch.tensor([3, 11])
    test[:, altered] = torch.randn(B, 2, C, generator=torch.Generator().manual_seed(9))
    s, _ = nearest_similarity(test, ref)
    idx = least_similar(s, 2)
    for b in range(B):
        assert set(idx[b].tolist()) == set(altered.tolist())
    amap = anomaly_map(s, (4, 4))
    assert amap.shape == (B, 4, 4) and amap.flatten(1).argmax(1).tolist()[0] in altered.tolist()


@pytest.mark.parametrize("values", ["test", "diff", "test+sim"])
def test_fusion_shapes_one_shot_and_zero_shot(values):
    fa = FusionAttention(C, heads=4, k_patches=4, values=values)
    t_g = torch.randn(B, L, C)
    out, cmp = fa(t_g, _patches(0), _patches(1))
    assert out.shape == (B, L, C) and cmp.idx.shape == (B, 4) and cmp.s.shape == (B, P)
    out0, cmp0 = fa(t_g, _patches(0), None)
    assert out0.shape == (B, L, C) and cmp0.idx is None


def test_fusion_output_changes_with_the_reference():
    torch.manual_seed(0)
    fa = FusionAttention(C, heads=4, k_patches=4)
    t_g, v_t = torch.randn(B, L, C), _patches(0)
    a, _ = fa(t_g, v_t, _patches(1))
    b, _ = fa(t_g, v_t, _patches(2))
    assert not torch.allclose(a, b)


def test_a_padded_fact_slot_changes_no_other_slot():
    torch.manual_seed(0)
    fa = FusionAttention(C, heads=4, k_patches=4)
    t_g, v_t, v_r = torch.randn(1, 3, C), _patches(0)[:1], _patches(1)[:1]
    padded = torch.cat([t_g, torch.zeros(1, 2, C)], dim=1)  # two empty fact slots
    a, _ = fa(t_g, v_t, v_r)
    b, _ = fa(padded, v_t, v_r)
    assert torch.allclose(a, b[:, :3], atol=1e-6)


def test_token_padding_does_not_change_pooled_facts():
    emb = torch.randn(2, 4, C)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    pooled = pool_fact_embeddings(emb, mask)
    garbage = emb.clone()
    garbage[0, 3] = 100.0
    garbage[1, 2:] = -50.0
    assert torch.allclose(pool_fact_embeddings(garbage, mask), pooled)
    assert torch.allclose(pooled[1], emb[1, :2].mean(0))


def test_projector_shape_and_bad_configs():
    assert FactProjector(C)(torch.randn(B, L, C)).shape == (B, L, C)
    with pytest.raises(ValueError, match="divisible"):
        FusionAttention(30, heads=4)
    with pytest.raises(ValueError, match="values"):
        FusionAttention(C, values="nope")


def test_test_plus_sim_carries_the_relative_dissimilarity_at_the_features_scale():
    """With W_v reading only the appended channel and uniform attention, each fused value is the mean
    over the K patches of (1 - s_i) / mean_j(1 - s_j) · ||v_t[i]||: as big as the features themselves."""
    fa = FusionAttention(C, heads=4, k_patches=4, values="test+sim")
    with torch.no_grad():
        fa.w_k.weight.zero_()  # equal attention over the K patches
        fa.w_v.weight.zero_()
        fa.w_v.weight[:, C] = 1.0  # every output dim = the appended channel
    v_t, v_r = 30.0 * _patches(0), 30.0 * _patches(1)
    out, cmp = fa(torch.randn(B, L, C), v_t, v_r)
    d = 1 - cmp.s  # [B, P]
    rel = torch.gather(d, 1, cmp.idx) / d.mean(1, keepdim=True)  # [B, K]
    norms = torch.gather(v_t.norm(dim=-1), 1, cmp.idx)  # [B, K]
    assert torch.allclose(out[:, 0, 0], (rel * norms).mean(1), rtol=1e-4)
    assert (rel >= 1).all()  # the K least similar patches are at least as dissimilar as the mean


def test_relative_dissimilarity_is_large_on_a_local_defect_and_blind_to_feature_scale():
    ref = _patches(1)
    normal = ref + 0.05 * _patches(2)  # the same part with a little noise everywhere
    defect = normal.clone()
    defect[:, 5] = _patches(3)[:, 5]  # one patch replaced
    for v_t in (normal, defect):
        for scale in (1.0, 10.0):
            s, _ = nearest_similarity(scale * v_t, ref)
            rel = relative_dissimilarity(s, least_similar(s, 1))[:, 0, 0]  # [B]
            if v_t is normal:
                assert (rel < 5).all()
            else:
                assert (rel > 10).all()


def test_projection_adds_log_dissimilarity_after_its_layernorm():
    """The LayerNorm divides away how strongly the test differs; test+sim adds log(peak / 0.05) back afterwards."""
    proj = FactProjector(C, sim=True)
    t_s = torch.randn(B, L, C)
    low, high = proj(t_s, torch.full((B, L, 1), 2.0)), proj(t_s, torch.full((B, L, 1), 8.0))
    assert torch.allclose(high - low, proj.sim.weight[:, 0] * torch.log(torch.tensor(4.0)), atol=1e-5)
    plain = FactProjector(C)  # the paper's projection ignores it
    assert plain.sim is None and torch.equal(plain(t_s, torch.full((B, L, 1), 8.0)), plain(t_s))

def test_fact_sim_is_the_anomaly_maps_peak_for_every_fact():
    fa = FusionAttention(C, heads=4, k_patches=4, values="test+sim")
    ref = _patches(1)
    normal = ref + 0.05 * _patches(2)
    defect = normal.clone()
    defect[:, 5] = _patches(3)[:, 5]  # one patch replaced
    peaks = []
    for v_t in (normal, defect):
        _, cmp = fa(torch.randn(B, L, C), v_t, ref)
        assert cmp.fact_sim.shape == (B, L, 1)
        assert torch.allclose(cmp.fact_sim[..., 0], (1 - cmp.s).amax(1, keepdim=True).expand(B, L))
        peaks.append(cmp.fact_sim[:, 0, 0])
    assert (peaks[1] > 5 * peaks[0]).all()  # one changed patch lifts the peak, whatever the facts
    assert fa(torch.randn(B, L, C), _patches(0), None)[1].fact_sim is None  # zero-shot: nothing to compare
    assert FusionAttention(C, heads=4, k_patches=4)(torch.randn(B, L, C), normal, ref)[1].fact_sim is None
