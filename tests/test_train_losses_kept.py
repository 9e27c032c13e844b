"""The per-step losses of a 10-step SFE run and a 10-step E-DPO run, pinned to numbers recorded once.

A change to the trainer that is meant to keep its behaviour (a refactor) must keep these numbers: same
seed, same data order, same initial weights, same arithmetic. Training on one CPU process is
bit-deterministic on one machine, so the tolerance is tight (rel 1e-5, abs 1e-7: room for a float32 sum
taken in another order, or another CPU's kernels, not for a changed step). E-DPO's later steps are the
exception (EDPO_ABS). If a change is *meant* to alter training, record the new
numbers (run with SAGE_PRINT_KEPT_LOSSES=1 and -s) and say why in the commit.

The data are written here, not built by `sage prefs build` / `sage score mle`: the numbers must not move
when those commands change their wording. Facts are one plain-text list, so the fused fact tokens of
SFE run in every step.
"""

import json
import os
import random
from pathlib import Path

import pytest
import torch

from conftest import write_widget_qa
from sage_cli.cli import run
from tiny_models import save_tiny_internvl

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REL, ABS = 1e-5, 1e-7
# E-DPO's loss and margin are differences of log-probability sums, and after its first steps Adam's
# updates amplify the last-bit differences that another CPU's kernels give (AVX2, AVX-512, AMX): the same
# 10 steps on two machines differed by up to 4e-4 in a loss and 8e-4 in a margin (SFE by 5e-6). Its
# first two steps are held to REL / ABS, the rest to EDPO_ABS, still far below what a changed step moves.
EDPO_ABS = 3e-3

# recorded from the trainer before the #21 redesign (commit 5add360), CPU, torch 2.13, float32
SFE_LOSSES = [5.644028186798096, 5.644094944000244, 5.434167385101318, 5.30360746383667, 5.291686534881592,
              5.312191009521484, 5.18882417678833, 5.165733337402344, 5.532894611358643, 5.336234092712402]
EDPO_LOSSES = [0.7372179329395294, 0.7432947158813477, 0.7733676135540009, 0.6622612178325653, 0.5832123458385468,
               1.3496066331863403, 0.5766233801841736, 0.6205092072486877, 0.5970109105110168, 0.5770874619483948]
EDPO_MARGINS = [0.0, 0.0, -0.060280418023467064, 0.1592281386256218, 0.2980722486972809, -0.7504419386386871,
                0.3534727022051811, 0.2820919156074524, 0.32274703681468964, 0.3519325330853462]
SFE_VAL_LOSS = 5.126291275024414
EDPO_VAL_LOSS = 0.5374266902605692

OPTIONS = [  # per question: the best-ranked answer first (SFE's target), the worst last
    ["Yes. There is a scratch in the upper left.", "Yes, probably.", "No, it looks fine.", "No. The surface is clean."],
    ["No. Outline and colour match the reference.", "No, it looks normal.", "Yes, a mark maybe.", "Yes. A dent."],
    ["The scratch is in the upper left.", "Upper left, I think.", "In the middle.", "There is no defect."],
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("kept")
    os.environ["SAGE_CACHE"] = str(root / "cache")  # the feature cache stays in tmp
    vlm = save_tiny_internvl(root / "vlm")
    yield {"root": root, "vlm": vlm, **write_widget_qa(root, OPTIONS)}
    os.environ.pop("SAGE_CACHE", None)


def _common(data, out):
    # the plain path, pinned: each sequence run alone, in the shuffled order of every example (the
    # shared-prefix path keeps a group's examples together; tests/test_shared_prefix.py holds it to these)
    return [f"model.backbone={data['vlm']}", "--facts", str(data["facts"]), "--root", str(data["images"]),
            "--out", str(out), "train.log_every=1", "train.max_steps=10", "optim.warmup_steps=2",
            "train.shared_prefix=false"]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _val_loss(run_dir: Path) -> float:
    return json.loads((run_dir / "summary.json").read_text())["val"]["loss"]


def _show(name, values):
    if os.environ.get("SAGE_PRINT_KEPT_LOSSES"):
        print(f"{name} = [{', '.join(repr(v) for v in values)}]")


@pytest.fixture(scope="module")
def sfe_run(data):
    out = data["root"] / "sfe"
    import rich.progress  # noqa: F401  (imported by the command; importing it draws from Python's random)

    torch.manual_seed(1234)  # the caller's own stream, which the run must give back untouched
    before = torch.get_rng_state(), random.getstate()
    # batch 2, 12 examples: an epoch is 6 steps, so the 10 steps cross into a second, reshuffled epoch
    assert run(["train", "sfe", *_common(data, out), "--train", str(data["qa"]), "--val", str(data["qa"]),
                "train.batch_size=2", "optim.lr=1e-2"]) == 0
    data["rng_kept"] = torch.equal(before[0], torch.get_rng_state()) and before[1] == random.getstate()
    return out


@pytest.fixture(scope="module")
def edpo_run(data, sfe_run):
    out = data["root"] / "edpo"
    # 2 micro-batches per step: gradient accumulation is in the pinned path too
    assert run(["train", "edpo", *_common(data, out), "--checkpoint", str(sfe_run / "checkpoint"),
                "--train", str(data["pairs"]), "--val", str(data["pairs"]), "train.batch_size=2",
                "train.grad_accum=2", "optim.lr=5e-3"]) == 0
    return out


def test_sfe_losses_are_kept(sfe_run):
    m = _metrics(sfe_run)
    _show("SFE_LOSSES", [r["loss"] for r in m])
    _show("SFE_VAL_LOSS", [_val_loss(sfe_run)])
    assert [r["step"] for r in m] == list(range(1, 11))
    assert [r["loss"] for r in m] == pytest.approx(SFE_LOSSES, rel=REL, abs=ABS)
    assert _val_loss(sfe_run) == pytest.approx(SFE_VAL_LOSS, rel=REL, abs=ABS)


def test_edpo_losses_are_kept(edpo_run):
    m = _metrics(edpo_run)
    _show("EDPO_LOSSES", [r["loss"] for r in m])
    _show("EDPO_MARGINS", [r["rewards/margins"] for r in m])
    _show("EDPO_VAL_LOSS", [_val_loss(edpo_run)])
    assert [r["step"] for r in m] == list(range(1, 11))
    losses, margins = [r["loss"] for r in m], [r["rewards/margins"] for r in m]
    assert losses[:2] == pytest.approx(EDPO_LOSSES[:2], rel=REL, abs=ABS)
    assert margins[:2] == pytest.approx(EDPO_MARGINS[:2], rel=REL, abs=1e-6)
    assert losses == pytest.approx(EDPO_LOSSES, rel=REL, abs=EDPO_ABS)
    assert margins == pytest.approx(EDPO_MARGINS, rel=REL, abs=EDPO_ABS)
    assert _val_loss(edpo_run) == pytest.approx(EDPO_VAL_LOSS, rel=REL, abs=EDPO_ABS)


def test_training_in_process_leaves_the_callers_rng_as_it_was(data, sfe_run):
    # the run seeds its own stream (new layers' weights, dropout) and gives torch's and Python's back after
    assert data["rng_kept"]
