"""sage_cli.bench.ad_metrics against hand-computed cases, brute force, sklearn, scipy and torch."""

import numpy as np
import pytest

from sage_cli.bench import ad_metrics as am

# Hand case for AUPRO. Image A (1x5) has two regions: R1 = pixels 0-1 (size 2), R2 = pixel 4 (size 1);
# pixels 2-3 are normal. Image B (1x8) is a normal image. Normal pixels: 2 + 8 = 10.
MASKS = [np.array([[1, 1, 0, 0, 1]], bool), np.zeros((1, 8), bool)]
MAPS = [np.array([[0.9, 0.5, 0.7, 0.2, 0.5]]), np.array([[0.8, 0.1, 0.1, 0.5, 0.1, 0.1, 0.1, 0.1]])]
# Thresholds (score >= t), their positives, and the (FPR, PRO) point:
#   t=0.9: A0 (R1)           -> FP 0, PRO (1/2 + 0)/2 = 0.25  -> (0.0, 0.25)
#   t=0.8: + B0 (normal)     -> FP 1                         -> (0.1, 0.25)
#   t=0.7: + A2 (normal)     -> FP 2                         -> (0.2, 0.25)
#   t=0.5: + A1, A4, B3 (tie between defect and normal pixels) -> FP 3, PRO 1 -> (0.3, 1.0)
#   t=0.2: + A3 -> (0.4, 1.0);  t=0.1: + the other 6 B pixels -> (1.0, 1.0)
# The curve starts at (0, 0). Area up to 0.3: 0.2 * 0.25 + 0.1 * (0.25 + 1) / 2 = 0.05 + 0.0625 = 0.1125,
# so AUPRO(0.3) = 0.1125 / 0.3 = 0.375.
# Up to 0.25: PRO(0.25) interpolates to 0.25 + 0.75 * 0.5 = 0.625; area 0.05 + 0.05 * (0.25 + 0.625) / 2
# = 0.071875, so AUPRO(0.25) = 0.071875 / 0.25 = 0.2875.
# Up to 0.15 (flat part): 0.15 * 0.25 / 0.15 = 0.25.
# Up to 1.0: 0.1125 + 0.7 * 1.0 = 0.8125.


def test_aupro_hand_case_and_fpr_limit():
    assert am.aupro(MAPS, MASKS) == pytest.approx(0.375, abs=1e-12)
    assert am.aupro(MAPS, MASKS, fpr_limit=0.25) == pytest.approx(0.2875, abs=1e-12)
    assert am.aupro(MAPS, MASKS, fpr_limit=0.15) == pytest.approx(0.25, abs=1e-12)
    assert am.aupro(MAPS, MASKS, fpr_limit=1.0) == pytest.approx(0.8125, abs=1e-12)


def test_aupro_perfect_and_inverted_maps():
    rng = np.random.default_rng(0)
    masks = [rng.random((12, 10)) < 0.2, np.zeros((12, 10), bool), rng.random((8, 8)) < 0.4]
    perfect = [np.where(k, 1.0 + rng.random(k.shape), rng.random(k.shape)) for k in masks]
    assert am.aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    inverted = [np.where(k, rng.random(k.shape), 1.0 + rng.random(k.shape)) for k in masks]
    assert am.aupro(inverted, masks) == pytest.approx(0.0, abs=1e-12)
    # A constant map is one tie group: the curve is the diagonal (0, 0)-(1, 1); 0.3 * 0.3 / 2 / 0.3.
    assert am.aupro([np.zeros(k.shape) for k in masks], masks) == pytest.approx(0.15, abs=1e-12)


def brute_aupro(maps, masks, limit):
    """Every distinct threshold in a loop, regions from scipy, piecewise-linear area up to `limit`."""
    ndimage = pytest.importorskip("scipy.ndimage", reason="the brute-force AUPRO labels regions with scipy")
    regions, normal = [], []
    for m, k in zip(maps, masks):
        lab, n = ndimage.label(k, structure=np.ones((3, 3)))
        regions += [m[lab == i] for i in range(1, n + 1)]
        normal.append(m[lab == 0])
    normal = np.concatenate(normal)
    points = [(0.0, 0.0)]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        points.append(((normal >= t).mean(), np.mean([(r >= t).mean() for r in regions])))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= limit:
            break
        if x1 > limit:
            x1, y1 = limit, y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force(seed, limit):
    rng = np.random.default_rng(seed)
    masks = [rng.random((9, 11)) < 0.15, np.zeros((7, 7), bool), rng.random((10, 6)) < 0.35]
    maps = [np.round(rng.random(k.shape) + 0.4 * k, 1) for k in masks]  # rounded: many ties
    assert am.aupro(maps, masks, fpr_limit=limit) == pytest.approx(brute_aupro(maps, masks, limit), abs=1e-12)


