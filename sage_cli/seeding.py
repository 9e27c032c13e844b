"""One way to make random draws repeat without touching anyone else's: a seeded block."""

from __future__ import annotations

import contextlib
import random

import torch


@contextlib.contextmanager
def seeded(seed: int):
    """torch's (CPU and every CUDA device's) and Python's RNG seeded with `seed` inside the block, and given
    back as they were after it: what the block draws (new layers' initial weights, dropout, data order)
    repeats from its seed, and a caller (a test, `sage bench speed train`, a server) keeps its own stream."""
    py = random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py)
