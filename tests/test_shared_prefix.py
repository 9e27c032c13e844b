"""Shared-prefix training (train.shared_prefix, train/packing.py): the same losses and gradients as each
sequence run alone, at the cost of the tokens that differ.

Equality is checked on the objectives (one SFE group, E-DPO pairs) for the backbones' three position
schemes (Llama and Qwen2 count tokens, Qwen2-VL's M-RoPE), with LoRA and with full fine-tuning, fact
tokens on and off, on the packaged sage-smol, under 2-process DDP, and over whole runs (the per-step
losses of the shared path against the plain path on the same batches, with gradient accumulation). The
tolerance, float32 on a CPU: losses rel 1e-5; each gradient's largest difference within 1e-4 of its
largest entry (measured: ~1e-6; summing the prefix's gradient once instead of per sequence reorders
float additions, nothing more).
"""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_widget_qa
from sage_cli.models import lora
from sage_cli.models.sage import SageModel
from sage_cli.train.examples import PairExample, SFEExample, run_alone, share_prefixes
from sage_cli.train.objective import Batch, EDPOObjective, SFEObjective
from sage_cli.train.packing import branch_mask, can_pack
from sage_cli.train.setup import block_order, epoch_batches, mark_trainable
from tiny_models import noise_images, save_tiny_internvl, save_tiny_qwen2_vl, tiny_composed

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LOSS_REL, GRAD_REL = 1e-5, 1e-4
QUESTIONS = ["Is there any defect on the test object?", "Where is the defect?", "What kind of defect is it?",
             "How large is it?", "Is the part still usable?"]
FACTS = [["A widget is a flat grey square.", "A scratch is a thin bright line."], ["Dents are round shadows."]]


# ---- the layout ---------------------------------------------------------------------------------------


class _Cfg:
    def __init__(self, impl):
        self.config = type("C", (), {"_attn_implementation": impl})()


def _fake_model(impl="sdpa"):
    return type("M", (), {"backbone": type("B", (), {"language_model": _Cfg(impl)})()})()


def test_each_branch_sees_the_prefix_and_itself_causally():
    seg = torch.tensor([[0, 0, 1, 1, 2, 2, 2, -1]])  # prefix of 2, branches of 2 and 3 tokens, padding
    m = branch_mask(seg, _fake_model(), torch.float32)[0, 0]  # [T, T]
    assert m.dtype == torch.bool
    assert m[3].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # branch 1's second token: prefix + itself
    assert m[4].tolist() == [1, 1, 0, 0, 1, 0, 0, 0]  # branch 2's first token: never branch 1
    assert m[6].tolist() == [1, 1, 0, 0, 1, 1, 1, 0]
    assert m.any(-1).all()  # no empty row (padding sees itself): SDPA stays finite
    eager = branch_mask(seg, _fake_model("eager"), torch.float32)[0, 0]
    assert eager.dtype == torch.float32 and ((eager == 0) == m).all()
    assert not can_pack(_fake_model("flash_attention_2"))  # flash kernels take no 4-D mask: the plain path


def test_share_prefixes_puts_a_groups_examples_and_a_questions_pairs_together():
    pairs = [PairExample(f"g{g}:{q}:{k}", Path(f"t{g}.png"), Path("r.png"), f"q{q}", "yes", "no", 0.1, k, [])
             for k in ("min", "max") for q in range(2) for g in range(2)]
    out = share_prefixes(pairs)
    assert [e.key for e in out] == ["g0:0:min", "g0:0:max", "g0:1:min", "g0:1:max",
                                    "g1:0:min", "g1:0:max", "g1:1:min", "g1:1:max"]
    assert len({e.prefix for e in out}) == 2 and out[0].prefix == out[3].prefix != out[4].prefix
    other_facts = copy.copy(out[0])
    other_facts.facts = ["A fact."]
    assert share_prefixes([other_facts])[0].prefix != out[0].prefix  # facts are part of the prefix
    run_alone(out)
    assert all(e.prefix is None for e in out)


