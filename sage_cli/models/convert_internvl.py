"""The published InternVL2 folders (`internvl_chat`, remote code) -> transformers' native InternVL layout.

OpenGVLab/InternVL2-8B ships as remote code: InternViT + an MLP projector `mlp1` + an InternLM2 decoder
whose attention is one fused `wqkv`. transformers' `InternVLForConditionalGeneration` holds the same
network with other names: `InternVLVisionModel`, `multi_modal_projector`, and for InternLM2 a Llama
decoder. `convert` reads the folder's config.json and safetensors as data (its Python is never run),
renames every tensor, splits the fused projections, checks each against the native model built on the
meta device, and writes a folder `load_hf_vlm` (and `from_pretrained`) reads.

Tensors keep their dtype and are converted one source shard at a time (peak memory about one shard).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from sage_cli.atomic import swap_in_dir
from sage_cli.errors import SageError, require

LLM_TYPES = ("internlm2",)  # the decoders whose names and fused wqkv this module maps
IMAGE_TOKEN = "<IMG_CONTEXT>"
CHAT_END = "<|im_end|>"
# InternVL's conversation templates that are ChatML (<|im_start|>role\n...<|im_end|>\n).
CHATML_TEMPLATES = ("internlm2-chat", "Hermes-2", "internvl2_5")
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# (source name, native name, how to split). "{}" in a split target takes q, k, v.
_V, _T = "model.vision_tower.", "model.language_model."
RULES = [
    (r"vision_model\.embeddings\.class_embedding", _V + "embeddings.cls_token", None),
    (r"vision_model\.embeddings\.patch_embedding\.(weight|bias)", _V + r"embeddings.patch_embeddings.projection.\1", None),
    (r"vision_model\.embeddings\.position_embedding", _V + "embeddings.position_embeddings", None),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)", _V + r"encoder.layer.\1.attention.{}_proj.\2", "vit"),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.(weight|bias)", _V + r"encoder.layer.\1.attention.projection_layer.\2", None),
    (r"vision_model\.encoder\.layers\.(\d+)\.attn\.([qk]_norm)\.weight", _V + r"encoder.layer.\1.attention.\2.weight", None),
    (r"vision_model\.encoder\.layers\.(\d+)\.norm1\.(weight|bias)", _V + r"encoder.layer.\1.layernorm_before.\2", None),
    (r"vision_model\.encoder\.layers\.(\d+)\.norm2\.(weight|bias)", _V + r"encoder.layer.\1.layernorm_after.\2", None),
    (r"vision_model\.encoder\.layers\.(\d+)\.ls([12])", _V + r"encoder.layer.\1.lambda_\2", None),
    (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", _V + r"encoder.layer.\1.mlp.\2.\3", None),
    (r"mlp1\.0\.(weight|bias)", r"model.multi_modal_projector.layer_norm.\1", None),
    (r"mlp1\.1\.(weight|bias)", r"model.multi_modal_projector.linear_1.\1", None),
    (r"mlp1\.3\.(weight|bias)", r"model.multi_modal_projector.linear_2.\1", None),
    (r"language_model\.model\.tok_embeddings\.weight", _T + "embed_tokens.weight", None),
    (r"language_model\.model\.norm\.weight", _T + "norm.weight", None),
    (r"language_model\.model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)", _T + r"layers.\1.self_attn.{}_proj.\2", "wqkv"),
    (r"language_model\.model\.layers\.(\d+)\.attention\.wo\.(weight|bias)", _T + r"layers.\1.self_attn.o_proj.\2", None),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w1\.weight", _T + r"layers.\1.mlp.gate_proj.weight", None),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w3\.weight", _T + r"layers.\1.mlp.up_proj.weight", None),
    (r"language_model\.model\.layers\.(\d+)\.feed_forward\.w2\.weight", _T + r"layers.\1.mlp.down_proj.weight", None),
    (r"language_model\.model\.layers\.(\d+)\.attention_norm\.weight", _T + r"layers.\1.input_layernorm.weight", None),
    (r"language_model\.model\.layers\.(\d+)\.ffn_norm\.weight", _T + r"layers.\1.post_attention_layernorm.weight", None),
    (r"language_model\.output\.weight", "lm_head.weight", None),
]
DROPPED = re.compile(r".*\.rotary_emb\.inv_freq")  # a buffer some exports carry; the target recomputes it
_COMPILED = [(re.compile(p), t, s) for p, t, s in RULES]


# ---- the source folder ----------------------------------------------------------------------------


def read_source(src: Path) -> dict:
    """config.json of an internvl_chat folder, checked for what the conversion relies on."""
    if not src.is_dir():
        raise SageError(f"{src}: not a folder (expected a local InternVL2 checkpoint folder)")
    path = src / "config.json"
    if not path.is_file():
        raise SageError(f"{src}: no config.json (expected a local InternVL2 checkpoint folder)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SageError(f"{path}: not valid JSON ({e})") from None
    kind = cfg.get("model_type") if isinstance(cfg, dict) else None
    if kind == "internvl":
        raise SageError(f"{src}: already in transformers' native InternVL layout; use it as the backbone directly")
    if kind != "internvl_chat":
        raise SageError(f"{src}: model_type {kind!r}; `sage models convert` reads InternVL2's internvl_chat layout")
    llm, vision = cfg.get("llm_config"), cfg.get("vision_config")
    if not isinstance(llm, dict) or not isinstance(vision, dict):
        raise SageError(f"{path}: llm_config and vision_config must both be objects")
    if llm.get("model_type") not in LLM_TYPES:
        raise SageError(f"{src}: its LLM is {llm.get('model_type')!r}; the conversion maps {', '.join(LLM_TYPES)}")
    if cfg.get("ps_version", "v1") != "v2":
        # v1 skips the last transpose of the pixel shuffle, which the native model always does
        raise SageError(f"{src}: ps_version {cfg.get('ps_version', 'v1')!r}; the native layout needs 'v2'")
    return cfg


def _need(cfg: dict, key: str, where: str):
    if key not in cfg:
        raise SageError(f"config.json lacks {where}.{key}")
    return cfg[key]


def source_shards(src: Path) -> list[str]:
    """The safetensors files holding the weights, in order."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise SageError(f"{index}: unreadable weight_map ({e})") from None
    elif (src / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise SageError(f"{src}: no model.safetensors or model.safetensors.index.json (only safetensors are read)")
    missing = [f for f in files if not (src / f).is_file()]
    if missing:
        raise SageError(f"{src}: weight file {missing[0]} is missing")
    return files


# ---- the native config ------------------------------------------------------------------------------


def vision_config(cfg: dict) -> dict:
    """InternViT's config -> InternVLVisionConfig fields (missing optional keys take InternViT's defaults)."""
    v = cfg["vision_config"]
    size = _need(v, "image_size", "vision_config")
    if cfg.get("force_image_size") not in (None, size):
        # InternViT re-interpolates its position table every call; the native model keeps it at image_size
        raise SageError(f"force_image_size {cfg['force_image_size']} differs from vision_config.image_size {size}")
    eps = v.get("layer_norm_eps", 1e-6)
    if v.get("qk_normalization") and eps != 1e-6:
        raise SageError(f"qk_normalization with layer_norm_eps {eps}: the native q/k norms use 1e-6")
    return {"hidden_size": _need(v, "hidden_size", "vision_config"),
            "num_hidden_layers": _need(v, "num_hidden_layers", "vision_config"),
            "num_attention_heads": _need(v, "num_attention_heads", "vision_config"),
            "intermediate_size": _need(v, "intermediate_size", "vision_config"),
            "patch_size": _need(v, "patch_size", "vision_config"), "image_size": size,
            "num_channels": v.get("num_channels", 3), "hidden_act": v.get("hidden_act", "gelu"),
            "norm_type": v.get("norm_type", "rms_norm"), "layer_norm_eps": eps,
            "attention_bias": v.get("qkv_bias", False), "use_qk_norm": v.get("qk_normalization", False),
            "attention_dropout": v.get("attention_dropout", 0.0),
            "layer_scale_init_value": v.get("initializer_factor", 0.1),
            "use_mean_pooling": True,  # = no final layernorm, as InternViT has none
            "use_absolute_position_embeddings": True}


def _rope(llm: dict) -> dict:
    rope = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 10000.0))}
    scaling = llm.get("rope_scaling")
    if scaling:
        kind = scaling.get("type") or scaling.get("rope_type")
        if kind not in ("linear", "dynamic"):
            raise SageError(f"llm_config.rope_scaling type {kind!r} is not one InternLM2 defines (linear, dynamic)")
        # same formulas in both: positions / factor; NTK base growth past max_position_embeddings
        rope.update(rope_type=kind, factor=float(scaling["factor"]))
    return rope


