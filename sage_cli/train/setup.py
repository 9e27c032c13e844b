"""What a run is made of before its first step: the examples, the plan (steps, data order), the model."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sage_cli.errors import SageError
from sage_cli.models import checkpoint as ckpt
from sage_cli.models import lora
from sage_cli.models.registry import load_backbone
from sage_cli.models.sage import SageModel
from sage_cli.train import examples as ex

# ---- data ---------------------------------------------------------------------------------------------


def missing_data(stage: str, recipe, facts: str | None) -> list[str]:
    """What the recipe lacks to train, one line each (a run stops at the first; a dry run lists them all);
    `facts` is what `resolve_facts` found."""
    out = [] if recipe.data.train else [_no_training_data(stage)]
    for key in ("train", "val", "facts"):  # a named file that is not there comes first: it is the likelier slip
        path = getattr(recipe.data, key)
        if path and not Path(path).exists():
            out.insert(0, f"{path}: no such file or directory (data.{key})")
    if facts is None:
        out.append("model.facts_mode=fe fuses fact sentences, but there are none: set data.facts (or --facts) to "
                   "a facts file (`sage facts extract`) or a text file of sentences, or set model.facts_mode=none")
    return out


def resolve_facts(stage: str, recipe) -> str | None:
    """Where the run's fact sentences come from, for the plan; None when facts_mode=fe has none to fuse
    (the fusion layer would train on nothing). Without data.facts, a start checkpoint's own facts.txt
    (its default facts, as `sage infer` uses them) is taken: data.facts is set to it, so recipe.yaml says so."""
    mc, d = recipe.model, recipe.data
    if mc.facts_mode == "none":
        return "none (model.facts_mode=none)"
    if d.facts:
        return str(d.facts)
    start = ckpt.resolve(mc.checkpoint, mc.backbone) if mc.checkpoint else None
    if start and (Path(start) / ckpt.FACTS).is_file():
        d.facts = str(Path(start) / ckpt.FACTS)
        return f"the start checkpoint's default facts, for every image ({d.facts})"
    if mc.facts_mode == "hard" or (stage == "edpo" and not start):  # E-DPO without a start: build_model says so
        return "none"
    return None


def _no_training_data(stage: str) -> str:
    kind = "QA groups (`sage prefs build`)" if stage == "sfe" else "preference pairs (`sage score mle`)"
    return f"no training data: set data.train (or --train) to a JSON Lines file of {kind}"


def load_examples(stage: str, recipe) -> tuple[list, list]:
    """The training and validation examples of the stage (SFE: QA groups; E-DPO: preference pairs).
    With train.shared_prefix, examples that share a prompt prefix are keyed and put next to each other
    (examples.share_prefixes), so the objective can run that prefix once per micro-batch."""
    d = recipe.data
    if not d.train:
        raise SageError(_no_training_data(stage))
    if recipe.train.verdict_weight <= 0:
        raise SageError(f"train.verdict_weight must be > 0, got {recipe.train.verdict_weight}")
    if d.zero_shot_share and stage != "sfe":  # E-DPO's reference log-probs are computed one-shot
        raise SageError("data.zero_shot_share is for SFE only; set it to 0 for E-DPO")
    if d.zero_shot_share and d.shots == 0:
        raise SageError("data.zero_shot_share needs one-shot data: with data.shots=0 every batch is zero-shot")
    facts = ex.FactsIndex(d.facts)

    def read(path) -> list:
        if stage == "sfe":
            out = ex.sfe_examples(path, d.root, facts, d.shots)
        else:
            out = ex.pair_examples(path, d.root, facts, d.shots, recipe.edpo.pairs)
        return ex.share_prefixes(out) if recipe.train.shared_prefix else out

    return read(d.train), read(d.val) if d.val else []


# ---- plan and data order ------------------------------------------------------------------------------


@dataclass
class Plan:
    stage: str
    examples: int
    val_examples: int
    world_size: int
    batch_size: int  # per process
    grad_accum: int
    steps_per_epoch: int  # optimizer steps
    total_steps: int
    seed: int = 0  # of the data order
    block: int = 1  # consecutive examples kept together by the shuffle (train.shared_prefix: a micro-batch)
    trainable: dict = field(default_factory=dict)  # part -> trainable parameter count
    frozen: dict = field(default_factory=dict)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size


def make_plan(stage: str, n: int, n_val: int, recipe, world: int) -> Plan:
    tc = recipe.train
    block = tc.batch_size if tc.shared_prefix else 1
    if n == 0:  # a dry run without data: the plan has the model's side only
        return Plan(stage, 0, n_val, world, tc.batch_size, tc.grad_accum, 0, 0, seed=tc.seed, block=block)
    micro = math.ceil(n / (tc.batch_size * world))  # micro-batches per process and epoch
    if micro < tc.grad_accum:  # no whole optimizer step in an epoch: the run would never end
        raise SageError(f"{n} training examples make {micro} micro-batch(es) of {tc.batch_size} per process and epoch, "
                        f"fewer than train.grad_accum={tc.grad_accum}: lower train.grad_accum or train.batch_size")
    per_epoch = micro // tc.grad_accum
    total = tc.max_steps if tc.max_steps else per_epoch * tc.epochs
    return Plan(stage, n, n_val, world, tc.batch_size, tc.grad_accum, per_epoch, total, seed=tc.seed, block=block)


def epoch_batches(n: int, seed: int, epoch: int, batch_size: int, world: int, rank: int,
                  block: int = 1) -> list[list[int]]:
    """This process's micro-batches of one epoch: a seeded permutation cut into global batches of
    batch_size * world; process `rank` takes slice `rank` of each. The last global batch is filled by
    wrapping around, so every process runs the same number of steps (DDP needs that).

    With `block` > 1 the permutation moves runs of `block` consecutive examples (`block_order`)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist() if block == 1 else block_order(n, block, g)
    glob = batch_size * world
    if len(order) % glob:
        order += order[: glob - len(order) % glob]
    return [order[i + rank * batch_size: i + (rank + 1) * batch_size] for i in range(0, len(order), glob)]