def test_the_shuffle_moves_whole_micro_batches_of_consecutive_examples():
    g = torch.Generator().manual_seed(0)
    order = block_order(10, 4, g)
    assert sorted(order) == list(range(10)) and order[-2:] == [8, 9]  # the short run goes last
    runs = [order[:4], order[4:8]]
    assert all(r == list(range(r[0], r[0] + 4)) and r[0] % 4 == 0 for r in runs)
    r0, r1 = (epoch_batches(16, 0, 0, 2, 2, rank, block=2) for rank in (0, 1))
    assert all(b[1] == b[0] + 1 and b[0] % 2 == 0 for b in r0 + r1)  # each micro-batch one run
    assert not set(sum(r0, [])) & set(sum(r1, []))  # data-parallel ranks still see different examples
    assert epoch_batches(16, 0, 1, 2, 2, 0, block=2) != r0  # reshuffled every epoch
    assert epoch_batches(10, 0, 0, 2, 2, 0) == epoch_batches(10, 0, 0, 2, 2, 0, block=1)  # block 1: as before


# ---- loss and gradients equal to each sequence run alone ----------------------------------------------


def _trainable(model, stage: str, use_lora: bool):
    """What build_model trains: adapter (+ fusion and projection in SFE) and the LLM (LoRA or whole)."""
    if use_lora:
        lora.apply(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                       "gate_proj", "up_proj", "down_proj"])
    mark_trainable(model, stage, lora_on=use_lora)
    return model


def _sfe_examples(n_groups=2, facts=True, zero_shot=False):
    exs = [SFEExample(f"g{g}:{q}", Path(f"t{g}.png"), None if zero_shot else Path(f"r{g}.png"), question,
                      f"Yes. A scratch {g} in the upper left, question {q}.", FACTS[g] if facts else [])
           for g in range(n_groups) for q, question in enumerate(QUESTIONS[: 5 - g])]
    return share_prefixes(exs)


def _pair_examples(facts=True):
    """Group 0: the ΔH_min and ΔH_max pairs of one question and a pair of another; group 1: one pair."""
    spec = [(0, 0, "min"), (0, 0, "max"), (0, 1, "max"), (1, 2, "min")]
    exs = [PairExample(f"g{g}:{q}:{k}", Path(f"t{g}.png"), Path(f"r{g}.png"), QUESTIONS[q],
                       f"Yes. A {k} scratch in the upper left.", "No, it is fine.", 0.1 + 0.2 * q, k,
                       FACTS[g] if facts else [])
           for g, q, k in spec]
    return share_prefixes(exs)


def _features(model, exs, seed=0, size=(56, 56)):
    """f_t, f_r [B, N, D] of each example's (noise) images, the same images for the same file name."""
    bb = model.backbone
    names = sorted({e.test.name for e in exs})
    with torch.no_grad():
        t = bb.vision_features(bb.preprocess(noise_images(len(names), seed, size)))
        r = bb.vision_features(bb.preprocess(noise_images(len(names), seed + 1, size)))
    at = [names.index(e.test.name) for e in exs]
    return t[at], (r[at] if exs[0].reference is not None else None)


def _loss_and_grads(objective, batch):
    objective.model.zero_grad(set_to_none=True)
    loss, _ = objective(batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in objective.model.named_parameters() if p.grad is not None}


def assert_same_as_alone(objective, exs, f_t, f_r, ref=None):
    """Loss and every trainable parameter's gradient: shared prefix vs each sequence alone."""
    alone = [copy.copy(e) for e in exs]
    run_alone(alone)
    shared_loss, shared = _loss_and_grads(objective, Batch(exs, f_t, f_r, ref))
    alone_loss, plain = _loss_and_grads(objective, Batch(alone, f_t, f_r, ref))
    trainable = {n for n, p in objective.model.named_parameters() if p.requires_grad}
    assert set(shared) == set(plain) and trainable <= set(plain) | _unused(objective.model)
    assert shared_loss == pytest.approx(alone_loss, rel=LOSS_REL)
    for name, g in plain.items():
        scale = g.abs().max().clamp(min=1e-12)
        assert (shared[name] - g).abs().max() <= GRAD_REL * scale, name
    return shared_loss


