"""`sage models convert`: a tiny random InternVL2 in the remote-code `internvl_chat` layout (InternViT + mlp1 +
InternLM2 with fused wqkv, a SentencePiece tokenizer.model) built here, converted to transformers' native
InternVL layout, and checked to give the same logits as a pure-torch forward of the source tensors.

The reference forward below is written from InternVL2's published design (InternViT pre-norm blocks with
layer scale, pixel shuffle v2, mlp1; InternLM2 with grouped wqkv, rotary, SwiGLU); the source's own Python
is remote code, which neither the converter nor this test runs (the tiny folder's .py files raise).
"""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import truncate, write_image, write_mask
from sage_cli.cli import run

os.environ.setdefault("HF_HUB_OFFLINE", "1")

IMAGE, PATCH, DS = 56, 14, 0.5  # 4x4 patches -> 2x2 image tokens after the pixel shuffle
N_IMG = round((IMAGE // PATCH * DS) ** 2)
# A small BPE vocabulary: after <unk> <s> </s> and the 256 byte pieces, letters and a few merges (score = order).
NORMAL = ["▁", *"abcdefghijklmnopqrstuvwxyz.?", "th", "the", "▁c", "▁ca", "▁cat", "is", "▁is", "▁a"]
RESERVED = ["[UNUSED_0]", "[UNUSED_1]"]  # InternLM2's chat tokens sit on reserved pieces, renamed by the config
CHAT = {"[UNUSED_0]": "<|im_start|>", "[UNUSED_1]": "<|im_end|>"}
APPENDED = ["<img>", "</img>", "<IMG_CONTEXT>"]  # past the SentencePiece vocabulary, as in InternVL2-8B
BASE = 3 + 256 + len(NORMAL) + len(RESERVED)
VOCAB = BASE + len(APPENDED)
IMG_START, IMG_END, IMG_CONTEXT = BASE, BASE + 1, BASE + 2

VARIANTS = {  # InternVL2-8B's InternViT-300M (layer norm, qkv bias, last layer); InternViT-6B's (RMS norm,
    # q/k norms; InternVL-Chat-V1-5 style reads the second-to-last layer) with an LLM that has attention biases
    "300m": {"vision": {"norm_type": "layer_norm", "qkv_bias": True, "qk_normalization": False}, "bias": False,
             "select_layer": -1},
    "6b": {"vision": {"norm_type": "rms_norm", "qkv_bias": False, "qk_normalization": True}, "bias": True,
           "select_layer": -2},
}


# ---- the tiny source folder ------------------------------------------------------------------------


def _spm_model() -> bytes:
    from transformers.convert_slow_tokenizer import import_protobuf

    pb = import_protobuf()
    m = pb.ModelProto()
    P = pb.ModelProto.SentencePiece
    for piece, kind in (("<unk>", P.UNKNOWN), ("<s>", P.CONTROL), ("</s>", P.CONTROL)):
        m.pieces.add(piece=piece, score=0.0, type=kind)
    for b in range(256):
        m.pieces.add(piece=f"<0x{b:02X}>", score=0.0, type=P.BYTE)
    for i, piece in enumerate(NORMAL + RESERVED):
        m.pieces.add(piece=piece, score=-float(i), type=P.NORMAL)
    t = m.trainer_spec
    t.model_type, t.byte_fallback, t.vocab_size = pb.TrainerSpec.BPE, True, len(m.pieces)
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = 0, 1, 2, -1
    t.unk_piece, t.bos_piece, t.eos_piece = "<unk>", "<s>", "</s>"
    n = m.normalizer_spec  # InternLM2's: no dummy prefix, spaces kept and escaped
    n.name, n.add_dummy_prefix, n.remove_extra_whitespaces, n.escape_whitespaces = "identity", False, False, True
    return m.SerializeToString()


def _configs(variant: str) -> dict:
    v = VARIANTS[variant]
    vision = {"model_type": "intern_vit_6b", "architectures": ["InternVisionModel"], "hidden_size": 32,
              "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": IMAGE,
              "patch_size": PATCH, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "initializer_factor": 1.0,
              "use_flash_attn": False, "drop_path_rate": 0.0, **v["vision"]}
    llm = {"model_type": "internlm2", "architectures": ["InternLM2ForCausalLM"], "vocab_size": VOCAB,
           "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
           "rope_theta": 1000000, "rope_scaling": {"type": "dynamic", "factor": 2.0}, "bias": v["bias"],
           "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "tie_word_embeddings": False,
           "auto_map": {"AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}}
    return {"model_type": "internvl_chat", "architectures": ["InternVLChatModel"],
            "auto_map": {"AutoModel": "modeling_internvl_chat.InternVLChatModel"}, "downsample_ratio": DS,
            "force_image_size": IMAGE, "ps_version": "v2", "select_layer": v["select_layer"], "template": "internlm2-chat",
            "dynamic_image_size": True, "use_thumbnail": True, "torch_dtype": "float32",
            "vision_config": vision, "llm_config": llm}


def _weights(cfg: dict, seed: int = 0) -> dict:
    """Random tensors under the internvl_chat names (norms near 1, layer scales near 0.5)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2, center=0.0):
        return center + scale * torch.randn(*shape, generator=g)

    v, llm = cfg["vision_config"], cfg["llm_config"]
    D, L, C = v["hidden_size"], llm["hidden_size"], v["hidden_size"] * round(1 / DS) ** 2
    hd = L // llm["num_attention_heads"]
    qkv = (llm["num_attention_heads"] + 2 * llm["num_key_value_heads"]) * hd
    n_pos = (IMAGE // PATCH) ** 2 + 1
    w = {"vision_model.embeddings.class_embedding": rnd(1, 1, D),
         "vision_model.embeddings.patch_embedding.weight": rnd(D, 3, PATCH, PATCH, scale=0.05),
         "vision_model.embeddings.patch_embedding.bias": rnd(D),
         "vision_model.embeddings.position_embedding": rnd(1, n_pos, D)}
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        w |= {p + "attn.qkv.weight": rnd(3 * D, D), p + "attn.proj.weight": rnd(D, D), p + "attn.proj.bias": rnd(D),
              p + "ls1": rnd(D, center=0.5), p + "ls2": rnd(D, center=0.5),
              p + "mlp.fc1.weight": rnd(v["intermediate_size"], D), p + "mlp.fc1.bias": rnd(v["intermediate_size"]),
              p + "mlp.fc2.weight": rnd(D, v["intermediate_size"]), p + "mlp.fc2.bias": rnd(D)}
        for norm in ("norm1", "norm2"):
            w[p + f"{norm}.weight"] = rnd(D, scale=0.1, center=1.0)
            if v["norm_type"] == "layer_norm":
                w[p + f"{norm}.bias"] = rnd(D, scale=0.1)
        if v["qkv_bias"]:
            w[p + "attn.qkv.bias"] = rnd(3 * D)
        if v["qk_normalization"]:
            w[p + "attn.q_norm.weight"], w[p + "attn.k_norm.weight"] = rnd(D, center=1.0), rnd(D, center=1.0)
    w |= {"mlp1.0.weight": rnd(C, scale=0.1, center=1.0), "mlp1.0.bias": rnd(C, scale=0.1),
          "mlp1.1.weight": rnd(L, C), "mlp1.1.bias": rnd(L), "mlp1.3.weight": rnd(L, L), "mlp1.3.bias": rnd(L),
          "language_model.model.tok_embeddings.weight": rnd(VOCAB, L, scale=1.0),
          "language_model.model.norm.weight": rnd(L, scale=0.1, center=1.0),
          "language_model.output.weight": rnd(VOCAB, L)}
    for i in range(llm["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        w |= {p + "attention.wqkv.weight": rnd(qkv, L), p + "attention.wo.weight": rnd(L, L),
              p + "feed_forward.w1.weight": rnd(llm["intermediate_size"], L),
              p + "feed_forward.w3.weight": rnd(llm["intermediate_size"], L),
              p + "feed_forward.w2.weight": rnd(L, llm["intermediate_size"]),
              p + "attention_norm.weight": rnd(L, scale=0.1, center=1.0),
              p + "ffn_norm.weight": rnd(L, scale=0.1, center=1.0)}
        if llm["bias"]:
            w[p + "attention.wqkv.bias"], w[p + "attention.wo.bias"] = rnd(qkv), rnd(L)
    return w


def write_internvl_chat(path, variant: str = "300m", drop=(), extra=None, config_edit=None):
    """The tiny internvl_chat folder: config.json, two safetensors shards + index, tokenizer.model + configs,
    and remote-code .py files that fail loudly if anything imports them. Returns (path, weights)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    cfg = _configs(variant)
    if config_edit:
        config_edit(cfg)
    weights = _weights(_configs(variant))
    shards = {"model-00001-of-00002.safetensors": {}, "model-00002-of-00002.safetensors": {}}
    for k, t in {**weights, **(extra or {})}.items():
        if k not in drop:
            shards[f"model-0000{1 if k.startswith(('vision', 'mlp1')) else 2}-of-00002.safetensors"][k] = t
    for name, tensors in shards.items():
        save_file(tensors, str(path / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: n for n, ts in shards.items() for k in ts}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "tokenizer.model").write_bytes(_spm_model())
    added = {0: "<unk>", 1: "<s>", 2: "</s>", **{BASE - 2 + i: CHAT[r] for i, r in enumerate(RESERVED)},
             **{BASE + i: t for i, t in enumerate(APPENDED)}}
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "InternLM2Tokenizer", "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
        "add_eos_token": False, "model_max_length": 4096,
        "added_tokens_decoder": {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                          "normalized": False, "single_word": False} for i, t in added.items()}}))
    for py in ("modeling_internvl_chat.py", "modeling_internlm2.py", "tokenization_internlm2.py"):
        (path / py).write_text("raise RuntimeError('remote code was executed')\n")
    return path, weights