def text_config(cfg: dict) -> dict:
    """InternLM2's config -> LlamaConfig fields (missing optional keys take InternLM2Config's defaults)."""
    llm = cfg["llm_config"]
    hidden = _need(llm, "hidden_size", "llm_config")
    heads = _need(llm, "num_attention_heads", "llm_config")
    kv = llm.get("num_key_value_heads") or heads
    if hidden % heads or heads % kv:
        raise SageError(f"llm_config: hidden_size {hidden}, {heads} heads and {kv} KV heads do not divide evenly")
    return {"model_type": "llama", "vocab_size": _need(llm, "vocab_size", "llm_config"), "hidden_size": hidden,
            "intermediate_size": _need(llm, "intermediate_size", "llm_config"),
            "num_hidden_layers": _need(llm, "num_hidden_layers", "llm_config"),
            "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hidden // heads,
            "hidden_act": llm.get("hidden_act", "silu"), "rms_norm_eps": llm.get("rms_norm_eps", 1e-6),
            "max_position_embeddings": llm.get("max_position_embeddings", 2048),
            "attention_bias": llm.get("bias", True),  # InternLM2's `bias` is on wqkv and wo only
            "mlp_bias": False, "rope_parameters": _rope(llm), "tie_word_embeddings": False,
            "bos_token_id": llm.get("bos_token_id", 1), "eos_token_id": llm.get("eos_token_id", 2),
            "pad_token_id": llm.get("pad_token_id", 0)}


