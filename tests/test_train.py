"""`sage train sfe` / `sage train edpo` on a tiny InternVL saved to disk, and the E-DPO loss by hand.

The data is real: `sage prefs build` on a tiny MVTec-style set, `sage score mle --judge offline:sbert`
for the pairs. Multi-process and kill/resume tests run the real command in subprocesses.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import write_image, write_mask
from sage_cli.cli import run
from sage_cli.train.losses import edpo_loss, sequence_logps
from sage_cli.train.setup import epoch_batches
from tiny_models import save_tiny_internvl

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---- the loss, by hand -------------------------------------------------------------------------


def _t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_eta_zero_is_the_dpo_sigmoid_loss():
    # d = 0.1 * ((-1 - -1.5) - (-2 - -1.5)) = 0.1 * (0.5 + 0.5) = 0.1;  -log σ(0.1) = log(1 + e^-0.1)
    loss, stats = edpo_loss(_t(-1.0), _t(-2.0), _t(-1.5), _t(-1.5), _t(0.3), beta=0.1, eta=0.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.1)), abs=1e-12)  # 0.644397
    assert stats["rewards/chosen"] == pytest.approx(0.05) and stats["rewards/rejected"] == pytest.approx(-0.05)
    assert stats["rewards/accuracy"] == 1.0


def test_entropy_term_by_hand_and_larger_delta_h_raises_the_loss():
    # η·ΔH = 0.5 * 0.2 = 0.1 cancels d = 0.1 exactly: loss = log 2
    loss, stats = edpo_loss(_t(-1.0), _t(-2.0), _t(-1.5), _t(-1.5), _t(0.2), beta=0.1, eta=0.5)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12) and stats["entropy_term"] == pytest.approx(0.1)
    losses = [edpo_loss(_t(-1.0), _t(-2.0), _t(-1.5), _t(-1.5), _t(dh), 0.1, 0.5)[0].item() for dh in (0, .1, .5, 1)]
    assert losses == sorted(losses) and losses[0] < losses[-1]


def test_gradients_push_chosen_up_and_rejected_down():
    pc, pr = _t(-3.0).requires_grad_(), _t(-2.0).requires_grad_()
    edpo_loss(pc, pr, _t(-2.5), _t(-2.5), _t(0.1), 0.1, 0.5)[0].backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descent raises log π(chosen), lowers log π(rejected)


def test_sequence_logps_counts_only_labelled_tokens():
    logits = torch.zeros(1, 4, 3)  # uniform over 3 tokens; the identity as head reads them as logits
    logits[0, 1, 2] = math.log(2.0)  # position 1 predicts token 2 with p = 2/4
    labels = torch.tensor([[-100, -100, 2, 0]])  # tokens 2 and 3 are answer tokens
    sums, counts = sequence_logps(logits, torch.nn.Identity(), labels)
    assert sums.item() == pytest.approx(math.log(0.5) + math.log(1 / 3)) and counts.item() == 2


def test_verdict_weight_counts_each_answers_first_token_that_many_times():
    logits = torch.log(torch.tensor([[[0.2, 0.2, 0.6], [0.25, 0.5, 0.25], [0.5, 0.3, 0.2], [1.0, 1.0, 1.0]],
                                     [[0.1, 0.9, 0.0], [0.3, 0.25, 0.45], [0.5, 0.25, 0.25], [1.0, 1.0, 1.0]]]))
    labels = torch.tensor([[-100, 2, 1, 0],  # answer tokens 2, 1, 0: the first one is the verdict
                           [-100, -100, 1, 0]])  # answer tokens 1, 0
    plain, n = sequence_logps(logits, torch.nn.Identity(), labels)
    sums, counts = sequence_logps(logits, torch.nn.Identity(), labels, first_weight=5.0)
    first = torch.log(torch.tensor([0.6, 0.25]))  # log p of each row's first answer token (position t predicts t+1)
    assert torch.allclose(sums, plain + 4.0 * first) and counts.tolist() == [n[0] + 4.0, n[1] + 4.0]
    none = torch.full((1, 4), -100)
    s0, c0 = sequence_logps(logits[:1], torch.nn.Identity(), none, first_weight=5.0)  # no answer: nothing
    assert s0.item() == 0.0 and c0.item() == 0.0


def test_sfe_objective_equals_the_llms_own_loss():
    """The answer-positions-only head gives the cross-entropy transformers computes over full logits."""
    from sage_cli.models.sage import SageModel
    from sage_cli.train.examples import SFEExample
    from sage_cli.train.objective import Batch, SFEObjective
    from tiny_models import tiny_composed

    torch.manual_seed(0)
    model = SageModel(tiny_composed())
    bb = model.backbone
    px = torch.randn(2, 3, 56, 56)
    f_t, f_r = bb.vision_features(px), bb.vision_features(px.flip(-1))
    args = (["A widget fact here.", "Another one."], ["Is it broken?", "Where?"], ["Yes, a scratch.", "Top left."])
    facts = [[args[0][0]], [args[0][1]]]
    examples = [SFEExample(f"k{i}", Path("t.png"), Path("r.png"), q, a, f) for i, (q, a, f) in
                enumerate(zip(args[1], args[2], facts))]
    with torch.no_grad():
        ours, stats = SFEObjective(model)(Batch(examples, f_t, f_r))
        theirs = model(model.assemble(model.encode_features(f_t, f_r, facts), args[1], args[2])).loss
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5) and stats == {}


def test_zero_shot_draw_is_fixed_by_seed_step_and_micro_batch():
    from sage_cli.train.trainer import shown_zero_shot

    draws = [shown_zero_shot(0.3, 0, step, 0) for step in range(1, 1001)]
    assert 250 < sum(draws) < 350  # about the share
    assert draws == [shown_zero_shot(0.3, 0, step, 0) for step in range(1, 1001)]  # a resumed run draws the same
    assert draws != [shown_zero_shot(0.3, 1, step, 0) for step in range(1, 1001)]  # another seed, other batches
    assert not any(shown_zero_shot(0.0, 0, s, 0) for s in range(100))
    assert all(shown_zero_shot(1.0, 0, s, 0) for s in range(100))


def test_ranks_take_different_slices_of_a_seeded_order():
    r0, r1 = (epoch_batches(10, seed=0, epoch=0, batch_size=2, world=2, rank=r) for r in (0, 1))
    assert len(r0) == len(r1) == 3  # 10 examples, global batch 4: the last one wraps around
    for a, b in zip(r0[:2], r1[:2]):
        assert not set(a) & set(b)
    assert set(sum(r0, [])) | set(sum(r1, [])) == set(range(10))
    assert r0 == epoch_batches(10, 0, 0, 2, 2, 0) and r0 != epoch_batches(10, 0, 1, 2, 2, 0)


# ---- the commands -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny VLM, a tiny data set, its QA groups and its preference pairs."""
    root = tmp_path_factory.mktemp("train")
    os.environ["SAGE_CACHE"] = str(root / "cache")  # the feature cache stays in tmp (subprocesses inherit it)
    yield make_world(root, save_tiny_internvl(root / "vlm"))
    os.environ.pop("SAGE_CACHE", None)


