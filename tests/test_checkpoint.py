"""Checkpoints: save -> load gives identical outputs; wrong backbone, shapes and files fail clearly."""

import json

import pytest
import torch
from PIL import Image

from sage_cli.errors import SageError
from sage_cli.models import checkpoint
from sage_cli.models.sage import SageModel
from tiny_models import tiny_composed


def _batch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ims = [Image.fromarray((torch.rand(56, 56, 3, generator=g) * 255).byte().numpy()) for _ in range(2)]
    bb = model.backbone
    return model.build(bb.preprocess(ims[:1]), bb.preprocess(ims[1:]), ["Q?"], [["a fact."]])


def test_save_load_gives_identical_outputs(tmp_path):
    trained = SageModel(tiny_composed(seed=1), k_patches=2).eval()
    with torch.no_grad():
        for p in trained.fusion.parameters():
            p.add_(0.5)  # something a fresh model does not have
        expected = trained(_batch(trained)).logits
    out = checkpoint.save(trained, tmp_path / "ckpt", backbone="tiny")
    assert json.loads((out / "config.json").read_text())["format"] == checkpoint.FORMAT

    fresh = SageModel(tiny_composed(seed=1), k_patches=2).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(_batch(fresh)).logits, expected)
        checkpoint.load_into(fresh, out, backbone="tiny")
        assert torch.allclose(fresh(_batch(fresh)).logits, expected, atol=1e-6)


def test_only_trained_parts_are_saved(tmp_path):
    model = SageModel(tiny_composed(), k_patches=2)
    model.backbone.language_model.requires_grad_(False)
    keys = checkpoint.trained_state(model).keys()
    assert keys and all(k.split(".")[0] in ("adapter", "fusion", "projector") for k in keys)
    model.backbone.language_model.lm_head.requires_grad_(True)
    assert any(k.startswith("llm.lm_head") for k in checkpoint.trained_state(model))


def test_wrong_backbone_and_bad_files(tmp_path):
    model = SageModel(tiny_composed(), k_patches=2)
    out = checkpoint.save(model, tmp_path / "ckpt", backbone="tiny")
    with pytest.raises(SageError, match="for backbone 'tiny', not 'sage-smol'"):
        checkpoint.load_into(model, out, backbone="sage-smol")
    with pytest.raises(SageError, match="not a sage checkpoint"):
        checkpoint.load_into(model, tmp_path, backbone="tiny")
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(SageError, match="unreadable weights"):
        checkpoint.load_into(model, out, backbone="tiny")


def test_shape_mismatch_names_the_tensor(tmp_path):
    out = checkpoint.save(SageModel(tiny_composed(), k_patches=2), tmp_path / "ckpt", backbone="tiny")
    other = SageModel(tiny_composed(image_size=112), k_patches=2)  # same dims; now change the fusion
    other.fusion.w_v = torch.nn.Linear(65, 64, bias=False)
    with pytest.raises(SageError, match=r"fusion.w_v.weight has shape \(64, 64\), the model expects \(64, 65\)"):
        checkpoint.load_into(other, out, backbone="tiny")


def test_pack_halves_the_weights_and_loads_back(tmp_path):
    trained = SageModel(tiny_composed(seed=1), k_patches=2).eval()
    src = checkpoint.save(trained, tmp_path / "ckpt", backbone="tiny")
    dst = tmp_path / "packed"
    dst.mkdir()
    (dst / "MODEL_CARD.md").write_text("card")  # kept beside the weights
    checkpoint.pack(src, dst, "float16")
    assert (dst / "MODEL_CARD.md").read_text() == "card"
    assert json.loads((dst / "config.json").read_text())["dtype"] == "float16"
    assert (dst / "model.safetensors").stat().st_size < 0.6 * (src / "model.safetensors").stat().st_size
    with torch.no_grad():
        expected = trained(_batch(trained)).logits
        fresh = SageModel(tiny_composed(seed=1), k_patches=2).eval()
        checkpoint.load_into(fresh, dst, backbone="tiny")
        assert fresh.fusion.w_q.weight.dtype == torch.float32  # cast back on load
        assert torch.allclose(fresh(_batch(fresh)).logits, expected, atol=5e-2)
    with pytest.raises(SageError, match="--dtype must be"):
        checkpoint.pack(src, tmp_path / "x", "int8")


def test_resolve_names_the_shipped_checkpoint(tmp_path, monkeypatch):
    ship = tmp_path / "assets" / "sage-smol"
    monkeypatch.setattr(checkpoint, "shipped_dir", lambda: ship)
    assert checkpoint.resolve(None, None) is None  # nothing shipped: untrained sage-smol
    with pytest.raises(SageError, match="no shipped sage-smol"):
        checkpoint.resolve("sage-smol", None)
    checkpoint.save(SageModel(tiny_composed(), k_patches=2), ship, backbone="tiny")
    assert checkpoint.resolve(None, None) == str(ship)  # the default
    assert checkpoint.resolve("sage-smol", None) == str(ship)
    assert checkpoint.resolve(None, "some-backbone") is None  # a backbone alone: untrained layers
    assert checkpoint.resolve(tmp_path / "assets" / "sage-smol", None) == str(ship)
    with pytest.raises(SageError, match="checkpoint directory not found"):
        checkpoint.resolve(tmp_path / "nope", None)


def test_models_pack_command_and_its_errors(tmp_path, capsys):
    from sage_cli.cli import run

    src = checkpoint.save(SageModel(tiny_composed(), k_patches=2), tmp_path / "ckpt", backbone="tiny")
    assert run(["models", "pack", str(src), "--out", str(tmp_path / "packed")]) == 0
    assert "float16" in capsys.readouterr().out and (tmp_path / "packed" / "model.safetensors").is_file()
    for args, words in (([str(tmp_path / "nope")], "checkpoint directory not found"),
                        ([str(src), "--dtype", "int8"], "--dtype must be")):
        assert run(["models", "pack", *args, "--out", str(tmp_path / "bad")]) == 1
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_settings_round_trip_through_config_json(tmp_path):
    """Every SAGE setting a recipe's `model:` section sets is stored in config.json and rebuilds the same
    model: a setting added to SageModel but not to SETTINGS/settings() would fail here."""
    import dataclasses
    import inspect

    from sage_cli.config import ModelConfig

    assert set(SageModel.SETTINGS) == set(inspect.signature(SageModel).parameters) - {"backbone"}
    assert set(SageModel.SETTINGS) <= {f.name for f in dataclasses.fields(ModelConfig)}
    odd = {"facts_mode": "hard", "num_facts": 3, "k_patches": 2, "fusion_heads": 2, "fusion_values": "test+sim",
           "peak_hint": True}  # none of them the default
    assert set(odd) == set(SageModel.SETTINGS)
    model = SageModel(tiny_composed(), **odd)
    assert model.settings() == odd
    out = checkpoint.save(model, tmp_path / "ckpt", backbone="tiny")
    assert checkpoint.read_config(out)["sage"] == odd
    assert SageModel(tiny_composed(), **checkpoint.read_config(out)["sage"]).settings() == odd