def native_config(cfg: dict, image_token_id: int):
    """The InternVLConfig of the converted model."""
    from transformers import InternVLConfig

    vision, text = vision_config(cfg), text_config(cfg)
    ratio = float(cfg.get("downsample_ratio", 0.5))
    grid = vision["image_size"] // vision["patch_size"]
    out = InternVLConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                         image_seq_length=round((grid * ratio) ** 2), downsample_ratio=ratio,
                         projector_hidden_act="gelu",  # mlp1's nn.GELU()
                         vision_feature_layer=cfg.get("select_layer", -1),
                         vision_feature_select_strategy="default",  # InternVL drops the CLS token
                         tie_word_embeddings=False)
    out.architectures = ["InternVLForConditionalGeneration"]
    dtype = cfg.get("torch_dtype") or cfg["llm_config"].get("torch_dtype")
    if dtype:
        out.dtype = dtype
    return out


def target_shapes(config) -> dict[str, tuple]:
    """Every tensor of the native model and its shape (built on the meta device: nothing allocated)."""
    import torch
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---- the tensors ------------------------------------------------------------------------------------


def split_wqkv(t, heads: int, kv_heads: int, head_dim: int):
    """InternLM2's fused wqkv -> (q, k, v) of Llama.

    wqkv's rows come per KV head: [kv_heads, groups + 2, head_dim] = that head's `groups` query heads,
    then its key, then its value. Query head h*groups + g uses KV head h, as in Llama's repeat_kv.
    """
    groups = heads // kv_heads
    rest = tuple(t.shape[1:])  # (hidden,) for the weight, () for a bias
    if t.shape[0] != (heads + 2 * kv_heads) * head_dim:
        raise SageError(f"wqkv has {t.shape[0]} rows, expected ({heads} + 2 x {kv_heads}) x {head_dim}")
    w = t.reshape(kv_heads, groups + 2, head_dim, *rest)
    q = w[:, :groups].reshape(heads * head_dim, *rest)      # [H * hd, hidden]
    k = w[:, groups].reshape(kv_heads * head_dim, *rest)    # [KV * hd, hidden]
    v = w[:, groups + 1].reshape(kv_heads * head_dim, *rest)
    return q, k, v


def split_vit_qkv(t):
    """InternViT's fused qkv: rows [3, heads, head_dim] -> (q, k, v), each [D, D] (or [D] for the bias)."""
    if t.shape[0] % 3:
        raise SageError(f"a vision qkv has {t.shape[0]} rows, not a multiple of 3")
    return t.chunk(3, dim=0)


