"""`sage models export --format peft|hf`: PEFT's adapter layout, a merged HF LLM, a Hub model card, and the
round trip back through `--checkpoint` (same answers, same P(yes)), on the tiny VLM and on sage-smol."""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from sage_cli.cli import run
from sage_cli.models import checkpoint, lora
from sage_cli.models.engine import Engine
from sage_cli.models.export_layout import peft_key, sage_key
from tiny_models import save_tiny_internvl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
Q = "Is there any defect on the test object?"


@pytest.fixture(scope="module")
def lora_ckpt(tmp_path_factory):
    """A checkpoint of the tiny InternVL with LoRA whose B matrices are not zero (so the LoRA matters)."""
    root = tmp_path_factory.mktemp("export")
    vlm = str(save_tiny_internvl(root / "vlm"))
    eng = Engine.load(vlm, None, dtype="float32", device="cpu", seed=0)
    settings = lora.apply(eng.model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in eng.model.backbone.language_model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            p.requires_grad_("lora_" in n)
    return vlm, checkpoint.save(eng.model, root / "ckpt", backbone=vlm, lora=settings)


def _pair(tmp_path):
    imgs = []
    for i, c in enumerate(((120, 80, 40), (110, 90, 50))):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (56, 56), c).save(p)
        imgs.append(Image.open(p).convert("RGB"))
    return imgs


def _answer(ckpt, tmp_path):
    eng = Engine.load(None, str(ckpt), dtype="float32", device="cpu")
    test, ref = _pair(tmp_path)
    prefix = eng.encode(test, ref, ["a fact"])
    a = eng.answer(prefix, Q, max_new_tokens=6)
    return a.text, a.p_yes


def test_keys_round_trip():
    k = "llm.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert peft_key(k) == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert sage_key(peft_key(k)) == k


@pytest.mark.parametrize("fmt", ["peft", "hf"])
def test_export_loads_back_with_the_same_answers(lora_ckpt, tmp_path, capsys, fmt):
    vlm, ckpt = lora_ckpt
    out = tmp_path / fmt
    bench = tmp_path / "bench-run"  # a finished `sage bench` run whose numbers go into the card
    bench.mkdir()
    (bench / "results.json").write_text(json.dumps({
        "results_format": "sage-bench/1", "format": "mvtec", "protocol": "sage", "config": {"shots": 1},
        "metrics": {"accuracy": {"standard": 0.75, "identification": 0.5, "diagnosis": 1.0, "average": 0.7}}}))
    assert run(["models", "export", str(ckpt), "--format", fmt, "--out", str(out), "--results", str(bench)]) == 0, \
        capsys.readouterr().err
    names = {p.name for p in out.iterdir()}
    assert {"sage.json", "sage_layers.safetensors", "README.md"} <= names
    assert names >= ({"adapter_config.json", "adapter_model.safetensors"} if fmt == "peft" else {"llm"})
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n") and f"base_model: {vlm}" in card
    assert "| bench-run | mvtec | sage | 1 | 75.0 | 50.0 | 100.0 | 70.0 |" in card
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    text, p = _answer(ckpt, tmp_path)
    text2, p2 = _answer(out, tmp_path)  # --checkpoint accepts the exported folder
    assert text2 == text and p2 == pytest.approx(p, abs=1e-5)


def test_peft_loads_the_adapter_on_the_base_llm(lora_ckpt, tmp_path, capsys):
    """PeftModel.from_pretrained(base_llm, OUT) gives the LLM sage trained: same logits."""
    from peft import PeftModel

    vlm, ckpt = lora_ckpt
    out = tmp_path / "peft"
    assert run(["models", "export", str(ckpt), "--out", str(out)]) == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    base = Engine.load(vlm, None, dtype="float32", device="cpu").model.backbone.language_model
    peft_llm = PeftModel.from_pretrained(base, str(out)).eval()
    ours = Engine.load(None, str(ckpt), dtype="float32", device="cpu").model.backbone.language_model.eval()
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        assert torch.allclose(peft_llm(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-5)


def test_export_refuses_what_it_cannot_write(tmp_path, capsys):
    assert run(["models", "export", "sage-smol", "--format", "onnx", "--out", str(tmp_path / "x")]) == 1
    assert "--format must be one of peft, hf" in capsys.readouterr().err
    assert run(["models", "export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 1
    assert "checkpoint directory not found" in capsys.readouterr().err


@pytest.mark.slow
def test_sage_smol_exports_and_loads_back(tmp_path, capsys):
    """The shipped model: the export answers as the checkpoint does, and PEFT loads its LoRA on SmolLM2."""
    from peft import PeftModel

    out = tmp_path / "smol"
    assert run(["models", "export", "sage-smol", "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "facts.txt").is_file()
    assert _answer(out, tmp_path)[0] == _answer(checkpoint.shipped_dir(), tmp_path)[0]
    base = Engine.load("sage-smol", None, dtype="float32", device="cpu").model.backbone.language_model
    peft_llm = PeftModel.from_pretrained(base, str(out)).eval()
    ours = Engine.load(None, str(checkpoint.shipped_dir()), dtype="float32", device="cpu").model.backbone.language_model
    ids = torch.tensor([[1, 504, 3213, 314, 253, 3464, 30]])
    with torch.no_grad():
        assert torch.allclose(peft_llm(input_ids=ids).logits, ours.eval()(input_ids=ids).logits, atol=1e-4)
