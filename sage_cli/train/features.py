"""The frozen vision encoder's features of each image, computed once and kept (memory + disk).

The encoder never trains, so its output for an image is a pure function of (image bytes, encoder,
preprocessing): later epochs and stage 2 read it instead of running the encoder again. Files live
under <cache>/features/<encoder id>/<sha256>.safetensors and are written atomically.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sage_cli.atomic import replacing


def encoder_id(backbone) -> str:
    """What decides an encoder's output: its kind, name, input size and the layer read."""
    parts = [type(backbone).__name__, backbone.name, getattr(backbone, "image_size", None),
             getattr(backbone, "feature_layer", None), getattr(backbone, "vision_feature_layer", None),
             str(next(backbone.parts()["vision"].parameters()).dtype)]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


class FeatureCache:
    """`get(paths)` -> [B, N, D] features of the images at `paths`, from memory, disk or the encoder."""

    def __init__(self, backbone, root: Path | None, enabled: bool = True, memory_mb: int = 2048):
        self.backbone, self.enabled = backbone, enabled
        self.dir = Path(root) / "features" / encoder_id(backbone) if root is not None else None
        self.memory: dict[str, torch.Tensor] = {}
        self.budget = memory_mb * 2**20
        self.hits = self.misses = 0
        self._sha: dict[Path, str] = {}

    def _key(self, path: Path) -> str:
        if path not in self._sha:
            from sage_cli.facts.store import sha256_file

            self._sha[path] = sha256_file(path)
        return self._sha[path]

    @torch.no_grad()
    def get(self, paths: list[Path]) -> torch.Tensor:
        if not self.enabled:
            self.misses += len(paths)
            return self._encode(paths)
        keys = [self._key(p) for p in paths]
        out: list[torch.Tensor | None] = [self._load(k) for k in keys]
        todo = [i for i, t in enumerate(out) if t is None]
        self.hits += len(paths) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = self._encode([paths[i] for i in todo])  # [n, N, D]
            for j, i in enumerate(todo):
                out[i] = fresh[j].clone()  # not a view: the batch tensor can be freed
                self._store(keys[i], out[i])
        return torch.stack(out)  # [B, N, D] on the CPU

    def _encode(self, paths: list[Path]) -> torch.Tensor:
        from sage_cli.data.images import load_rgb

        bb = self.backbone
        pixels = bb.preprocess([load_rgb(p) for p in paths])
        device = next(bb.parts()["vision"].parameters()).device
        return bb.vision_features(pixels.to(device)).cpu()

    def _load(self, key: str) -> torch.Tensor | None:
        if key in self.memory:
            return self.memory[key]
        if self.dir is None:
            return None
        f = self.dir / f"{key}.safetensors"
        if not f.is_file():
            return None
        from safetensors.torch import load_file

        try:
            t = load_file(str(f))["features"]
        except Exception:  # a damaged file is recomputed, not trusted
            return None
        self._remember(key, t)
        return t

    def _store(self, key: str, t: torch.Tensor) -> None:
        self._remember(key, t)
        if self.dir is None:
            return
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        with replacing(self.dir / f"{key}.safetensors") as tmp:
            save_file({"features": t.contiguous()}, str(tmp))

    def _remember(self, key: str, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        if size <= self.budget:
            self.memory[key] = t
            self.budget -= size