def convert_tensor(key: str, t, text: dict) -> dict:
    """One source tensor -> {native name: tensor} (three for a fused projection, none for a dropped buffer)."""
    if DROPPED.fullmatch(key):
        return {}
    for pattern, target, split in _COMPILED:
        m = pattern.fullmatch(key)
        if m is None:
            continue
        name = m.expand(target)
        if split is None:
            return {name: t}
        parts = split_vit_qkv(t) if split == "vit" else split_wqkv(
            t, text["num_attention_heads"], text["num_key_value_heads"], text["head_dim"])
        # copies: safetensors refuses tensors that share one storage
        return {name.format(p): x.contiguous().clone() for p, x in zip("qkv", parts)}
    raise SageError(f"source tensor {key!r} has no place in the native InternVL layout")


def _tensors(path: Path, meta: bool = False):
    """(name, tensor) of one safetensors file; with `meta`, tensors on the meta device shaped from the header
    (nothing read). A cut or corrupt file is a one-line error."""
    import torch
    from safetensors import safe_open

    def fail(e):
        return SageError(f"{path}: unreadable safetensors ({str(e).splitlines()[0] if str(e) else type(e).__name__})")

    try:
        f = safe_open(str(path), framework="pt")
        keys = list(f.keys())
    except Exception as e:  # noqa: BLE001 - safetensors' SafetensorError, OSError
        raise fail(e) from None
    for key in keys:
        try:
            t = torch.empty(f.get_slice(key).get_shape(), device="meta") if meta else f.get_tensor(key)
        except Exception as e:  # noqa: BLE001
            raise fail(e) from None
        yield key, t


def _place(key: str, t, text: dict, shapes: dict, filled: dict, shard: str) -> dict:
    """convert_tensor + the checks: each native name known, filled once, with its shape."""
    out = convert_tensor(key, t, text)
    for new, x in out.items():
        if new not in shapes:
            raise SageError(f"source tensor {key!r} maps to {new!r}, which the native model does not have")
        if new in filled:
            raise SageError(f"two source tensors fill {new!r} (the second is {key!r})")
        if tuple(x.shape) != shapes[new]:
            raise SageError(f"{key} -> {new}: shape {list(x.shape)} does not fit the native model's {list(shapes[new])}")
        filled[new] = shard
    return out


def check_weights(src: Path, text: dict, shapes: dict[str, tuple]) -> None:
    """The whole conversion on meta tensors: every naming or shape error before a byte is written."""
    filled: dict[str, str] = {}
    for name in source_shards(src):
        for key, t in _tensors(src / name, meta=True):
            _place(key, t, text, shapes, filled, name)
    missing = sorted(set(shapes) - set(filled))
    if missing:
        raise SageError(f"the source lacks {len(missing)} tensor(s) the native model needs, e.g. {missing[0]}")


def convert_weights(src: Path, dst: Path, text: dict, shapes: dict[str, tuple], log=lambda m: None) -> None:
    """Each source shard -> one native shard of the same name, + the index when there are several."""
    from safetensors.torch import save_file

    files = source_shards(src)
    filled: dict[str, str] = {}  # native name -> the shard it went to
    total = 0
    for i, name in enumerate(files, 1):
        log(f"converting {name} ({i}/{len(files)})")
        out = {}
        for key, t in _tensors(src / name):
            out.update(_place(key, t, text, shapes, filled, name))
        total += sum(t.numel() * t.element_size() for t in out.values())
        save_file(out, str(dst / name), metadata={"format": "pt"})
        del out
    if len(files) > 1:
        (dst / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(filled.items()))}, indent=2))


# ---- the tokenizer ----------------------------------------------------------------------------------


def _json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SageError(f"{path}: not valid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def _token(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def added_tokens(src: Path, tok_cfg: dict) -> dict[int, dict]:
    """id -> {content, special} from tokenizer_config.json's added_tokens_decoder and added_tokens.json."""
    out = {int(i): {"content": _token(t), "special": t.get("special", True) if isinstance(t, dict) else True}
           for i, t in (tok_cfg.get("added_tokens_decoder") or {}).items()}
    for content, i in _json(src / "added_tokens.json").items():
        out.setdefault(int(i), {"content": content, "special": True})
    return out


def _spm_backend(model_file: Path, names: dict[int, str]):
    """A `tokenizers` backend that encodes as SentencePiece does with this .model (InternLM2Tokenizer runs
    `sp_model.encode`): BPE with byte fallback, the model's own normalizer settings."""
    require("google.protobuf", "protobuf")
    from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(model_file.read_bytes())
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise SageError(f"{model_file}: not a SentencePiece model ({type(e).__name__})") from None
    if proto.trainer_spec.model_type != 2:
        raise SageError(f"{model_file}: a SentencePiece model of type {proto.trainer_spec.model_type}; only BPE (2)")
    # pieces renamed by added_tokens_decoder (InternLM2's chat tokens sit on reserved pieces)
    vocab = {names.get(i, p.piece): i for i, p in enumerate(proto.pieces)}
    return SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)