def _unused(model):
    """Parameters no loss reads here (fusion / projection without fact tokens)."""
    return {n for n, _ in model.named_parameters() if n.startswith(("fusion.", "projector."))}


def _tiny(facts_mode="fe", peak_hint=True):
    torch.manual_seed(0)
    return SageModel(tiny_composed(), facts_mode=facts_mode, fusion_values="test+sim", peak_hint=peak_hint)


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("facts", [True, False], ids=["facts", "no-facts"])
def test_sfe_group_equals_its_questions_alone(use_lora, facts):
    model = _trainable(_tiny("fe" if facts else "none"), "sfe", use_lora)
    exs = _sfe_examples(facts=facts)
    assert_same_as_alone(SFEObjective(model, verdict_weight=4.0), exs, *_features(model, exs))


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
def test_edpo_pairs_equal_chosen_and_rejected_run_as_two_sequences(use_lora):
    model = _trainable(_tiny(), "edpo", use_lora)
    exs = _pair_examples()
    ref = torch.randn(len(exs), 2) - 40.0  # [B, 2] log π_ref, near the tiny model's own
    objective = EDPOObjective(model, beta=0.1, eta=0.5)
    assert_same_as_alone(objective, exs, *_features(model, exs), ref)
    with torch.no_grad():  # the reference pass: the same log-probs packed and alone
        alone = [copy.copy(e) for e in exs]
        run_alone(alone)
        f_t, f_r = _features(model, exs)
        a = torch.stack(objective.pair_logps(Batch(exs, f_t, f_r)))
        b = torch.stack(objective.pair_logps(Batch(alone, f_t, f_r)))
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
def test_zero_shot_and_gradient_checkpointing():
    model = _trainable(_tiny(peak_hint=False), "sfe", use_lora=False)
    model.backbone.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    exs = _sfe_examples(zero_shot=True)
    assert_same_as_alone(SFEObjective(model), exs, *_features(model, exs))


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory):
    from sage_cli.models.hf_vlm import load_hf_vlm

    return load_hf_vlm(save_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2vl"), "2"), image_size=112)


@pytest.mark.parametrize("stage", ["sfe", "edpo"])
def test_m_rope_branches_continue_from_the_prefixs_positions(qwen2_vl, stage):
    torch.manual_seed(0)
    model = _trainable(SageModel(copy.deepcopy(qwen2_vl), k_patches=4, fusion_heads=4), stage, use_lora=True)
    if stage == "sfe":
        exs = _sfe_examples()
        assert_same_as_alone(SFEObjective(model), exs, *_features(model, exs, size=(112, 112)))
    else:
        exs = _pair_examples()
        assert_same_as_alone(EDPOObjective(model, 0.1, 0.5), exs, *_features(model, exs, size=(112, 112)),
                             torch.randn(len(exs), 2) - 40.0)


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
def test_sage_smol_group_and_pairs(use_lora):
    """The packaged sage-smol (SmolLM2-135M, DINOv2-S) with the shipped recipe's SAGE settings."""
    from sage_cli.config import load_recipe
    from sage_cli.models.registry import load_backbone

    mc = load_recipe("sage-smol", "sfe").model
    torch.manual_seed(0)
    base = SageModel(load_backbone("sage-smol"), **{k: getattr(mc, k) for k in SageModel.SETTINGS})
    facts = [f"Fact {i}: hazelnuts can show cracks, holes, stains or print marks on the shell." for i in range(8)]
    sfe = [SFEExample(f"g:{q}", Path("t0.png"), Path("r0.png"), question,
                      "Yes. I see contamination in the middle left: foreign material stuck to the surface.", facts)
           for q, question in enumerate(QUESTIONS[:3])]
    model = _trainable(copy.deepcopy(base), "sfe", use_lora)
    sfe = share_prefixes(sfe)
    assert_same_as_alone(SFEObjective(model, verdict_weight=10.0), sfe, *_features(model, sfe, size=(224, 224)))
    pairs = share_prefixes([PairExample(f"g:0:{k}", Path("t0.png"), Path("r0.png"), QUESTIONS[0],
                                        f"Yes. A {k} crack on the shell.", "No, it is a normal hazelnut.", 0.2, k,
                                        facts) for k in ("min", "max")])
    model = _trainable(copy.deepcopy(base), "edpo", use_lora)
    assert_same_as_alone(EDPOObjective(model, 0.1, 0.5), pairs, *_features(model, pairs, size=(224, 224)),
                         torch.tensor([[-30.0, -25.0], [-28.0, -25.0]]))


# ---- whole runs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny InternVL on disk; 4 QA groups of 3 questions and their ΔH_min / ΔH_max pairs."""
    root = tmp_path_factory.mktemp("shared")
    os.environ["SAGE_CACHE"] = str(root / "cache")
    vlm = save_tiny_internvl(root / "vlm")
    options = [[f"Yes. A scratch {q} in the upper left.", "Yes, maybe.", "No, a mark.", "No. It is clean."]
               for q in range(3)]
    yield {"root": root, "vlm": vlm, **write_widget_qa(root, options)}
    os.environ.pop("SAGE_CACHE", None)


def _recipe(data, stage, *extra):
    from sage_cli.config import load_recipe

    train = data["qa"] if stage == "sfe" else data["pairs"]
    return load_recipe("sage-smol", stage, [f"model.backbone={data['vlm']}", f"data.train={train}",
                                            f"data.facts={data['facts']}", f"data.root={data['images']}",
                                            "train.log_every=1", "optim.warmup_steps=2", *extra])


def _losses(stage, recipe, out, alone=False):
    from sage_cli.train.trainer import Run

    run = Run(stage, recipe, out)
    if alone:
        run_alone(run.train_set + run.val_set)
    steps = []
    run.run(progress=lambda step, rec: steps.append(rec))
    return steps


def test_runs_train_with_the_losses_of_each_sequence_alone(data, tmp_path, monkeypatch):
    """10 SFE steps (batch 3: a group's questions) and 6 E-DPO steps (batch 2 x 2 micro-batches: a question's
    two pairs each) log the losses of the plain path on the same batches; the drift that float rounding
    leaves after a few updates stays within 1e-4."""
    from sage_cli.train import objective

    rows: list[list[int]] = []  # branches per packed row, every packed forward

    def counted(model, enc, branches):
        rows.append([len(r) for r in branches])
        return pack(model, enc, branches)

    pack = objective.pack
    monkeypatch.setattr(objective, "pack", counted)
    sfe = _recipe(data, "sfe", "train.batch_size=3", "train.max_steps=10", "optim.lr=1e-2")
    a, b = _losses("sfe", sfe, tmp_path / "sfe"), _losses("sfe", sfe, tmp_path / "sfe-alone", alone=True)
    assert rows == [[3]] * 10  # each step: one group, its prefix once, three questions
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-4)
    edpo = _recipe(data, "edpo", f"model.checkpoint={tmp_path / 'sfe' / 'checkpoint'}", "train.batch_size=2",
                   "train.grad_accum=2", "train.max_steps=6", "optim.lr=5e-3")
    rows.clear()
    a, b = _losses("edpo", edpo, tmp_path / "edpo"), _losses("edpo", edpo, tmp_path / "edpo-alone", alone=True)
    assert rows[-12:] == [[4]] * 12  # after the reference pass: a question's two pairs, four answers on one prompt
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-4, abs=1e-6)
    assert [r["rewards/margins"] for r in a] == pytest.approx([r["rewards/margins"] for r in b], rel=1e-3, abs=1e-5)