def block_order(n: int, block: int, g: torch.Generator) -> list[int]:
    """0..n-1 as whole runs of `block` consecutive indices in a seeded order; the one shorter run (n not a
    multiple of `block`) goes last, so that every other run stays one micro-batch of batch_size = block.

    Consecutive examples share a prompt prefix (examples.share_prefixes): a micro-batch then holds one
    QA group's questions, or one question's pairs, as far as they fit. The runs are the same every
    epoch; their order is not.
    """
    whole = n // block
    runs = [list(range(b * block, (b + 1) * block)) for b in torch.randperm(whole, generator=g).tolist()]
    runs.append(list(range(whole * block, n)))
    return [i for run in runs for i in run]


@dataclass
class Step:
    """One optimizer step of this process: its micro-batches, and where a resumed run goes on after it."""
    number: int  # 1-based
    epoch: int
    micro_batches: list[list[int]]  # grad_accum lists of example indices
    after: dict  # {"step", "epoch", "batch"}: the position saved with a resumable state


START = {"step": 0, "epoch": 0, "batch": 0}


def steps(plan: Plan, rank: int, start: dict = START) -> Iterator[Step]:
    """The optimizer steps from `start` to the end of the plan. An epoch's micro-batches that do not
    fill a whole step are dropped, so the same examples never land in two steps."""
    number, epoch, skip = start["step"], start["epoch"], start["batch"]
    while number < plan.total_steps:
        batches = epoch_batches(plan.examples, plan.seed, epoch, plan.batch_size, plan.world_size, rank, plan.block)
        usable = len(batches) - len(batches) % plan.grad_accum  # whole optimizer steps only
        for b in range(skip, usable, plan.grad_accum):
            if number == plan.total_steps:
                return
            number += 1
            nxt = b + plan.grad_accum
            after = ({"step": number, "epoch": epoch, "batch": nxt} if nxt < usable
                     else {"step": number, "epoch": epoch + 1, "batch": 0})
            yield Step(number, epoch, batches[b:nxt], after)
        skip, epoch = 0, epoch + 1