# ---- the reference forward (pure torch, straight from the source tensors) -------------------------------


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _norm(x, w, p, v):
    if v["norm_type"] == "layer_norm":
        return F.layer_norm(x, (x.shape[-1],), w[p + ".weight"], w[p + ".bias"], v["layer_norm_eps"])
    return _rms(x, w[p + ".weight"], v["layer_norm_eps"])


def ref_vision(w, cfg, pixels):
    """InternViT (CLS + patches + positions; pre-norm blocks with layer scale) up to select_layer (hidden state
    0 is the embeddings), pixel shuffle v2, mlp1."""
    v = cfg["vision_config"]
    D, H = v["hidden_size"], v["num_attention_heads"]
    x = F.conv2d(pixels, w["vision_model.embeddings.patch_embedding.weight"],
                 w["vision_model.embeddings.patch_embedding.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    b, n, _ = x.shape
    x = torch.cat([w["vision_model.embeddings.class_embedding"].expand(b, 1, D), x], 1)
    x = x + w["vision_model.embeddings.position_embedding"]
    for i in range(v["num_hidden_layers"] + 1 + cfg["select_layer"]):
        p = f"vision_model.encoder.layers.{i}."
        h = _norm(x, w, p + "norm1", v)
        qkv = F.linear(h, w[p + "attn.qkv.weight"], w.get(p + "attn.qkv.bias"))
        q, k, val = qkv.reshape(b, n + 1, 3, H, D // H).permute(2, 0, 3, 1, 4)  # 3 x [B, H, N, hd]
        if v["qk_normalization"]:  # over all heads at once
            q = _rms(q.transpose(1, 2).flatten(2), w[p + "attn.q_norm.weight"], v["layer_norm_eps"])
            k = _rms(k.transpose(1, 2).flatten(2), w[p + "attn.k_norm.weight"], v["layer_norm_eps"])
            q, k = (t.reshape(b, n + 1, H, D // H).transpose(1, 2) for t in (q, k))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), -1) @ val
        a = F.linear(a.transpose(1, 2).reshape(b, n + 1, D), w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
        x = x + a * w[p + "ls1"]
        h = _norm(x, w, p + "norm2", v)
        h = F.linear(F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])),
                     w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
        x = x + h * w[p + "ls2"]
    s = math.isqrt(n)
    x = x[:, 1:].reshape(b, s, s, D)
    # pixel shuffle, v2: [B, W, H, C] -> [B, W, H/2, 2C] -> [B, H/2, W, 2C] -> [B, H/2, W/2, 4C] -> transposed back
    x = x.reshape(b, s, s // 2, 2 * D).permute(0, 2, 1, 3).reshape(b, s // 2, s // 2, 4 * D).permute(0, 2, 1, 3)
    x = x.reshape(b, -1, 4 * D)
    x = F.layer_norm(x, (4 * D,), w["mlp1.0.weight"], w["mlp1.0.bias"], 1e-5)
    return F.linear(F.gelu(F.linear(x, w["mlp1.1.weight"], w["mlp1.1.bias"])), w["mlp1.3.weight"], w["mlp1.3.bias"])


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def ref_llm(w, cfg, embeds):
    """InternLM2: RMSNorm, wqkv unpacked per KV head, rotary (rotate-half), causal GQA, SwiGLU w2(silu(w1) * w3)."""
    c = cfg["llm_config"]
    H, KV, L = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
    hd, G, eps = L // H, H // KV, c["rms_norm_eps"]
    T = embeds.shape[1]
    inv = 1.0 / c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = torch.outer(torch.arange(T, dtype=torch.float32), inv)
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()  # [T, hd]
    mask = torch.full((T, T), float("-inf")).triu(1)
    x = embeds
    for i in range(c["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        h = _rms(x, w[p + "attention_norm.weight"], eps)
        qkv = F.linear(h, w[p + "attention.wqkv.weight"], w.get(p + "attention.wqkv.bias"))
        qkv = qkv.reshape(1, T, KV, G + 2, hd)
        q = qkv[:, :, :, :G].reshape(1, T, H, hd).transpose(1, 2)  # query head h*G + g
        k = qkv[:, :, :, -2].transpose(1, 2).repeat_interleave(G, 1)
        val = qkv[:, :, :, -1].transpose(1, 2).repeat_interleave(G, 1)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, -1) @ val
        x = x + F.linear(a.transpose(1, 2).reshape(1, T, L), w[p + "attention.wo.weight"], w.get(p + "attention.wo.bias"))
        h = _rms(x, w[p + "ffn_norm.weight"], eps)
        x = x + F.linear(F.silu(F.linear(h, w[p + "feed_forward.w1.weight"])) * F.linear(h, w[p + "feed_forward.w3.weight"]),
                         w[p + "feed_forward.w2.weight"])
    return F.linear(_rms(x, w["language_model.model.norm.weight"], eps), w["language_model.output.weight"])


def ref_logits(w, cfg, ids, pixels):
    """As InternVLChatModel.forward: the image embeddings replace the <IMG_CONTEXT> tokens' embeddings."""
    embeds = w["language_model.model.tok_embeddings.weight"][ids].clone()
    embeds[ids == IMG_CONTEXT] = ref_vision(w, cfg, pixels).reshape(-1, embeds.shape[-1])
    return ref_llm(w, cfg, embeds)


# ---- the tests ---------------------------------------------------------------------------------------


def _convert(src, out, *extra):
    return run(["models", "convert", str(src), "--out", str(out), *extra])


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def converted(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"ivl-{request.param}")
    src, weights = write_internvl_chat(root / "src", request.param)
    assert _convert(src, root / "hf") == 0
    return {"src": src, "out": root / "hf", "weights": weights, "cfg": _configs(request.param)}


def _prompt(text_ids):
    return torch.tensor([[1, IMG_START, *[IMG_CONTEXT] * N_IMG, IMG_END, *text_ids]])


def test_same_logits_for_a_prompt_with_an_image(converted):
    from transformers import InternVLForConditionalGeneration

    model, info = InternVLForConditionalGeneration.from_pretrained(
        str(converted["out"]), dtype=torch.float32, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensor
    model.eval()
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(1, 3, IMAGE, IMAGE, generator=g)
    ids = _prompt(torch.randint(3, BASE, (9,), generator=g).tolist())
    w, cfg = converted["weights"], converted["cfg"]
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=pixels).pooler_output
        assert torch.allclose(feats, ref_vision(w, cfg, pixels), atol=1e-4)  # the projected image embeddings
        text = torch.tensor([[1, *range(250, 270)]])
        assert torch.allclose(model(input_ids=text).logits, ref_llm(w, cfg, w["language_model.model.tok_embeddings.weight"][text]), atol=1e-4)
        got = model(input_ids=ids, pixel_values=pixels).logits
    want = ref_logits(w, cfg, ids, pixels)
    assert got.shape == want.shape == (1, ids.shape[1], VOCAB)
    assert (got - want).abs().max() < 1e-4


def test_config_and_tokenizer_of_the_converted_folder(converted):
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(str(converted["out"]))
    assert cfg.model_type == "internvl" and cfg.text_config.model_type == "llama"
    assert cfg.image_token_id == IMG_CONTEXT and cfg.image_seq_length == N_IMG and cfg.downsample_ratio == DS
    assert cfg.tie_word_embeddings is False and cfg.text_config.rope_parameters["rope_type"] == "dynamic"
    tok = AutoTokenizer.from_pretrained(str(converted["out"]))
    assert len(tok) == VOCAB and tok.convert_tokens_to_ids(APPENDED + ["<|im_start|>", "<|im_end|>"]) == \
        [BASE, BASE + 1, BASE + 2, BASE - 2, BASE - 1]
    def pieces(s):
        return tok.convert_ids_to_tokens(tok(s)["input_ids"])

    assert pieces("the cat") == ["<s>", "the", "▁cat"]  # BOS first, merges by score, no dummy prefix
    assert pieces("the DOG") == ["<s>", "the", "▁", "<0x44>", "<0x4F>", "<0x47>"]  # byte fallback
    assert pieces("<|im_start|>is<IMG_CONTEXT>")[1:] == ["<|im_start|>", "is", "<IMG_CONTEXT>"]
    assert tok.decode(tok("the dog is a cat?")["input_ids"], skip_special_tokens=True) == "the dog is a cat?"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    gen = json.loads((converted["out"] / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, BASE - 1]  # </s> and the chat turn's end


def test_a_source_with_tokenizer_json_converts_to_the_same_ids(converted, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    src = tmp_path / "src"
    shutil.copytree(converted["src"], src)
    (src / "tokenizer.model").unlink()
    shutil.copy(converted["out"] / "tokenizer.json", src / "tokenizer.json")
    assert _convert(src, tmp_path / "hf") == 0
    a, b = (AutoTokenizer.from_pretrained(str(p)) for p in (converted["out"], tmp_path / "hf"))
    for text in ("the cat", "the DOG <|im_start|>is<IMG_CONTEXT></img>", "ça va?"):
        assert a(text)["input_ids"] == b(text)["input_ids"]


def test_sage_loads_the_converted_folder(converted):
    from sage_cli.models.hf_vlm import InternVLBackbone
    from sage_cli.models.registry import load_backbone

    bb = load_backbone(str(converted["out"]))
    assert isinstance(bb, InternVLBackbone) and bb.patch_grid == (2, 2) and bb.hidden_size == 64
    x = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(bb.adapt(bb.vision_features(x)), ref_vision(converted["weights"], converted["cfg"], x),
                              atol=1e-4)


def test_loading_the_unconverted_folder_says_how_to_convert_it(converted):
    from sage_cli.errors import SageError
    from sage_cli.models.registry import load_backbone

    with pytest.raises(SageError, match="sage models convert"):
        load_backbone(str(converted["src"]))


def _one_line_error(capsys, match):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert "Traceback" not in err


def _edit(key, value):
    def edit(cfg):
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return edit


@pytest.mark.parametrize("case, match", [
    ("no-config", "no config.json"),
    ("bad-json", "not valid JSON"),
    ("llava", "model_type 'llava'"),
    ("native", "already in transformers' native InternVL layout"),
    ("qwen2-llm", "its LLM is 'qwen2'"),
    ("ps-v1", "ps_version 'v1'"),
    ("missing-tensor", "the source lacks 1 tensor(s) the native model needs, e.g. lm_head.weight"),
    ("extra-tensor", "'mlp1.2.weight' has no place"),
    ("shape", "shape [96, 64] does not fit the native model's [128, 64]"),
    ("wqkv", "wqkv has"),
    ("no-weights", "no model.safetensors"),
    ("no-tokenizer", "no tokenizer.json or tokenizer.model"),
    ("cut-shard", "unreadable safetensors"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, match, tmp_path, capsys):
    src = tmp_path / "src"
    kw = {"drop": {"language_model.output.weight"}} if case == "missing-tensor" else \
         {"extra": {"mlp1.2.weight": torch.zeros(2)}} if case == "extra-tensor" else \
         {"config_edit": _edit("llm_config.intermediate_size", 128)} if case == "shape" else \
         {"config_edit": _edit("llm_config.num_key_value_heads", 1)} if case == "wqkv" else {}
    write_internvl_chat(src, **kw)
    cfg = json.loads((src / "config.json").read_text())
    if case == "no-config":
        (src / "config.json").unlink()
    elif case == "bad-json":
        (src / "config.json").write_text("{not json")
    elif case in ("llava", "native"):
        (src / "config.json").write_text(json.dumps({**cfg, "model_type": case.replace("native", "internvl")}))
    elif case == "qwen2-llm":
        _edit("llm_config.model_type", "qwen2")(cfg)
        (src / "config.json").write_text(json.dumps(cfg))
    elif case == "ps-v1":
        (src / "config.json").write_text(json.dumps({**cfg, "ps_version": "v1"}))
    elif case == "no-weights":
        for f in src.glob("model*"):
            f.unlink()
    elif case == "no-tokenizer":
        (src / "tokenizer.model").unlink()
    elif case == "cut-shard":
        truncate(src / "model-00002-of-00002.safetensors")
    assert _convert(src, tmp_path / "out") == 1
    _one_line_error(capsys, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no --out, no temporary folder left


def test_out_is_refused_when_not_empty_unless_overwrite(tmp_path, capsys):
    src, _ = write_internvl_chat(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert _convert(src, out) == 1
    _one_line_error(capsys, "is not empty (--overwrite replaces it)")
    assert _convert(src, src, "--overwrite") == 1
    _one_line_error(capsys, "would replace the source folder")
    assert _convert(src, out, "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_train_sfe_with_the_internvl2_recipe_on_the_converted_folder(converted, tmp_path):
    if converted["cfg"]["vision_config"]["norm_type"] != "layer_norm":
        pytest.skip("one variant is enough for the training run")
    os.environ["SAGE_CACHE"] = str(tmp_path / "cache")
    try:
        d = tmp_path / "data" / "widget"
        for i in range(2):
            write_image(d / f"train/good/{i:03d}.png", size=(56, 56), color=(100 + 10 * i, 100, 100))
        write_image(d / "test/good/000.png", size=(56, 56), color=(105, 100, 100))
        write_image(d / "test/scratch/000.png", size=(56, 56), color=(200, 50, 50))
        write_mask(d / "ground_truth/scratch/000_mask.png", size=(56, 56), box=(10, 10, 30, 30))
        assert run(["prefs", "build", "--from", str(tmp_path / "data"), "--out", str(tmp_path / "prefs"),
                    "--val-frac", "0"]) == 0
        facts = tmp_path / "facts.txt"
        facts.write_text("The widget is a flat square.\nA scratch is a thin bright line.\n")
        out = tmp_path / "run"
        assert run(["train", "sfe", "-r", "sfe/internvl2-8b", f"model.backbone={converted['out']}",
                    "--train", str(tmp_path / "prefs/train.jsonl"), "--facts", str(facts), "--out", str(out),
                    "train.max_steps=2", "train.batch_size=1", "train.grad_accum=1", "optim.warmup_steps=0",
                    "train.precision=fp32", "train.log_every=1"]) == 0
    finally:
        os.environ.pop("SAGE_CACHE", None)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps if "loss" in s][-1] == 2 and all(math.isfinite(s["loss"]) for s in steps if "loss" in s)
    assert (out / "checkpoint/config.json").is_file()