def _step_losses(run_dir: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs}


def test_a_resumed_run_repeats_the_uninterrupted_ones_losses(data, tmp_path):
    """The shared path's order (whole micro-batches shuffled, across an epoch boundary) and its packed
    steps resume exactly: a run restarted from its step-4 state logs steps 5-8 as the run that went on."""
    from sage_cli.cli import run

    args = ["train", "sfe", f"model.backbone={data['vlm']}", "--train", str(data["qa"]), "--facts",
            str(data["facts"]), "--root", str(data["images"]), "train.batch_size=2", "train.max_steps=8",
            "train.save_every=4", "train.log_every=1"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert run([*args, "--out", str(full)]) == 0  # 12 examples, batch 2: epoch 2 starts at step 7
    cut.mkdir()
    shutil.copytree(full / "state" / "step-0000004", cut / "state" / "step-0000004")
    shutil.copy(full / "recipe.yaml", cut / "recipe.yaml")
    assert run([*args, "--out", str(cut), "--resume", "auto"]) == 0
    a, b = _step_losses(full), _step_losses(cut)
    assert sorted(b) == [5, 6, 7, 8]
    for s in b:
        assert b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-6), f"step {s}"


def test_the_plan_says_how_prompts_run(data, capsys):
    """The plan printed before training says whether each prompt runs once (and on how many prompts the
    examples sit) or each sequence alone."""
    from sage_cli.cli import run

    args = ["train", "sfe", f"model.backbone={data['vlm']}", "--train", str(data["qa"]), "--facts",
            str(data["facts"]), "--root", str(data["images"]), "--dry-run"]
    assert run(args) == 0
    err = capsys.readouterr().err
    assert "shared prefix: 12 examples on 4 prompts; each prompt runs once per micro-batch (sdpa, packed)" in err
    assert run([*args, "train.shared_prefix=false"]) == 0
    assert "shared prefix: off (train.shared_prefix=false): each sequence runs alone" in capsys.readouterr().err


