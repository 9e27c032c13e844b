"""`sage train` on a tiny Qwen2-VL saved to disk (issue #26), with the Qwen2-VL recipes: SFE under two-process
DDP (the real command, `--accelerate-config cpu-2`), and E-DPO from an SFE checkpoint, whose reference
log-probs (computed once, up front, with SAGE's M-RoPE positions) must equal the policy's own at step 1.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from sage_cli.cli import run
from test_train import make_world
from tiny_models import save_tiny_qwen2_vl

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# 56 pixels: 4x4 ViT patches -> 2x2 merged tokens per image; fp32 on CPU, no warm-up, tiny batches
TINY = ["model.image_size=56", "train.precision=fp32", "optim.warmup_steps=0", "train.grad_accum=1",
        "train.batch_size=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny Qwen2-VL, a tiny MVTec-style set, its QA groups, preference pairs and facts."""
    root = tmp_path_factory.mktemp("qwen-train")
    os.environ["SAGE_CACHE"] = str(root / "cache")  # the feature cache stays in tmp (subprocesses inherit it)
    yield make_world(root, save_tiny_qwen2_vl(root / "vlm", "2"))
    os.environ.pop("SAGE_CACHE", None)


def _sfe_args(w, out, *extra):
    return ["train", "sfe", "-r", "sfe/qwen2-vl-7b", f"model.backbone={w['vlm']}", "--train", str(w["qa"]),
            "--facts", str(w["facts"]), "--out", str(out), *TINY, *extra]


def _metrics(run_dir):
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def sfe_run(world):
    out = world["root"] / "sfe"
    assert run(_sfe_args(world, out, "train.max_steps=3", "optim.lr=1e-3")) == 0
    return out


def test_sfe_under_two_process_ddp_sees_different_data_and_ends_equal(world, tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "sage_cli", *_sfe_args(world, out, "train.max_steps=2"),
                           "--accelerate-config", "cpu-2"], check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    r0, r1 = (json.loads((out / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert r0["weights_sha256"] == r1["weights_sha256"]  # DDP kept the replicas equal
    assert r0["examples_seen"] == r1["examples_seen"] == 4  # 2 steps x batch 2 on each rank
    assert not set(r0["first_examples"]) & set(r1["first_examples"])
    m = _metrics(out)
    assert sorted(m) == [1, 2] and all(math.isfinite(m[s]["loss"]) for s in m)
    assert (out / "checkpoint/config.json").is_file()


def test_edpo_step_starts_at_the_reference_and_trains(world, sfe_run):
    from safetensors.torch import load_file

    out = world["root"] / "edpo"
    assert run(["train", "edpo", "-r", "edpo/qwen2-vl-7b", f"model.backbone={world['vlm']}",
                "--checkpoint", str(sfe_run / "checkpoint"), "--train", str(world["pairs"]), "--out", str(out),
                *TINY, "train.max_steps=2", "optim.lr=1e-3"]) == 0
    assert (out / "ref_logps-train-rank0of1.safetensors").is_file()
    m = _metrics(out)
    assert sorted(m) == [1, 2] and all(math.isfinite(m[s]["loss"]) for s in m)
    # step 1 runs the policy before any update: it is the SFE model, so its log-probs (M-RoPE positions and
    # all) equal the cached reference ones and every reward is zero
    assert abs(m[1]["rewards/chosen"]) < 1e-4 and abs(m[1]["rewards/rejected"]) < 1e-4
    before, after = (load_file(str(p / "checkpoint/model.safetensors")) for p in (sfe_run, out))
    assert all(before[k].equal(after[k]) for k in before if k.startswith(("fusion.", "projector.")))  # frozen
    assert any(not before[k].equal(after[k]) for k in before if not k.startswith(("fusion.", "projector.")))
