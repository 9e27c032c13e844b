"""`sage train` with FSDP2 on two CPU processes (gloo), against DDP on the same data.

accelerate alone runs DDP when an FSDP config says use_cpu; sage shards the model itself, so these
runs check real sharding: each rank records how much of the parameters and optimizer states it holds.
Every multi-process run is the real command in subprocesses (`--accelerate-config cpu-2-fsdp`).
"""

import json
import os
import signal
import time

import psutil
import pytest
import torch

from sage_cli.cli import run
from test_train import _metrics, _sage, _sfe_args, world  # noqa: F401  (world: the module's tiny VLM + data)

STEPS = ["train.max_steps=12", "train.save_every=3"]  # 20 examples, 4 per step: crosses an epoch at step 5


def _launch(args, config):
    proc = _sage(*args, "--accelerate-config", config)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return err


def _ranks(run_dir):
    return [json.loads((run_dir / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]


def _weights(ckpt_dir):
    from safetensors.torch import load_file

    return load_file(str(ckpt_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(world):  # noqa: F811
    """The same SFE run under DDP and under FSDP (two processes each)."""
    out = {}
    for name, config in (("ddp", "cpu-2"), ("fsdp", "cpu-2-fsdp")):
        out[name] = world["root"] / f"sfe-{name}"
        out[f"{name}_err"] = _launch(_sfe_args(world, out[name], *STEPS), config)
    return out


def test_the_relay_keeps_progress_and_one_error_line_and_drops_the_launchers_report():
    import io

    from sage_cli.train.launch import relay_stderr

    r, w = os.pipe()
    os.write(w, b"sfe 1/4\rsfe 2/4\rsfe 4/4\nerror: bad input\nTraceback (most recent call last):\n"
                b"torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\nerror: bad input\n"
                b"error: another line\n")
    os.close(w)
    out = io.BytesIO()
    relay_stderr(r, out)
    os.close(r)
    assert out.getvalue() == b"sfe 1/4\rsfe 2/4\rsfe 4/4\nerror: bad input\nerror: another line\n"


def test_shipped_configs_are_found_by_name():
    from sage_cli.config import find_accelerate_config

    assert find_accelerate_config("fsdp").name == "fsdp.yaml"
    assert find_accelerate_config("cpu-2-fsdp").name == "cpu-2-fsdp.yaml"
    assert find_accelerate_config("zero2").name == "zero2.yaml"
    assert find_accelerate_config("cpu-2-zero2").name == "cpu-2-zero2.yaml"


def test_fsdp_shards_parameters_and_optimizer_states(runs):
    assert "FSDP2: 2 decoder layers" in runs["fsdp_err"] and "2 process(es)" in runs["fsdp_err"]
    assert "each prompt runs once per micro-batch" in runs["fsdp_err"]  # the shared-prefix (packed) path
    r0, r1 = _ranks(runs["fsdp"])
    f0, f1 = r0["fsdp"], r1["fsdp"]
    assert f0["sharded_params"] > 0 and f0["numel"] == f1["numel"]
    # each rank holds half of everything sharded (the tiny model's sizes are even); the vision encoder is whole
    assert f0["trainable_local_numel"] + f1["trainable_local_numel"] == f0["trainable_numel"]
    assert f0["trainable_local_numel"] < f0["trainable_numel"]
    assert f0["optimizer_local_numel"] + f1["optimizer_local_numel"] == f0["optimizer_numel"] > 0
    assert f0["whole_params"] > 0 and f0["local_numel"] < f0["numel"]
    assert r0["shard_sha256"] != r1["shard_sha256"]  # different slices of the same weights
    assert "weights_sha256" in _ranks(runs["ddp"])[0]


def same_data_and_losses_as_ddp(ddp_dir, other_dir, examples: int, steps: int) -> None:
    """Both ranks of `other_dir` saw `examples` examples each, different ones, in DDP's order, and every
    step's loss and gradient norm equal DDP's."""
    r0, r1 = _ranks(other_dir)
    assert r0["examples_seen"] == r1["examples_seen"] == examples
    assert not set(r0["first_examples"][:4]) & set(r1["first_examples"][:4])
    assert [r["first_examples"] for r in (r0, r1)] == [r["first_examples"] for r in _ranks(ddp_dir)]
    a, b = _metrics(ddp_dir), _metrics(other_dir)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for s in a:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-5), f"step {s}"
        assert b[s]["grad_norm"] == pytest.approx(a[s]["grad_norm"], rel=1e-4), f"step {s}"
        assert b[s]["lr"] == pytest.approx(a[s]["lr"]), f"step {s}"


def test_fsdp_sees_the_data_and_losses_of_ddp_and_writes_the_same_checkpoint_and_state(runs):
    same_data_and_losses_as_ddp(runs["ddp"], runs["fsdp"], examples=24, steps=12)
    # the checkpoint and the resumable state are whole tensors, as under DDP
    da, db = (runs[k] / "checkpoint" for k in ("ddp", "fsdp"))
    assert json.loads((da / "config.json").read_text()) == json.loads((db / "config.json").read_text())
    wa, wb = _weights(da), _weights(db)
    assert sorted(wa) == sorted(wb) and any("lora_" in k for k in wb)
    for k in wa:
        assert wa[k].shape == wb[k].shape and torch.allclose(wa[k], wb[k], atol=1e-6), k
    from safetensors.torch import load_file

    sa, sb = (load_file(str(runs[k] / "state/step-0000009/trained.safetensors")) for k in ("ddp", "fsdp"))
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa) and sorted(sa) == sorted(sb)
    oa, ob = (torch.load(runs[k] / "state/step-0000009/optimizer.pt", weights_only=True) for k in ("ddp", "fsdp"))
    for i, s in oa["state"].items():
        for k, v in s.items():
            assert v.shape == ob["state"][i][k].shape and torch.allclose(v, ob["state"][i][k], atol=1e-6)


def test_fsdp_checkpoint_answers_through_sage_infer(world, runs, capsys):  # noqa: F811
    d = world["root"] / "data/widget"
    ckpt = runs["fsdp"] / "checkpoint"
    assert run(["infer", str(d / "test/scratch/000.png"), str(d / "train/good/000.png"), "--checkpoint", str(ckpt),
                "--json", "--max-new-tokens", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(ckpt)


def _kill_tree(proc) -> None:
    """SIGKILL the launcher and its workers (torchrun starts each worker in a session of its own)."""
    procs = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    psutil.wait_procs(procs, timeout=30)


def kill_then_resume(args, config, run_dir, uninterrupted, steps: int, state="step-0000003") -> None:
    """Start the launched run, SIGKILL it once `state` is written, finish it with --resume auto, and
    check it ends with the losses and weights of the `uninterrupted` run."""
    proc = _sage(*args, "--accelerate-config", config)
    deadline = time.time() + 240
    while time.time() < deadline and not (run_dir / "state" / state).is_dir() and proc.poll() is None:
        time.sleep(0.02)
    _kill_tree(proc)
    assert not (run_dir / "checkpoint").exists(), "the run ended before it could be killed"
    assert "resumed from" in _launch([*args, "--resume", "auto"], config)
    a, b = _metrics(uninterrupted), _metrics(run_dir)
    assert sorted(b) == list(range(1, steps + 1))
    for s in a:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-6, abs=1e-7), f"step {s}"
    wa, wb = _weights(uninterrupted / "checkpoint"), _weights(run_dir / "checkpoint")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_killed_fsdp_run_resumes_with_the_losses_of_an_uninterrupted_one(world, runs, tmp_path):  # noqa: F811
    cut = tmp_path / "cut"
    kill_then_resume(_sfe_args(world, cut, *STEPS), "cpu-2-fsdp", cut, runs["fsdp"], steps=12)


def test_edpo_under_fsdp_matches_ddp_and_keeps_fusion_frozen(world, runs, tmp_path):  # noqa: F811
    start = runs["ddp"] / "checkpoint"
    out = {}
    for name, config in (("ddp", "cpu-2"), ("fsdp", "cpu-2-fsdp")):
        out[name] = tmp_path / name
        # the pairs as validation set too: every rank evaluates the sharded model after training
        _launch(["train", "edpo", f"model.backbone={world['vlm']}", "--checkpoint", str(start), "--train",
                 str(world["pairs"]), "--val", str(world["pairs"]), "--out", str(out[name]), "train.batch_size=2",
                 "train.log_every=1", "train.max_steps=4"], config)
    a, b = _metrics(out["ddp"]), _metrics(out["fsdp"])
    for s in a:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], abs=1e-4), f"step {s}"
    va, vb = (json.loads((out[k] / "summary.json").read_text())["val"] for k in ("ddp", "fsdp"))
    assert vb["loss"] == pytest.approx(va["loss"], abs=1e-4)
    before, after = _weights(start), _weights(out["fsdp"] / "checkpoint")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("fusion.", "projector.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_" in k)


@pytest.mark.parametrize("env, match", [
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "ZeRO stage 3 is not supported"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, "offloading (cpu)"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, "JSON config"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "set fsdp_config.fsdp_version: 2"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"}, "offloading"),
])
def test_unsupported_sharding_is_one_line_and_writes_nothing(env, match, world, tmp_path, capsys,  # noqa: F811
                                                             monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "run"
    assert run(_sfe_args(world, out)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
    assert not out.exists()