# ---- 2-process DDP ------------------------------------------------------------------------------------


def _ddp_worker(out: str) -> None:
    """One rank: its own QA group through the DDP-wrapped objective, packed; rank 0 also computes the mean
    of both ranks' plain-path gradients in-process and writes the largest relative difference."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = _trainable(_tiny(), "sfe", use_lora=True)
    exs = _sfe_examples()
    f_t, f_r = _features(model, exs)
    groups = [[i for i, e in enumerate(exs) if e.test.name == f"t{g}.png"] for g in range(2)]

    def batch(g, alone=False):
        picked = [copy.copy(exs[i]) for i in groups[g]]
        if alone:
            run_alone(picked)
        return Batch(picked, f_t[groups[g]], f_r[groups[g]])

    objective = SFEObjective(model)
    wrapped = DistributedDataParallel(objective, find_unused_parameters=True)
    wrapped(batch(rank))[0].backward()  # gradients averaged over the two ranks
    ddp = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if rank == 0:
        want: dict = {}
        for g in range(2):
            _, grads = _loss_and_grads(objective, batch(g, alone=True))
            for n, v in grads.items():
                want[n] = want.get(n, 0) + v / 2
        worst = max(((ddp[n] - v).abs().max() / v.abs().max().clamp(min=1e-12)).item() for n, v in want.items())
        Path(out).write_text(json.dumps({"worst": worst, "same_names": sorted(ddp) == sorted(want)}))
    dist.barrier()  # rank 1 waits for rank 0's in-process reference: tearing down gloo early aborted it once
    dist.destroy_process_group()


def test_ddp_gradients_equal_the_plain_paths(tmp_path):
    out = tmp_path / "ddp.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           __file__, str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["same_names"] and res["worst"] <= GRAD_REL, res


if __name__ == "__main__":  # a DDP rank, started by torch.distributed.run (test_ddp_gradients_equal_the_plain_paths)
    _ddp_worker(sys.argv[1])