def make_world(root, vlm) -> dict:
    """Under root: a tiny MVTec-style widget set (4 normals, 1 normal and 3 scratched tests with masks), its QA
    groups (`sage prefs build`), preference pairs (`sage score mle --judge offline:sbert`) and a facts file."""
    d = root / "data" / "widget"
    for i in range(4):
        write_image(d / f"train/good/{i:03d}.png", size=(56, 56), color=(100 + 10 * i, 100, 100))
    write_image(d / "test/good/000.png", size=(56, 56), color=(105, 100, 100))
    for i in range(3):
        write_image(d / f"test/scratch/{i:03d}.png", size=(56, 56), color=(200, 50 + 20 * i, 50))
        write_mask(d / f"ground_truth/scratch/{i:03d}_mask.png", size=(56, 56), box=(10, 10, 30, 30))
    assert run(["prefs", "build", "--from", str(root / "data"), "--out", str(root / "prefs"), "--val-frac", "0"]) == 0
    assert run(["score", "mle", str(root / "prefs/train.jsonl"), "--out", str(root / "scores"),
                "--judge", "offline:sbert"]) == 0
    facts = root / "facts.txt"  # facts_mode fe needs facts: one generic list for every image
    facts.write_text("The widget is a flat square.\nA scratch is a thin bright line.\n")
    return {"root": root, "vlm": vlm, "qa": root / "prefs/train.jsonl", "pairs": root / "scores/pairs.jsonl",
            "facts": facts}