def test_aupro_threshold_grid():
    rng = np.random.default_rng(5)
    masks = [rng.random((10, 10)) < 0.2, np.zeros((10, 10), bool)]
    maps = [rng.integers(0, 11, k.shape).astype(float) + 3 * k for k in masks]
    maps[1][0, 0], maps[0][0, 0] = 0.0, 13.0  # scores span 0..13: a 14-point grid hits every value
    exact = am.aupro(maps, masks)
    assert am.aupro(maps, masks, num_thresholds=14) == pytest.approx(exact, abs=1e-12)
    coarse = am.aupro(maps, masks, num_thresholds=4)
    assert 0.0 <= coarse <= 1.0 and coarse != pytest.approx(exact)
    with pytest.raises(ValueError):
        am.aupro(maps, masks, num_thresholds=1)


@pytest.mark.parametrize("seed", range(5))
def test_pixel_auroc_matches_sklearn_with_ties(seed):
    metrics = pytest.importorskip("sklearn.metrics", reason="pixel AUROC is checked against scikit-learn")
    rng = np.random.default_rng(seed)
    masks = [rng.random((13, 9)) < 0.1 * (1 + seed), np.zeros((6, 17), bool), rng.random((5, 5)) < 0.5]
    maps = [np.round(rng.normal(size=k.shape) + k, 1).astype(np.float32) for k in masks]
    want = metrics.roc_auc_score(np.concatenate([k.ravel() for k in masks]),
                                 np.concatenate([m.ravel() for m in maps]))
    assert am.pixel_auroc(maps, masks) == pytest.approx(want, abs=1e-12)
    # 0/1 integer masks work as bool ones.
    assert am.pixel_auroc(maps, [k.astype(np.uint8) for k in masks]) == pytest.approx(want, abs=1e-12)


def test_pixel_auroc_hand_case():
    # Defect pixels 0.9, 0.5, 0.5 against 10 normal ones (0.8, 0.7, 0.5, 0.2, 0.1 x6):
    # 0.9 beats all 10; each 0.5 beats 7 and ties 1 (counting one half) -> (10 + 2 * 7.5) / 30.
    assert am.pixel_auroc(MAPS, MASKS) == pytest.approx(25 / 30)


def test_pixel_metrics_dict():
    out = am.pixel_metrics(MAPS, MASKS)
    assert out == {"pixel_auroc": pytest.approx(25 / 30), "aupro": pytest.approx(0.375), "images": 2,
                   "pixels": 13}
    assert am.pixel_metrics(MAPS, MASKS, fpr_limit=0.25)["aupro"] == pytest.approx(0.2875)


def brute_f1(labels, scores):
    best = (-1.0, None)
    for t in sorted(set(scores), reverse=True):
        tp = sum(1 for y, s in zip(labels, scores) if y and s >= t)
        fp = sum(1 for y, s in zip(labels, scores) if not y and s >= t)
        fn = sum(1 for y, s in zip(labels, scores) if y and s < t)
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best[0]:
            best = (f1, t)
    return best


def test_f1_max_hand_case():
    # t=0.9: F1 2/(2+0+2)=0.5; 0.8: 4/5; 0.7: 4/6; 0.4: 6/7; 0.3: 6/8 -> best 6/7 at 0.4.
    f1, thr = am.f1_max([1, 1, 0, 1, 0], [0.9, 0.8, 0.7, 0.4, 0.3])
    assert f1 == pytest.approx(6 / 7) and thr == 0.4


@pytest.mark.parametrize("seed", range(6))
def test_f1_max_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = [bool(v) for v in rng.random(40) < 0.4]
    labels[0], labels[1] = True, False
    scores = [float(v) for v in np.round(rng.random(40) + 0.3 * np.array(labels), 1)]
    f1, thr = am.f1_max(labels, scores)
    want_f1, want_thr = brute_f1(labels, scores)
    assert f1 == pytest.approx(want_f1) and thr == want_thr


def test_image_metrics_dict():
    out = am.image_metrics([1, 1, 0, 1, 0], [0.9, 0.8, 0.7, 0.4, 0.3])
    # AUROC: of the 6 (positive, negative) pairs only 0.4 < 0.7 is ranked wrong -> 5/6.
    assert out == {"auroc": pytest.approx(5 / 6), "f1_max": pytest.approx(6 / 7), "f1_threshold": 0.4,
                   "n": 5, "n_pos": 3}


