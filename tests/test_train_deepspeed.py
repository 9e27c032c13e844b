"""`sage train` under DeepSpeed ZeRO-2 on two CPU processes (gloo), against DDP on the same data.

DeepSpeed runs on the CPU by itself when it finds no GPU; every run is the real command in
subprocesses (`--accelerate-config cpu-2-zero2`). Skipped where deepspeed is not installed
(`make test` installs it; see the Makefile).
"""

import pytest
import torch

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install --no-build-isolation deepspeed)")

from sage_cli.config import find_accelerate_config  # noqa: E402
from test_train import _metrics, _sage, _sfe_args, world  # noqa: E402, F401  (world: the tiny VLM + data)
from test_train_fsdp import _launch, _ranks, _weights, kill_then_resume, same_data_and_losses_as_ddp  # noqa: E402

STEPS = ["train.max_steps=6", "train.save_every=3"]


@pytest.fixture(scope="module")
def runs(world):  # noqa: F811
    """The same SFE run, 2 micro-batches per step, under DDP and under ZeRO-2 (two processes each)."""
    out = {}
    for name, config in (("ddp", "cpu-2"), ("zero", "cpu-2-zero2")):
        out[name] = world["root"] / f"sfe-acc-{name}"
        out[f"{name}_err"] = _launch(_sfe_args(world, out[name], *STEPS, "train.grad_accum=2"), config)
    return out


def test_zero2_partitions_the_optimizer_states_and_ranks_agree(runs):
    assert "DeepSpeed ZeRO-2" in runs["zero_err"] and "2 process(es)" in runs["zero_err"]
    assert "each prompt runs once per micro-batch" in runs["zero_err"]  # the shared-prefix (packed) path
    r0, r1 = _ranks(runs["zero"])
    z0, z1 = r0["zero"], r1["zero"]
    # each rank's fp32 master slice (and AdamW's states, the same size) is half of the trained weights,
    # up to DeepSpeed's alignment padding
    assert z0["partition_numel"] == z1["partition_numel"] < z0["trainable_numel"]
    assert z0["trainable_numel"] <= z0["partition_numel"] + z1["partition_numel"] < z0["trainable_numel"] + 64
    assert r0["weights_sha256"] == r1["weights_sha256"]  # parameters stay whole and in step on every rank


def test_zero2_sees_the_data_and_losses_of_ddp_and_writes_the_same_checkpoint(runs):
    # 6 steps x 2 micro-batches x batch 2 per rank
    same_data_and_losses_as_ddp(runs["ddp"], runs["zero"], examples=24, steps=6)
    wa, wb = _weights(runs["ddp"] / "checkpoint"), _weights(runs["zero"] / "checkpoint")
    assert sorted(wa) == sorted(wb) and any("lora_" in k for k in wb)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    state = runs["zero"] / "state" / "step-0000003"
    assert sorted(f.name for f in state.glob("optimizer*")) == ["optimizer-rank0.pt", "optimizer-rank1.pt"]


def test_killed_zero2_run_resumes_with_the_losses_of_an_uninterrupted_one(world, runs, tmp_path):  # noqa: F811
    cut = tmp_path / "cut"
    kill_then_resume(_sfe_args(world, cut, *STEPS, "train.grad_accum=2"), "cpu-2-zero2", cut, runs["zero"], steps=6)


def test_a_state_saved_by_another_number_of_processes_is_refused(world, runs, tmp_path):  # noqa: F811
    import shutil

    run_dir = tmp_path / "moved"
    shutil.copytree(runs["zero"], run_dir)
    shutil.rmtree(run_dir / "checkpoint")
    (run_dir / "state" / "step-0000003" / "optimizer-rank1.pt").unlink()
    for later in (run_dir / "state").glob("step-*"):
        if later.name != "step-0000003":
            shutil.rmtree(later)
    proc = _sage(*_sfe_args(world, run_dir, *STEPS, "train.grad_accum=2"), "--resume", "auto",
                 "--accelerate-config", "cpu-2-zero2")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "saved by 1 DeepSpeed process(es), not 2" in err
    # one error line (both processes print it), without the launcher's traceback
    assert err.count("error: ") == 1 and "Traceback" not in err and "ChildFailedError" not in err


def test_edpo_under_zero1_matches_ddp_and_keeps_fusion_frozen(world, runs, tmp_path):  # noqa: F811
    config = tmp_path / "cpu-2-zero1.yaml"  # a config given by path, as a user would write one
    config.write_text((find_accelerate_config("cpu-2-zero2").read_text()).replace("zero_stage: 2", "zero_stage: 1"))
    start = runs["ddp"] / "checkpoint"
    out = {}
    for name, cfg in (("ddp", "cpu-2"), ("zero1", str(config))):
        out[name] = tmp_path / name
        err = _launch(["train", "edpo", f"model.backbone={world['vlm']}", "--checkpoint", str(start), "--train",
                       str(world["pairs"]), "--out", str(out[name]), "train.batch_size=2", "train.log_every=1",
                       "train.max_steps=4"], cfg)
    assert "DeepSpeed ZeRO-1: optimizer states partitioned" in err
    a, b = _metrics(out["ddp"]), _metrics(out["zero1"])
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for s in a:
        for key in ("loss", "rewards/margins", "rewards/accuracy"):
            assert b[s][key] == pytest.approx(a[s][key], abs=1e-5), f"step {s} {key}"
    before, after = _weights(start), _weights(out["zero1"] / "checkpoint")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("fusion.", "projector.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_" in k)
