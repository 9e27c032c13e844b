"""Eq. 1 comparison patches, Eq. 2 fusion attention, Eq. 9 projection, fact pooling: shapes and masking."""

import pytest
import torch

from sage_cli.models.comparison import anomaly_map, least_similar, nearest_similarity
from sage_cli.models.fusion import FactProjector, FusionAttention, pool_fact_embeddings

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