def test_one_class_gives_none():
    normal = [np.zeros((4, 4), bool)] * 2
    maps = [np.random.default_rng(0).random((4, 4)) for _ in range(2)]
    assert am.pixel_auroc(maps, normal) is None
    assert am.aupro(maps, normal) is None
    all_defect = [np.ones((4, 4), bool)] * 2
    assert am.pixel_auroc(maps, all_defect) is None
    assert am.aupro(maps, all_defect) is None  # no normal pixel: FPR undefined
    assert am.pixel_metrics(maps, normal) == {"pixel_auroc": None, "aupro": None, "images": 2, "pixels": 32}
    assert am.pixel_metrics([], []) == {"pixel_auroc": None, "aupro": None, "images": 0, "pixels": 0}
    assert am.f1_max([1, 1, 1], [0.1, 0.2, 0.3]) == (None, None)
    assert am.f1_max([0, 0], [0.1, 0.2]) == (None, None)
    assert am.f1_max([], []) == (None, None)
    assert am.image_metrics([0, 0], [0.1, 0.2]) == {"auroc": None, "f1_max": None, "f1_threshold": None,
                                                     "n": 2, "n_pos": 0}


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        am.pixel_auroc([np.zeros((4, 4))], [np.zeros((4, 5), bool)])
    with pytest.raises(ValueError, match="shape"):
        am.pixel_metrics([np.zeros((16, 16))], [np.zeros((64, 64), bool)])
    with pytest.raises(ValueError, match="shape"):
        am.aupro([np.zeros((2, 4, 4))], [np.zeros((2, 4, 4), bool)])
    with pytest.raises(ValueError, match="2 maps but 1 masks"):
        am.aupro([np.zeros((4, 4))] * 2, [np.zeros((4, 4), bool)])
    with pytest.raises(ValueError, match="0/1"):
        am.pixel_auroc([np.zeros((2, 2))], [np.array([[0, 255], [0, 0]])])
    with pytest.raises(ValueError, match="NaN"):
        am.pixel_auroc([np.array([[np.nan, 0.0]])], [np.array([[True, False]])])
    with pytest.raises(ValueError, match="fpr_limit"):
        am.aupro(MAPS, MASKS, fpr_limit=0.0)
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        am.f1_max([1, 0, 1], [0.1, 0.2])
    with pytest.raises(ValueError):
        am.image_metrics([1, 0, 1], [0.1, 0.2])
    with pytest.raises(ValueError):
        am.upsample(np.zeros(16), (32, 32))
    with pytest.raises(ValueError):
        am.upsample(np.zeros((4, 4)), (0, 8))


@pytest.mark.parametrize("src,dst", [((16, 16), (256, 256)), ((16, 16), (224, 300)), ((7, 5), (33, 17)),
                                     ((4, 4), (4, 4)), ((20, 20), (7, 9)), ((1, 1), (5, 3)), ((3, 8), (1, 2))])
def test_upsample_matches_torch_bilinear(src, dst):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(sum(src + dst)).normal(size=src)
    want = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=dst, mode="bilinear",
                                           align_corners=False)[0, 0].numpy()
    got = am.upsample(x, dst)
    assert got.shape == dst
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # float32 input (what models produce) within the same tolerance.
    want32 = torch.nn.functional.interpolate(torch.from_numpy(x.astype(np.float32))[None, None], size=dst,
                                             mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(am.upsample(x.astype(np.float32), dst), want32, rtol=0, atol=1e-5)


def test_label_regions_hand_case():
    mask = np.array([[1, 0, 0, 1],
                     [0, 1, 0, 1],
                     [0, 0, 0, 0],
                     [1, 1, 0, 1]], bool)
    labels, n = am.label_regions(mask)
    # (0,0)-(1,1) join diagonally; (0,3)-(1,3) vertically; the last row holds two more regions.
    assert n == 4
    np.testing.assert_array_equal(labels, [[1, 0, 0, 2], [0, 1, 0, 2], [0, 0, 0, 0], [3, 3, 0, 4]])
    assert am.label_regions(np.zeros((3, 3), bool))[1] == 0


@pytest.mark.parametrize("density", [0.05, 0.2, 0.4, 0.55, 0.7])
def test_label_regions_matches_scipy(density):
    ndimage = pytest.importorskip("scipy.ndimage", reason="label_regions is checked against scipy")
    rng = np.random.default_rng(int(density * 100))
    for shape in [(20, 30), (1, 25), (25, 1), (9, 9)]:
        mask = rng.random(shape) < density
        labels, n = am.label_regions(mask)
        want, want_n = ndimage.label(mask, structure=np.ones((3, 3)))
        assert n == want_n
        np.testing.assert_array_equal(labels, want)


def test_pixel_metrics_equals_the_separate_functions():
    rng = np.random.default_rng(11)
    masks = [rng.random((15, 12)) < 0.2, np.zeros((15, 12), bool), rng.random((6, 9)) < 0.3]
    maps = [np.round(rng.random(k.shape) + 0.3 * k, 2) for k in masks]
    out = am.pixel_metrics(maps, masks, fpr_limit=0.2)
    assert out["pixel_auroc"] == pytest.approx(am.pixel_auroc(maps, masks), abs=1e-12)
    assert out["aupro"] == pytest.approx(am.aupro(maps, masks, fpr_limit=0.2), abs=1e-12)
    assert (out["images"], out["pixels"]) == (3, 15 * 12 * 2 + 54)