def derive_tokenizer(src: Path, cfg: dict):
    """The source's tokenizer as a plain `tokenizers`-backed one (no remote class), same ids, + a chat template."""
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok_cfg = _json(src / "tokenizer_config.json")
    special = {**_json(src / "special_tokens_map.json"), **tok_cfg}
    added = added_tokens(src, tok_cfg)
    if (src / "tokenizer.json").is_file():
        backend = Tokenizer.from_file(str(src / "tokenizer.json"))
    elif (src / "tokenizer.model").is_file():
        backend = _spm_backend(src / "tokenizer.model", {i: a["content"] for i, a in added.items()})
    else:
        raise SageError(f"{src}: no tokenizer.json or tokenizer.model")
    for i in sorted(added):  # in id order: ids past the base vocabulary are appended one after another
        backend.add_tokens([AddedToken(added[i]["content"], special=added[i]["special"], normalized=False)])
    bos, eos = _token(special.get("bos_token")) or "<s>", _token(special.get("eos_token")) or "</s>"
    if tok_cfg.get("add_bos_token", True) and backend.token_to_id(bos) is not None:
        # InternLM2Tokenizer puts BOS before every encoded text (add_bos_token, default true)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, backend.token_to_id(bos))])
    template = tok_cfg.get("chat_template") or (CHATML if cfg.get("template") in CHATML_TEMPLATES else None)
    if not template:
        raise SageError(f"{src}: no chat_template in tokenizer_config.json and template {cfg.get('template')!r} "
                        f"is not a ChatML one ({', '.join(CHATML_TEMPLATES)})")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos,
        unk_token=_token(special.get("unk_token")), pad_token=_token(special.get("pad_token")),
        model_max_length=tok_cfg.get("model_max_length", cfg["llm_config"].get("max_position_embeddings", 2048)),
        chat_template=template)
    for i, a in sorted(added.items()):  # a gap in the added ids would shift every later one
        got = tok.convert_tokens_to_ids(a["content"])
        if got != i:
            raise SageError(f"{src}: token {a['content']!r} has id {i} in the source, {got} once converted")
    return tok


# ---- the whole folder -------------------------------------------------------------------------------


def check_out(src: Path, out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SageError(f"{out}: is a file; --out takes a folder")
    if out.resolve() == src.resolve() or out.resolve() in src.resolve().parents:
        raise SageError(f"--out {out} would replace the source folder {src}")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SageError(f"{out} is not empty (--overwrite replaces it)")


def convert(src: str | Path, out: str | Path, overwrite: bool = False, log=lambda m: None) -> Path:
    """Write `src` (an internvl_chat folder) to `out` in transformers' native InternVL layout; atomic."""
    from transformers import GenerationConfig

    src, out = Path(src).expanduser(), Path(out).expanduser()
    cfg = read_source(src)
    check_out(src, out, overwrite)
    source_shards(src)  # no weights: say so before the tokenizer's complaints
    tok = derive_tokenizer(src, cfg)
    image_token = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    if not isinstance(image_token, int) or image_token == tok.unk_token_id or image_token < 0:
        raise SageError(f"{src}: the tokenizer has no {IMAGE_TOKEN} token")
    config = native_config(cfg, image_token)
    if len(tok) > config.text_config.vocab_size:
        raise SageError(f"the tokenizer has {len(tok)} tokens, the LLM's vocabulary {config.text_config.vocab_size}")
    shapes = target_shapes(config)
    check_weights(src, config.text_config.to_dict(), shapes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        convert_weights(src, tmp, config.text_config.to_dict(), shapes, log)
        config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        stops = [config.text_config.eos_token_id]
        end = tok.convert_tokens_to_ids(CHAT_END)
        if isinstance(end, int) and end != tok.unk_token_id and end not in stops:
            stops.append(end)  # the chat model ends its turns with <|im_end|>
        GenerationConfig(bos_token_id=config.text_config.bos_token_id, eos_token_id=stops,
                         pad_token_id=config.text_config.pad_token_id).save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp made it private; the folder is meant to be shared
        swap_in_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