def _sfe_args(w, out, *extra):
    return ["train", "sfe", f"model.backbone={w['vlm']}", "--train", str(w["qa"]), "--facts", str(w["facts"]),
            "--out", str(out), "train.batch_size=2", "train.log_every=1", *extra]


def _metrics(run_dir):
    last = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        last[rec["step"]] = rec  # after a resume a step may appear twice: the last line wins
    return last


@pytest.fixture(scope="module")
def sfe_run(world):
    out = world["root"] / "sfe"
    # the paper's plain cross-entropy (the sage-smol recipe weights the verdict token 10x)
    assert run(_sfe_args(world, out, "train.max_steps=30", "optim.lr=2e-2", "optim.warmup_steps=0",
                         "train.verdict_weight=1")) == 0
    return out


def test_dry_run_prints_the_plan_and_writes_nothing(world, tmp_path, capsys):
    assert run(_sfe_args(world, tmp_path / "run", "--dry-run")) == 0
    err = capsys.readouterr().err
    assert "20 training examples" in err and "adapter" in err and "10 steps" in err
    assert not (tmp_path / "run").exists()


def test_sfe_learns_and_leaves_a_checkpoint(sfe_run):
    m = _metrics(sfe_run)
    # LoRA on a 2-layer random LLM moves slowly (no bias path to the byte distribution); it must still move
    assert len(m) == 30 and m[30]["loss"] < m[1]["loss"] - 0.2
    assert (sfe_run / "checkpoint/config.json").is_file() and (sfe_run / "recipe.yaml").is_file()
    cfg = json.loads((sfe_run / "checkpoint/config.json").read_text())
    assert cfg["stage"] == "sfe" and cfg["lora"]["r"] == 16
    # trained on one list of facts: the checkpoint keeps it as its default facts (E-DPO below runs without --facts)
    assert (sfe_run / "checkpoint/facts.txt").read_text() == (sfe_run.parent / "facts.txt").read_text()
    summary = json.loads((sfe_run / "summary.json").read_text())
    assert summary["feature_cache"]["hits"] > summary["feature_cache"]["misses"] > 0


def test_full_fine_tuning_learns_fast_and_saves_the_llm(world, tmp_path):
    out = tmp_path / "full"
    assert run(_sfe_args(world, out, "lora.enabled=false", "train.max_steps=20", "optim.lr=2e-2",
                         "optim.warmup_steps=0")) == 0
    m = _metrics(out)
    assert m[20]["loss"] < 0.7 * m[1]["loss"]
    cfg = json.loads((out / "checkpoint/config.json").read_text())
    from safetensors.torch import load_file

    keys = load_file(str(out / "checkpoint/model.safetensors"))
    assert cfg["lora"] is None and any(k.startswith("llm.") and "lora_" not in k for k in keys)


