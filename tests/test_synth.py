"""`sage data synth`: exact masks, defects on the object, size control, reproducibility, resuming, errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from sage_cli.commands.data_synth import synth
from sage_cli.data.foreground import estimate_foreground, fill_holes
from sage_cli.data.synth import (
    KINDS,
    SIZES,
    SynthOptions,
    find_normals,
    item_rng,
    make_defect,
    parse_kinds,
    parse_size,
    synthesize,
)
from sage_cli.errors import SageError

HAZELNUT_TOY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hazelnut_toy"


# ---------------------------------------------------------------------------------------------- inputs


def object_image(seed: int = 0, side: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A textured, shaded pale ellipse with a shadow on a yellow background, and its true mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    cy, cx = 0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05)
    obj = ((yy - cy) / 0.3) ** 2 + ((xx - cx) / 0.36) ** 2 <= 1
    shadow = ((yy - cy - 0.04) / 0.3) ** 2 + ((xx - cx - 0.05) / 0.36) ** 2 <= 1
    img = np.empty((side, side, 3))
    img[:] = (225, 212, 70)
    img[shadow & ~obj] = (150, 138, 40)
    shade = 1 - 0.25 * (yy - cy + xx - cx)
    img[obj] = np.array([205, 185, 140]) * shade[obj][:, None]
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), obj


def texture_image(seed: int = 0, side: int = 80) -> np.ndarray:
    """A full-frame texture: no background anywhere."""
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, (side // 8, side // 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((side, side), Image.BICUBIC))


def write_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def mvtec_root(tmp_path) -> Path:
    """widget/train/good 0-2 and widget/test/good 0 (96 px objects on yellow)."""
    root = tmp_path / "src"
    for i in range(3):
        write_png(root / "widget" / "train" / "good" / f"{i:03d}.png", object_image(i)[0])
    write_png(root / "widget" / "test" / "good" / "000.png", object_image(9)[0])
    return root


def tree_hash(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 0


def cli_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(synth)

    @app.command()
    def other() -> None:  # a second command keeps typer from collapsing the app into `synth`
        pass

    return app


# ---------------------------------------------------------------------------------------------- foreground


def test_foreground_finds_the_object_not_its_shadow():
    img, truth = object_image(1)
    fg = estimate_foreground(img)
    iou = (fg & truth).sum() / (fg | truth).sum()
    assert iou > 0.9


def test_foreground_of_a_texture_is_the_whole_frame():
    assert estimate_foreground(texture_image()).all()


def test_fill_holes():
    m = np.zeros((9, 9), bool)
    m[2:7, 2:7] = True
    m[4, 4] = False
    filled = fill_holes(m)
    assert filled[4, 4] and filled.sum() == 25


# ---------------------------------------------------------------------------------------------- generators


@pytest.mark.parametrize("kind", KINDS)
def test_mask_is_exactly_the_changed_pixels_and_on_the_object(kind):
    for seed in range(3):
        img, _ = object_image(seed)
        fg = estimate_foreground(img)
        out, mask = make_defect(img, fg, kind, item_rng(seed, "w", "x", kind, 0), 0.012, 0.6)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert mask.dtype == bool and mask.any()
        assert np.array_equal(mask, (out != img).any(axis=-1))
        assert not (mask & ~fg).any(), "a defect leaked off the object"


def test_compose_changes_every_masked_pixel():
    from sage_cli.data.synth import _compose

    img = np.full((32, 32, 3), 120, np.uint8)
    img[:, 16:] = 255  # brightening these clips: they must still change
    yy, xx = np.mgrid[0:32, 0:32]
    r = np.hypot(yy - 16, xx - 16)
    ring = ((r > 4) & (r < 10)).astype(float)  # a ring: its hole gets filled into the mask
    delta = np.repeat((ring * 40.0)[..., None], 3, axis=-1)
    delta[14:18, 14:18] = 0.4  # inside the hole: rounds to no change
    fg = np.ones((32, 32), bool)
    fg[:, :3] = False
    out, mask = _compose(img, delta, fg, soften=0)
    assert mask[16, 16], "the hole inside the ring belongs to the defect"
    assert np.array_equal(mask, (out != img).any(axis=-1))
    assert not mask[:, :3].any()


@pytest.mark.parametrize("kind", KINDS)
def test_texture_defects_are_exact_too(kind):
    img = texture_image(3)
    fg = estimate_foreground(img)
    out, mask = make_defect(img, fg, kind, item_rng(1, "t", "x", kind, 0), 0.01, 0.3)
    assert mask.any() and np.array_equal(mask, (out != img).any(axis=-1))


def test_extreme_strengths_and_saturated_pixels_keep_masks_exact():
    img, _ = object_image(4)
    img = img.copy()
    img[30:60, 30:60] = 255  # clipping must not leave masked pixels unchanged
    fg = estimate_foreground(img)
    for strength in (0.0, 1.0):
        for kind in KINDS:
            out, mask = make_defect(img, fg, kind, item_rng(2, "s", "x", kind, 0), 0.02, strength)
            assert np.array_equal(mask, (out != img).any(axis=-1)), (kind, strength)


@pytest.mark.parametrize("kind", KINDS)
def test_size_controls_area(kind):
    img, _ = object_image(5, side=128)
    fg = estimate_foreground(img)

    def area(size: str) -> float:
        lo, hi = SIZES[size]
        return float(np.mean([make_defect(img, fg, kind, item_rng(i, size, "x", kind, 0), (lo * hi) ** 0.5, 0.6)[1].mean() for i in range(3)]))

    small, large = area("small"), area("large")
    assert large > 2 * small, (small, large)


def test_same_rng_same_defect_and_seeds_differ():
    img, _ = object_image(6)
    fg = estimate_foreground(img)
    a = make_defect(img, fg, "stain", item_rng(7, "w", "x", "stain", 0), 0.01, 0.5)[0]
    b = make_defect(img, fg, "stain", item_rng(7, "w", "x", "stain", 0), 0.01, 0.5)[0]
    c = make_defect(img, fg, "stain", item_rng(8, "w", "x", "stain", 0), 0.01, 0.5)[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ---------------------------------------------------------------------------------------------- options


def test_parse_kinds_and_size():
    assert parse_kinds("all") == KINDS
    assert parse_kinds(" Crack, scratch,crack ") == ("crack", "scratch")
    assert parse_size("large") == SIZES["large"]
    assert parse_size("0.01") == (0.01, 0.01)
    assert parse_size("0.005-0.02") == (0.005, 0.02)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: parse_kinds("scrach"), ["unknown defect kind 'scrach'", "did you mean 'scratch'"]),
        (lambda: parse_kinds(","), ["names no kind"]),
        (lambda: parse_size("huge"), ["bad --size 'huge'"]),
        (lambda: parse_size("0.2-0.1"), ["0 < low <= high"]),
        (lambda: parse_size("0"), ["0 < low"]),
        (lambda: SynthOptions(strength=1.5).check(), ["--strength"]),
        (lambda: SynthOptions(per_image=0).check(), ["--per-image"]),
        (lambda: make_defect(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), bool), "hol", None, 0.01, 0.5), ["unknown defect kind 'hol'", "did you mean 'hole'"]),
    ],
)
def test_bad_options_are_one_line_errors(call, words):
    with pytest.raises(SageError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_missing_root_and_no_images(tmp_path):
    with pytest.raises(SageError, match="no such folder"):
        find_normals(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(SageError, match="no normal images found"):
        find_normals(tmp_path / "empty")


def test_plain_folder_is_one_category_with_held_out_normals(tmp_path):
    for i in range(6):
        write_png(tmp_path / "parts" / f"p{i}.png", object_image(i, side=64)[0])
    found = find_normals(tmp_path / "parts")
    assert list(found) == ["parts"]
    splits = [n.split for n in found["parts"]]
    assert splits.count("test") == 1 and splits.count("train") == 5
    assert len(find_normals(tmp_path / "parts", limit=2)["parts"]) == 2


# ---------------------------------------------------------------------------------------------- the driver


def test_layout_records_and_exact_masks_on_disk(mvtec_root, tmp_path):
    out = tmp_path / "out"
    res = synthesize(mvtec_root, out, SynthOptions(seed=3, per_image=1))
    cat = out / "widget"
    assert sorted(p.name for p in (cat / "train" / "good").iterdir()) == ["000.png", "001.png", "002.png"]
    assert [p.name for p in (cat / "test" / "good").iterdir()] == ["000.png"]
    assert {p.name for p in (cat / "test").iterdir()} == {"good", *KINDS}
    lines = [json.loads(x) for x in (out / "synth.jsonl").read_text().splitlines()]
    assert len(lines) == len(res.records) == 4 * len(KINDS)
    assert {r["kind"] for r in lines} == set(KINDS)
    for r in lines:
        assert set(r) >= {"image", "mask", "kind", "source", "source_image", "seed", "size", "strength", "bbox"}
        img, src, mask = load(out / r["image"]), load(out / r["source"]), load_mask(out / r["mask"])
        assert np.array_equal(mask, (img != src).any(axis=-1)), r["image"]
        ys, xs = np.nonzero(mask)
        assert r["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        assert not (mask & ~estimate_foreground(src)).any()
        assert r["image"].endswith(".png") and r["mask"].endswith("_mask.png")
        assert Path(r["mask"]).name == Path(r["image"]).stem + "_mask.png"
    assert json.loads((out / "synth.json").read_text())["seed"] == 3
    assert not list(out.rglob("*.tmp"))


def test_same_seed_same_bytes_via_the_command(mvtec_root, tmp_path):
    runner = CliRunner()
    hashes = []
    for name in ("a", "b"):
        out = tmp_path / name
        r = runner.invoke(cli_app(), ["synth", "--from", str(mvtec_root), "--out", str(out), "--seed", "5",
                                      "--kinds", "scratch,hole,cutpaste", "--per-image", "2", "--preview"])
        assert r.exit_code == 0, r.output
        assert (out / "preview.png").is_file()
        hashes.append(tree_hash(out))
    assert hashes[0] == hashes[1]
    assert len([k for k in hashes[0] if "/test/hole/" in k]) == 8
    r = runner.invoke(cli_app(), ["synth", "--from", str(mvtec_root), "--out", str(tmp_path / "c"), "--seed", "6",
                                  "--kinds", "scratch,hole,cutpaste", "--per-image", "2"])
    assert r.exit_code == 0
    other = tree_hash(tmp_path / "c")
    assert other["widget/test/hole/000.png"] != hashes[0]["widget/test/hole/000.png"]


def test_results_do_not_depend_on_which_kinds_or_images_run(mvtec_root, tmp_path):
    synthesize(mvtec_root, tmp_path / "all", SynthOptions(seed=1, kinds=("stain", "crack")))
    synthesize(mvtec_root, tmp_path / "one", SynthOptions(seed=1, kinds=("crack",), limit=2))
    a, b = tree_hash(tmp_path / "all"), tree_hash(tmp_path / "one")
    assert a["widget/test/crack/000.png"] == b["widget/test/crack/000.png"]


def test_rerun_resumes_and_refuses_other_settings(mvtec_root, tmp_path):
    out = tmp_path / "out"
    opts = SynthOptions(seed=2, kinds=("crack", "stain"))
    first = synthesize(mvtec_root, out, opts)
    before = tree_hash(out)
    (out / "widget" / "test" / "crack" / "001.png").unlink()  # as if interrupted
    again = synthesize(mvtec_root, out, opts)
    assert (again.written, again.skipped) == (1, len(first.records) - 1)
    assert tree_hash(out) == before

    with pytest.raises(SageError, match="other settings.*seed.*--overwrite"):
        synthesize(mvtec_root, out, SynthOptions(seed=9, kinds=("crack", "stain")))
    (out / "widget" / "test" / ".001.png.123.tmp").write_bytes(b"half a png")  # a killed run's leftover
    redo = synthesize(mvtec_root, out, SynthOptions(seed=9, kinds=("hole",)), overwrite=True)
    assert (redo.written, redo.skipped) == (4, 0)
    assert not [p for p in (out / "widget").rglob("*") if p.is_file() and "/crack/" in p.as_posix()]
    assert not list(out.rglob("*.tmp"))
    assert {json.loads(x)["kind"] for x in (out / "synth.jsonl").read_text().splitlines()} == {"hole"}


def test_refuses_a_foreign_non_empty_out(mvtec_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(SageError, match="not a synth output"):
        synthesize(mvtec_root, out, SynthOptions())
    synthesize(mvtec_root, out, SynthOptions(kinds=("stain",)), overwrite=True)
    assert (out / "mine.txt").read_text() == "keep me"


def test_command_errors_are_sage_errors(mvtec_root, tmp_path):
    runner = CliRunner()
    cases = [
        (["--from", str(tmp_path / "missing")], "no such folder"),
        (["--from", str(mvtec_root), "--kinds", "stian"], "did you mean 'stain'"),
        (["--from", str(mvtec_root), "--size", "gigantic"], "bad --size"),
        (["--from", str(mvtec_root), "--strength", "2"], "--strength"),
    ]
    for args, words in cases:
        r = runner.invoke(cli_app(), ["synth", *args, "--out", str(tmp_path / "o")])
        assert isinstance(r.exception, SageError), (args, r.output)
        assert words in str(r.exception)


def test_sage_cli_registers_the_command(mvtec_root, tmp_path, capsys):
    cli = pytest.importorskip("sage_cli.cli")
    if not hasattr(cli, "run"):
        pytest.skip("sage_cli.cli.run is not there yet")
    rc = cli.run(["data", "synth", "--from", str(mvtec_root), "--out", str(tmp_path / "o"), "--kinds", "scrach"])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "did you mean 'scratch'" in err and "\n" not in err


# ---------------------------------------------------------------------------------------------- real photos


def test_real_hazelnuts(tmp_path):
    if not (HAZELNUT_TOY / "hazelnut" / "train" / "good").is_dir():
        pytest.skip(f"real data not found: {HAZELNUT_TOY.resolve()} is missing in this checkout")
    out = tmp_path / "out"
    res = synthesize(HAZELNUT_TOY, out, SynthOptions(seed=0, image_size=128, limit=2))
    assert res.categories == {"hazelnut": 2 * len(KINDS)}
    for r in res.records:
        img, src, mask = load(out / r["image"]), load(out / r["source"]), load_mask(out / r["mask"])
        assert img.shape == (128, 128, 3)
        assert np.array_equal(mask, (img != src).any(axis=-1))
        fg = estimate_foreground(src)
        assert not (mask & ~fg).any()
        # the object is in the middle of the frame: no defect touches the image border
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