def planned_indices(plan: Plan, rank: int) -> list[int]:
    """The training examples this process sees over the whole plan (the order is fixed up front)."""
    return sorted({i for s in steps(plan, rank) for mb in s.micro_batches for i in mb})


# ---- model --------------------------------------------------------------------------------------------


def model_dtype(recipe, device) -> torch.dtype:
    """Frozen weights in bf16 / fp16 on a GPU when the recipe asks for it; float32 otherwise."""
    if device.type == "cuda" and recipe.train.precision in ("bf16", "fp16"):
        return torch.bfloat16 if recipe.train.precision == "bf16" else torch.float16
    return torch.float32


def mark_trainable(model, stage: str, lora_on: bool) -> None:
    """What a stage trains: the adapter always, fusion and projection in SFE only (E-DPO keeps them frozen),
    and the LLM's LoRA weights (`lora_on`) or the whole LLM; everything else frozen."""
    model.requires_grad_(False)
    for name, p in model.named_parameters():
        part = part_of(name)
        if part == "adapter" or (part in ("fusion", "projector") and stage == "sfe"):
            p.requires_grad_(True)
        elif part == "llm":
            p.requires_grad_("lora_" in name if lora_on else True)


def build_model(recipe, stage: str, dtype: torch.dtype, device) -> tuple[SageModel, dict | None]:
    """SageModel for the recipe: backbone, SAGE settings, the start checkpoint, LoRA, and what trains;
    returns it with its LoRA settings (None: the LLM trains whole).

    Stage 1 trains adapter + fusion + projection + LLM (LoRA or full); stage 2 the adapter + LLM with
    the fusion layer and projection frozen. The vision encoder is always frozen. The new layers take
    their initial weights from torch's global RNG: the caller seeds it (see seeding.seeded).
    """
    mc = recipe.model
    start = ckpt.resolve(mc.checkpoint, mc.backbone) if mc.checkpoint else None  # "sage-smol": the shipped one
    config = ckpt.read_config(start) if start else {}
    if start and config["backbone"] != mc.backbone:
        raise SageError(f"{start}: checkpoint is for backbone {config['backbone']!r}, but the recipe's "
                        f"model.backbone is {mc.backbone!r}")
    if stage == "edpo" and not start:
        raise SageError("E-DPO starts from an SFE checkpoint: set model.checkpoint (or --checkpoint)")
    sage = config.get("sage") or {k: getattr(mc, k) for k in SageModel.SETTINGS}
    bb = load_backbone(mc.backbone, dtype=dtype, image_size=config.get("image_size") or mc.image_size)
    model = SageModel(bb, **sage)
    lora_settings = config.get("lora")
    if start:
        ckpt.load_into(model, start, mc.backbone)  # injects the checkpoint's LoRA first, if it has one
    elif recipe.lora.enabled:
        lora_settings = lora.apply(model, **lora.settings_of(recipe.lora))
    mark_trainable(model, stage, lora_on=bool(lora_settings))
    # trainable weights stay float32 (AdamW states in bf16 lose small updates); frozen ones keep `dtype`
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if recipe.train.gradient_checkpointing:
        bb.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device), lora_settings


_PARTS = {"vision": "vision", "adapter": "adapter", "language_model": "llm"}


def part_of(name: str) -> str:
    """Which part a SageModel parameter belongs to, from its name (backbone.<attribute>..., fusion..., ...)."""
    head, _, rest = name.partition(".")
    if head in ("fusion", "projector"):
        return head
    return _PARTS.get(rest.partition(".")[0], "other") if head == "backbone" else "other"


def count_parameters(model) -> tuple[dict, dict]:
    """Parameter counts per part: (trainable, frozen)."""
    trainable: dict[str, int] = {}
    frozen: dict[str, int] = {}
    for name, p in model.named_parameters():
        d = trainable if p.requires_grad else frozen
        d[part_of(name)] = d.get(part_of(name), 0) + p.numel()
    return trainable, frozen