def test_sfe_checkpoint_answers_through_sage_infer(world, sfe_run, capsys):
    d = world["root"] / "data/widget"
    assert run(["infer", str(d / "test/scratch/000.png"), str(d / "train/good/000.png"), "--checkpoint",
                str(sfe_run / "checkpoint"), "--json", "--max-new-tokens", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(sfe_run / "checkpoint")


def test_edpo_freezes_fusion_caches_reference_and_logs_rewards(world, sfe_run):
    from safetensors.torch import load_file

    out = world["root"] / "edpo"
    args = ["train", "edpo", f"model.backbone={world['vlm']}", "--checkpoint", str(sfe_run / "checkpoint"),
            "--train", str(world["pairs"]), "--out", str(out), "train.batch_size=2", "train.log_every=1"]
    assert run(args) == 0
    assert (out / "ref_logps-train-rank0of1.safetensors").is_file()
    m = _metrics(out)
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy", "entropy_term"} <= set(m[1])
    before, after = load_file(str(sfe_run / "checkpoint/model.safetensors")), load_file(str(out / "checkpoint/model.safetensors"))
    for k in before:
        same = torch.equal(before[k], after[k])
        assert same if k.startswith(("fusion.", "projector.")) else True
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("adapter."))
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_" in k)


@pytest.mark.parametrize("case, match", [
    ("nodata", "no training data"),
    ("nockpt", "E-DPO starts from an SFE checkpoint"),
    ("missingimg", "not found under"),
    ("malformed", "missing field 'chosen'"),
    ("used", "holds an earlier run"),
    ("weight", "train.verdict_weight must be > 0"),
    ("zeroshot-edpo", "data.zero_shot_share is for SFE only"),
    ("zeroshot-shots0", "data.zero_shot_share needs one-shot data"),
    ("accum", "fewer than train.grad_accum=20"),  # no whole step in an epoch: it would never end
])
def test_bad_input_is_one_line_and_writes_nothing(case, match, world, sfe_run, tmp_path, capsys):
    out = tmp_path / "run"
    if case == "nodata":
        args = ["train", "sfe", f"model.backbone={world['vlm']}", "--out", str(out)]
    elif case == "used":
        out = sfe_run
        args = _sfe_args(world, sfe_run)
    elif case == "weight":
        args = _sfe_args(world, out, "train.verdict_weight=0")
    elif case == "accum":
        args = _sfe_args(world, out, "train.grad_accum=20")
    elif case == "zeroshot-edpo":
        args = ["train", "edpo", f"model.backbone={world['vlm']}", "--checkpoint", str(sfe_run / "checkpoint"),
                "--train", str(world["pairs"]), "--out", str(out), "data.zero_shot_share=0.5"]
    elif case == "zeroshot-shots0":
        args = _sfe_args(world, out, "data.shots=0", "data.zero_shot_share=0.5")
    else:
        pairs = tmp_path / "pairs.jsonl"
        recs = [json.loads(line) for line in world["pairs"].read_text().splitlines()]
        if case == "missingimg":
            recs[1]["test_image"] = "widget/test/scratch/999.png"
        if case == "malformed":
            del recs[0]["chosen"]
        pairs.write_text("".join(json.dumps(r) + "\n" for r in recs))
        args = ["train", "edpo", f"model.backbone={world['vlm']}", "--train", str(pairs), "--root",
                str(world["root"] / "data"), "--out", str(out)]
        if case != "nockpt":
            args += ["--checkpoint", str(sfe_run / "checkpoint")]
    assert run(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
    if case != "used":
        assert not out.exists()


def test_zero_shot_share_shows_batches_without_their_reference(world, tmp_path):
    """Share 1 trains exactly as zero-shot data does (data.shots=0); share 0.5 is neither run."""
    steps = ["train.max_steps=6", "optim.lr=2e-2", "train.seed=3"]
    losses = {}
    for name, extra in {"one": [], "zero": ["data.shots=0"], "all": ["data.zero_shot_share=1"],
                        "half": ["data.zero_shot_share=0.5"]}.items():
        assert run(_sfe_args(world, tmp_path / name, *steps, *extra)) == 0
        losses[name] = [r["loss"] for _, r in sorted(_metrics(tmp_path / name).items())]
    assert losses["all"] == pytest.approx(losses["zero"], rel=1e-5)
    assert losses["all"] != pytest.approx(losses["one"], rel=1e-3)
    assert losses["half"] != pytest.approx(losses["one"], rel=1e-3)
    assert losses["half"] != pytest.approx(losses["zero"], rel=1e-3)


def _sage(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "sage_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_killed_run_resumes_with_the_losses_of_an_uninterrupted_one(world, tmp_path):
    steps = ["train.max_steps=60", "train.save_every=5", "train.batch_size=1"]
    full = tmp_path / "full"
    assert run(_sfe_args(world, full, *steps)) == 0
    cut = tmp_path / "cut"
    proc = _sage(*_sfe_args(world, cut, *steps)[0:], start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (cut / "state" / "step-0000010").is_dir() and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "checkpoint").exists(), "the run ended before it could be killed"
    assert run(_sfe_args(world, cut, *steps, "--resume", "auto")) == 0
    a, b = _metrics(full), _metrics(cut)
    assert sorted(a) == sorted(b) == list(range(1, 61))
    for s in a:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-5, abs=1e-6), f"step {s}"


def test_two_processes_see_different_data_and_end_equal(world, tmp_path):
    out = tmp_path / "ddp"
    proc = _sage(*_sfe_args(world, out, "train.max_steps=4"), "--accelerate-config", "cpu-2")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    r0, r1 = (json.loads((out / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert r0["weights_sha256"] == r1["weights_sha256"]
    assert r0["examples_seen"] == r1["examples_seen"] == 8
    assert not set(r0["first_examples"]) & set(r1["first_examples"])
    assert "2 process(es)" in err


def test_train_speed_measures_each_pair_in_one_run(world):
    from sage_cli.bench.train_speed import train_speed
    from sage_cli.config import load_recipe

    common = [f"model.backbone={world['vlm']}", "train.batch_size=2"]
    sfe = load_recipe("sage-smol", "sfe", common + [f"data.train={world['qa']}"])
    edpo = load_recipe("sage-smol", "edpo", common + [f"data.train={world['pairs']}"])
    res = train_speed(sfe, edpo, steps=2, warmup=1, examples=8, log=lambda m: None)
    assert {"sfe_vs_plain_step", "edpo_cached_vs_live_step", "epoch2_cache_vs_none"} <= set(res["ratios"])
    assert all(v > 0 for v in res["ratios"].values())
    assert res["sfe"]["steps"] == res["edpo_live_ref"]["steps"] == 3
    on, off = res["epochs_with_cache"], res["epochs_without_cache"]
    assert len(on["epoch_s"]) == len(off["epoch_s"]) == 2
    assert on["cache"]["hits"] > 0 and off["cache"]["hits"] == 0
    # batch 2 of 5-question groups: some micro-batches straddle two groups; the baselines run alone
    assert 1.0 <= res["sfe"]["prompts_per_batch"] <= 2.0 and res["sfe_alone"]["prompts_per_batch"] is None


@pytest.mark.slow
def test_bench_speed_train_long_prefix_end_to_end_prints_json_only():
    """`sage bench speed train --long-prefix N --json` as a user runs it (the toy data, a random long-prefix
    backbone, every comparison): stdout is the figures' JSON alone (DeepSpeed's import-time log line once
    broke it)."""
    done = subprocess.run([sys.executable, "-m", "sage_cli", "bench", "speed", "train", "--long-prefix", "64",
                           "--steps", "1", "--warmup", "0", "--examples", "4", "--json", "train.batch_size=2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    res = json.loads(done.stdout)
    assert 48 <= res["long_prefix_backbone"]["image_tokens"] <= 80, res["long_prefix_backbone"]
    assert {"sfe_shared_vs_alone_examples_per_s", "edpo_cached_vs_live_step"} <= set(res["ratios"])
    assert all(v > 0 for v in res["ratios"].values())


def test_the_long_prefix_backbone_has_the_image_tokens_asked(tmp_path):
    """`sage bench speed train --long-prefix N`: a random InternVL-shaped backbone whose test + reference
    make about N prompt tokens, loaded as any InternVL folder."""
    from sage_cli.bench.long_prefix import save_long_prefix_vlm
    from sage_cli.models.registry import load_backbone

    shape = save_long_prefix_vlm(tmp_path / "vlm", 200)
    assert (shape["image_side"], shape["image_tokens"]) == (280, 200)  # 20x20 patches -> 10x10 tokens each
    backbone = load_backbone(str(tmp_path / "vlm"))
    assert backbone.patch_grid == (10, 10)
    assert len(backbone.tokenizer("Is the flaw a fracture?")["input_ids"]) < 10  # SmolLM2's BPE, not bytes


def test_edpo_starts_from_the_shipped_checkpoint_by_name(tmp_path, capsys):
    """`--checkpoint sage-smol` names the shipped checkpoint here as it does for infer and bench."""
    from sage_cli.cli import run
    from sage_cli.defaults import PAIR

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"format": "sage-pairs/1", "group_id": "g0", "q": 0, "test_image": "crack.jpg",
                                 "reference_image": "reference.jpg", "question": "Is there any defect?",
                                 "chosen": "Yes. A crack.", "rejected": "No.", "delta_h": 0.1, "kind": "max"}) + "\n")
    rc = run(["train", "edpo", "--checkpoint", "sage-smol", "--train", str(pairs), "--root", str(PAIR), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "1 training examples" in err and "fusion" in err
    assert "facts: the start checkpoint's default facts" in err  # no --facts: its facts.txt, shown in the plan
