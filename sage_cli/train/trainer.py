"""Both training stages on `accelerate`: one CPU process, one GPU, data-parallel processes (DDP),
sharded data-parallel processes (FSDP2: an accelerate config with `distributed_type: FSDP`), or
DeepSpeed ZeRO-1/2 (`distributed_type: DEEPSPEED`).

A run directory holds everything of one run:

    recipe.yaml          the resolved recipe
    metrics.jsonl        one line per logged step (appended; after a resume a step may appear twice,
                         the last line wins)
    ref_logps-*.safetensors  E-DPO only: log π_ref of the chosen / rejected answers the plan visits,
                         computed once before training
    state/step-N/        what resuming needs: trained weights, optimizer, scheduler, RNG, position
    checkpoint/          the final sage checkpoint (only what was trained), for `sage infer` / stage 2

Data order is a seeded permutation per epoch, split into global batches; process r takes the r-th
slice of each, so ranks see different examples and a resumed run replays the same order.

Under FSDP each process holds a slice of every parameter and optimizer state; checkpoints and resumable
states are still written whole (gathered), in the same format as without sharding. Under DeepSpeed
ZeRO-1/2 each process holds whole parameters and a slice of the optimizer states (and, with stage 2, of
the gradients); the state folder then keeps one optimizer file per process (`optimizer-rankN.pt`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sage_cli import jsonl
from sage_cli.atomic import swap_in_dir, write_text
from sage_cli.errors import SageError

STATE_KEEP = 2  # resumable states kept on disk (older ones are deleted)


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
    trainable: dict = field(default_factory=dict)  # part -> trainable parameter count
    frozen: dict = field(default_factory=dict)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size


# ---- model ----------------------------------------------------------------------------------------


def build_model(recipe, stage: str, dtype: torch.dtype, device):
    """SageModel for the recipe: backbone, SAGE settings, the start checkpoint, LoRA, and what trains.

    Stage 1 trains adapter + fusion + projection + LLM (LoRA or full); stage 2 the adapter + LLM with
    the fusion layer and projection frozen. The vision encoder is always frozen.
    """
    from sage_cli.models import checkpoint as ckpt
    from sage_cli.models import lora
    from sage_cli.models.registry import load_backbone
    from sage_cli.models.sage import SageModel

    mc = recipe.model
    start = mc.checkpoint
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
    model.requires_grad_(False)
    for name, p in model.named_parameters():
        part = _part_of(name)
        if part == "adapter" or (part in ("fusion", "projector") and stage == "sfe"):
            p.requires_grad_(True)
        elif part == "llm":
            p.requires_grad_("lora_" in name if lora_settings else True)
    # trainable weights stay float32 (AdamW states in bf16 lose small updates); frozen ones keep `dtype`
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if recipe.train.gradient_checkpointing:
        bb.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device), lora_settings


_PARTS = {"vision": "vision", "adapter": "adapter", "language_model": "llm"}


def _part_of(name: str) -> str:
    """Which part a SageModel parameter belongs to, from its name (backbone.<attribute>..., fusion..., ...)."""
    head, _, rest = name.partition(".")
    if head in ("fusion", "projector"):
        return head
    return _PARTS.get(rest.partition(".")[0], "other") if head == "backbone" else "other"


def count_parameters(model) -> tuple[dict, dict]:
    trainable: dict[str, int] = {}
    frozen: dict[str, int] = {}
    for name, p in model.named_parameters():
        d = trainable if p.requires_grad else frozen
        d[_part_of(name)] = d.get(_part_of(name), 0) + p.numel()
    return trainable, frozen


# ---- data order -----------------------------------------------------------------------------------


def epoch_batches(n: int, seed: int, epoch: int, batch_size: int, world: int, rank: int) -> list[list[int]]:
    """This process's micro-batches of one epoch: a seeded permutation cut into global batches of
    batch_size * world; process `rank` takes slice `rank` of each. The last global batch is filled by
    wrapping around, so every process runs the same number of steps (DDP needs that)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    glob = batch_size * world
    if len(order) % glob:
        order += order[: glob - len(order) % glob]
    return [order[i + rank * batch_size: i + (rank + 1) * batch_size] for i in range(0, len(order), glob)]


def make_plan(stage: str, n: int, n_val: int, recipe, world: int) -> Plan:
    tc = recipe.train
    micro = math.ceil(n / (tc.batch_size * world))
    per_epoch = max(1, micro // tc.grad_accum)
    total = tc.max_steps if tc.max_steps else per_epoch * tc.epochs
    return Plan(stage, n, n_val, world, tc.batch_size, tc.grad_accum, per_epoch, total)


# ---- sharded data parallel (FSDP2) ----------------------------------------------------------------


@dataclass
class FSDPSettings:
    reshard_after_forward: bool = True  # free gathered layers after forward (re-gather in backward)


def take_fsdp_request() -> FSDPSettings | None:
    """The FSDP settings `accelerate launch` puts in the environment for `distributed_type: FSDP`, taken out
    of it so that the Accelerator stays plain data-parallel and sage shards the model itself (`shard`).

    accelerate ignores FSDP on CPU (gloo) and silently runs DDP there; sharding with torch's
    `fully_shard` directly runs the same code on CPU and GPU.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise SageError(f"FSDP version {version} is not supported: set fsdp_config.fsdp_version: 2 in the "
                        "accelerate config (sage shards with FSDP2)")
    if os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true":
        raise SageError("FSDP parameter offloading is not supported: set fsdp_config.fsdp_offload_params: false")
    os.environ.pop("ACCELERATE_USE_FSDP")
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() in ("true", "full_shard")
    return FSDPSettings(reshard_after_forward=reshard)


def take_deepspeed_request() -> int | None:
    """The ZeRO stage (1 or 2) when `accelerate launch` runs a config with `distributed_type: DEEPSPEED`.

    ZeRO-1 partitions the AdamW states over the processes, ZeRO-2 the gradients too; parameters stay
    whole on every process, so checkpoints are the same files as under DDP. Sharding the parameters
    (ZeRO-3) is what FSDP2 does in sage; offloading to CPU or NVMe is not supported.
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none").lower() not in ("", "none"):
        raise SageError("a DeepSpeed JSON config (deepspeed_config_file) is not supported: set zero_stage in the "
                        "accelerate config's deepspeed_config, as recipes/accelerate/zero2.yaml does")
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    if stage not in ("1", "2"):
        raise SageError(f"DeepSpeed ZeRO stage {stage} is not supported: use stage 1 or 2 (optimizer states and "
                        "gradients partitioned), or FSDP2 (--accelerate-config fsdp) to shard the parameters too")
    for what in ("optimizer", "param"):
        device = os.environ.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{what.upper()}_DEVICE", "none").lower()
        if device not in ("", "none"):
            raise SageError(f"DeepSpeed {what} offloading ({device}) is not supported: set "
                            f"offload_{what}_device: none (LoRA and gradient checkpointing save memory instead)")
    if importlib.util.find_spec("deepspeed") is None:
        raise SageError("the accelerate config asks for DeepSpeed, which is not installed: pip install deepspeed "
                        "(or use --accelerate-config ddp or fsdp)")
    return int(stage)


def _fix_cpu_deepspeed_state(acc) -> None:
    """accelerate (1.x) leaves num_processes 1 and process_index 0 on every process when DeepSpeed runs
    without a GPU; set them from torch.distributed, which DeepSpeed has initialised (gloo)."""
    from accelerate.state import AcceleratorState, PartialState

    dist = torch.distributed
    if acc.device.type != "cpu" or not dist.is_initialized() or acc.num_processes == dist.get_world_size():
        return
    fixed = {"num_processes": dist.get_world_size(), "process_index": dist.get_rank(),
             "local_process_index": int(os.environ.get("LOCAL_RANK", dist.get_rank()))}
    PartialState._shared_state.update(fixed)
    AcceleratorState._shared_state.update(fixed)


def _configure_deepspeed(acc, recipe, plan: Plan) -> None:
    """The batch, accumulation and clipping of the recipe in DeepSpeed's config (there is no dataloader for
    accelerate to read them from); precision comes from the Accelerator's mixed_precision."""
    cfg = acc.state.deepspeed_plugin.deepspeed_config
    cfg.update(train_micro_batch_size_per_gpu=plan.batch_size, gradient_accumulation_steps=plan.grad_accum,
               train_batch_size=plan.global_batch, gradient_clipping=float(recipe.optim.grad_clip or 0.0))


def shard(objective, model, device, world: int, settings: FSDPSettings) -> int:
    """Shard `objective` (and the SageModel in it) in place with FSDP2; returns the number of layer units.

    Each LLM decoder layer is one unit, gathered only while it runs; everything else (adapter, fusion,
    projection, embeddings, head) is the root unit, gathered for the whole step, so a batch that skips
    the fusion layer on one process cannot leave the processes' collectives out of step. The frozen
    vision encoder stays whole on every process: the feature cache runs it outside the training step,
    on however many uncached images each process has.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    llm = model.backbone.parts()["llm"]
    layer_classes = set(getattr(llm, "_no_split_modules", None) or ())  # transformers: the decoder layers
    layers = [m for m in llm.modules() if type(m).__name__ in layer_classes]
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=settings.reshard_after_forward)
    fully_shard(objective, mesh=mesh, reshard_after_forward=settings.reshard_after_forward,
                ignored_params=set(model.backbone.parts()["vision"].parameters()))
    return len(layers)


def _is_shard(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def whole(state: dict, keep: bool = True) -> dict:
    """`state` on the CPU, FSDP shards gathered into whole tensors; empty unless `keep`.

    Gathering is collective: every process calls this, with the same keys in the same order.
    """
    out = {}
    for k, v in state.items():
        if _is_shard(v):
            v = v.full_tensor()
        if keep:
            out[k] = v.detach().cpu() if torch.is_tensor(v) else v
    return out


def _like(tensor: torch.Tensor, param):
    """A whole tensor cut like `param`: this process's slice when `param` is an FSDP shard of that shape."""
    if not (_is_shard(param) and tuple(tensor.shape) == tuple(param.shape)):
        return tensor
    from torch.distributed.tensor import distribute_tensor

    # src_data_rank=None: every process holds the whole tensor and keeps its own slice, no communication
    return distribute_tensor(tensor.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def sharding_record(model, optimizer) -> dict:
    """How much of the parameters and optimizer states this process holds (evidence of sharding)."""
    rec = {"sharded_params": 0, "whole_params": 0, "numel": 0, "local_numel": 0, "trainable_numel": 0,
           "trainable_local_numel": 0, "optimizer_numel": 0, "optimizer_local_numel": 0}
    for p in model.parameters():
        local = p.to_local().numel() if _is_shard(p) else p.numel()
        rec["sharded_params" if _is_shard(p) else "whole_params"] += 1
        rec["numel"] += p.numel()
        rec["local_numel"] += local
        if p.requires_grad:
            rec["trainable_numel"] += p.numel()
            rec["trainable_local_numel"] += local
    for s in optimizer.state.values():
        for v in s.values():
            if torch.is_tensor(v) and v.dim() > 0:
                rec["optimizer_numel"] += v.numel()
                rec["optimizer_local_numel"] += v.to_local().numel() if _is_shard(v) else v.numel()
    return rec


# ---- resumable state ------------------------------------------------------------------------------


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(accelerator, run_dir: Path, model, optimizer, scheduler, progress: dict) -> Path:
    """state/step-N: the trained weights, optimizer, scheduler, each process's RNG, where the run is.

    Every process calls it (FSDP shards are gathered); the main one writes whole tensors, so a state
    has the same files with or without sharding. Written to a temporary folder and renamed into place,
    so a kill leaves the previous state whole.
    """
    from safetensors.torch import save_file

    from sage_cli.models.checkpoint import trained_state

    main = accelerator.is_main_process
    states = run_dir / "state"
    final = states / f"step-{progress['step']:07d}"
    tmp = states / f".step-{progress['step']:07d}.tmp"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    trained = whole(trained_state(model), keep=main)
    zero = _is_zero(optimizer)
    if zero:  # each process's slice of the optimizer states, as DeepSpeed keeps them
        torch.save(optimizer.optimizer.state_dict(), tmp / f"optimizer-rank{accelerator.process_index}.pt")
    optim = {} if zero else _whole_optimizer_state(optimizer, keep=main)
    if main:
        save_file({k: v.contiguous() for k, v in trained.items()}, str(tmp / "trained.safetensors"))
        if not zero:
            torch.save(optim, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "progress.json").write_text(json.dumps(progress), encoding="utf-8")  # last: marks it complete
        swap_in_dir(tmp, final)
        for old in sorted(states.glob("step-*"))[:-STATE_KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_state(run_dir: Path) -> Path | None:
    done = [d for d in sorted((run_dir / "state").glob("step-*")) if (d / "progress.json").is_file()]
    return done[-1] if done else None


def load_state(accelerator, state_dir: Path, model, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    trained = load_file(str(state_dir / "trained.safetensors"))
    own = dict(model.named_parameters())
    names = _trained_names(model)
    with torch.no_grad():
        for key, tensor in trained.items():
            own[names[key]].copy_(_like(tensor, own[names[key]]))
    if _is_zero(optimizer):
        _load_zero_state(accelerator, state_dir, optimizer)
    else:
        _load_optimizer_state(optimizer, torch.load(state_dir / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(state_dir / "scheduler.pt", weights_only=True))
    rng = state_dir / f"rng-{accelerator.process_index}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=True))
    return json.loads((state_dir / "progress.json").read_text(encoding="utf-8"))


def _whole_optimizer_state(optimizer, keep: bool) -> dict:
    """optimizer.state_dict() with whole tensors on the CPU (gathered under FSDP); empty unless `keep`."""
    sd = optimizer.state_dict()
    state = {i: whole(s, keep) for i, s in sd["state"].items()}
    return {"state": state, "param_groups": sd["param_groups"]} if keep else {}


def _load_optimizer_state(optimizer, sd: dict) -> None:
    """Load a state of whole tensors, each cut to this process's slice where its parameter is sharded."""
    params = [p for g in optimizer.param_groups for p in g["params"]]  # state_dict numbers them in this order
    sd["state"] = {i: {k: _like(v, params[i]) if torch.is_tensor(v) else v for k, v in s.items()}
                   for i, s in sd["state"].items()}
    optimizer.load_state_dict(sd)


def _is_zero(optimizer) -> bool:
    """Whether `optimizer` is accelerate's wrapper of a DeepSpeed ZeRO optimizer."""
    return type(getattr(optimizer, "optimizer", None)).__name__ == "DeepSpeedZeroOptimizer"


def _load_zero_state(accelerator, state_dir: Path, optimizer) -> None:
    """Every process reads all slices (DeepSpeed picks its own) and its fp32 master weights come from them."""
    files = sorted(state_dir.glob("optimizer-rank*.pt"), key=lambda f: int(f.stem.removeprefix("optimizer-rank")))
    if len(files) != accelerator.num_processes:
        raise SageError(f"{state_dir} was saved by {len(files) or 'no'} DeepSpeed process(es), not "
                        f"{accelerator.num_processes}: resume with the accelerate config it was trained with")
    # weights_only=False: DeepSpeed's state holds its own small objects (loss-scaler settings); the files
    # are the run's own, written by save_state
    slices = [torch.load(f, weights_only=False) for f in files]
    optimizer.optimizer.load_state_dict(slices, load_optimizer_states=True, load_from_fp32_weights=True)


def _trained_names(model) -> dict[str, str]:
    """checkpoint.trained_state key -> the parameter's name in `model`."""
    prefixes = {"adapter.": "backbone.adapter.", "fusion.": "fusion.", "projector.": "projector.",
                "llm.": "backbone.language_model."}
    out = {}
    for name, _ in model.named_parameters():
        for short, full in prefixes.items():
            if name.startswith(full):
                out[short + name[len(full):]] = name
    return out


# ---- the run --------------------------------------------------------------------------------------


PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def _accelerator(recipe, zero_stage: int | None = None):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # find_unused_parameters: a batch whose images have no facts leaves the fusion layer unused
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # cpu=True without a GPU: under torchrun, accelerate then sets up gloo instead of one process per rank;
    # with it accelerate would also drop DeepSpeed, which runs on CPU (gloo) by itself
    acc = Accelerator(mixed_precision=PRECISION[recipe.train.precision], kwargs_handlers=[ddp],
                      cpu=not torch.cuda.is_available() and zero_stage is None,
                      gradient_accumulation_steps=recipe.train.grad_accum if zero_stage else 1)
    if zero_stage:
        _fix_cpu_deepspeed_state(acc)
    return acc


def _dtype(recipe, device) -> torch.dtype:
    """Frozen weights in bf16 on a GPU when the recipe asks for bf16; float32 otherwise."""
    if recipe.train.precision == "bf16" and device.type == "cuda":
        return torch.bfloat16
    if recipe.train.precision == "fp16" and device.type == "cuda":
        return torch.float16
    return torch.float32


def load_examples(stage: str, recipe):
    from sage_cli.train import examples as ex

    d = recipe.data
    if not d.train:
        kind = "QA groups (`sage prefs build`)" if stage == "sfe" else "preference pairs (`sage score mle`)"
        raise SageError(f"no training data: set data.train (or --train) to a JSON Lines file of {kind}")
    if recipe.train.verdict_weight <= 0:
        raise SageError(f"train.verdict_weight must be > 0, got {recipe.train.verdict_weight}")
    facts = ex.FactsIndex(d.facts)
    if stage == "sfe":
        train = ex.sfe_examples(d.train, d.root, facts, d.shots)
        val = ex.sfe_examples(d.val, d.root, facts, d.shots) if d.val else []
    else:
        train = ex.pair_examples(d.train, d.root, facts, d.shots, recipe.edpo.pairs)
        val = ex.pair_examples(d.val, d.root, facts, d.shots, recipe.edpo.pairs) if d.val else []
    return train, val


class Run:
    """One training run of either stage; `run()` trains, `plan` says what it would do."""

    def __init__(self, stage: str, recipe, run_dir: Path, ref_mode: str = "cached", feature_cache: bool = True,
                 cache_root: Path | None = None, limit: int | None = None):
        if stage not in ("sfe", "edpo"):
            raise ValueError(stage)
        self.stage, self.recipe, self.run_dir = stage, recipe, Path(run_dir)
        self.ref_mode = ref_mode  # "cached" (computed once) or "model" (a frozen copy run every step)
        self.train_set, self.val_set = load_examples(stage, recipe)
        if limit:
            self.train_set = self.train_set[:limit]  # benchmarks time a slice of the data
        self.zero = take_deepspeed_request()  # checked before the Accelerator, which would set DeepSpeed up
        self.fsdp = take_fsdp_request()
        if self.fsdp and recipe.train.precision == "fp16":
            raise SageError("FSDP trains in bf16 or fp32, not fp16 (its loss scaling does not cover shards): "
                            "set train.precision=bf16")
        self.accelerator = _accelerator(recipe, self.zero)
        acc = self.accelerator
        if self.fsdp and not torch.distributed.is_initialized():
            raise SageError("FSDP needs processes started by `accelerate launch` (--accelerate-config fsdp)")
        self.plan = make_plan(stage, len(self.train_set), len(self.val_set), recipe, acc.num_processes)
        torch.manual_seed(recipe.train.seed)  # the new layers (fusion, projection, LoRA) start the same every run
        self.model, self.lora = build_model(recipe, stage, _dtype(recipe, acc.device), acc.device)
        self.plan.trainable, self.plan.frozen = count_parameters(self.model)
        from sage_cli.models.cache import cache_root as default_cache
        from sage_cli.train.features import FeatureCache

        self.features = FeatureCache(self.model.backbone, cache_root or default_cache(), enabled=feature_cache)

    # -- batches

    def _inputs(self, idx: list[int], data) -> dict:
        exs = [data[i] for i in idx]
        f_t = self.features.get([e.test for e in exs])
        refs = [e.reference for e in exs]
        if any(r is None for r in refs) and not all(r is None for r in refs):
            raise SageError("a batch mixes one-shot and zero-shot examples; use data.shots=0 or give every "
                            "group a reference")
        f_r = self.features.get(refs) if refs[0] is not None else None
        out = {"f_t": f_t, "f_r": f_r, "facts": [e.facts for e in exs], "questions": [e.question for e in exs]}
        if self.stage == "sfe":
            out["answers"] = [e.answer for e in exs]
        else:
            out.update(chosen=[e.chosen for e in exs], rejected=[e.rejected for e in exs])
        return out

    # -- E-DPO reference

    def planned_indices(self) -> list[int]:
        """The training examples this process will see over the whole plan (the order is fixed up front)."""
        plan, rc = self.plan, self.recipe
        seen: set[int] = set()
        left, epoch = plan.total_steps, 0
        while left > 0:
            batches = epoch_batches(len(self.train_set), rc.train.seed, epoch, plan.batch_size, plan.world_size,
                                    self.accelerator.process_index)
            steps = min((len(batches) - len(batches) % plan.grad_accum) // plan.grad_accum, left)
            for b in batches[: steps * plan.grad_accum]:
                seen.update(b)
            left, epoch = left - steps, epoch + 1
        return sorted(seen)

    @torch.no_grad()
    def reference_logps(self, data, pair_logps, indices: list[int], name: str) -> torch.Tensor:
        """log π_ref(chosen), log π_ref(rejected) [N, 2] of the pairs at `indices` (NaN elsewhere), from the
        starting (SFE) model in eval mode: exact to reuse, as the encoder is frozen. Computed before any
        training step (a resumed run loads its saved state only after this) and kept in the run folder."""
        import hashlib

        from safetensors.torch import load_file, save_file

        path = self.run_dir / f"ref_logps-{name}.safetensors"
        digest = hashlib.sha256(json.dumps([[data[i].key, data[i].chosen, data[i].rejected] for i in indices])
                                .encode()).hexdigest()
        if path.is_file():
            saved = load_file(str(path))
            if bytes(saved["digest_"].tolist()).decode() == digest:
                return saved["logps"]
        was = self.model.training
        self.model.eval()
        out = torch.full((len(data), 2), float("nan"))
        bs = self.recipe.train.batch_size
        for start in range(0, len(indices), bs):
            idx = indices[start:start + bs]
            with self.accelerator.autocast():
                c, r = pair_logps(**self._inputs(idx, data))
            out[idx, 0], out[idx, 1] = c.float().cpu(), r.float().cpu()
        self.model.train(was)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        from sage_cli.atomic import replacing

        with replacing(path) as tmp:
            save_file({"logps": out, "digest_": torch.tensor(list(digest.encode()), dtype=torch.uint8)}, str(tmp))
        return out

    # -- training

    def run(self, resume: bool = False, progress=None, log=None) -> dict:
        """Train to the end of the plan; returns the final summary. `progress(step, metrics)` is called
        after each optimizer step on the main process."""
        from sage_cli.train.losses import edpo_loss
        from sage_cli.train.objective import PairLogps, SFEObjective

        acc, rc, plan = self.accelerator, self.recipe, self.plan
        torch.manual_seed(rc.train.seed)
        random.seed(rc.train.seed)
        objective = (SFEObjective(self.model, rc.train.verdict_weight) if self.stage == "sfe"
                     else PairLogps(self.model))
        ref = self._val_ref = None
        if self.stage == "edpo":
            if self.val_set:  # before training: the reference is the starting model
                self._val_ref = self.reference_logps(self.val_set, objective, list(range(len(self.val_set))),
                                                     f"val-rank{self.accelerator.process_index}")
            if self.ref_mode == "cached":
                tag = f"train-rank{self.accelerator.process_index}of{self.plan.world_size}"
                ref = self.reference_logps(self.train_set, objective, self.planned_indices(), tag)
            else:
                import copy

                ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)  # whole, even under FSDP
                ref_objective = PairLogps(ref_model)
        wrapped, optimizer, scheduler, params = self._prepare(objective, log)

        step, epoch, skip = 0, 0, 0
        if resume:
            state = latest_state(self.run_dir)
            if state is not None:
                pos = load_state(acc, state, self.model, optimizer, scheduler)
                step, epoch, skip = pos["step"], pos["epoch"], pos["batch"]
                if log:
                    log(f"resumed from {state} (step {step})")
        metrics_path = self.run_dir / "metrics.jsonl"
        t_start = time.perf_counter()
        samples = 0
        seen: list[str] = []  # example keys this process trained on, in order
        self.model.train()
        self.model.backbone.parts()["vision"].eval()
        while step < plan.total_steps:
            batches = epoch_batches(len(self.train_set), rc.train.seed, epoch, plan.batch_size, plan.world_size,
                                    acc.process_index)
            usable = len(batches) - len(batches) % plan.grad_accum  # whole optimizer steps only
            b = skip
            skip = 0
            while b < usable and step < plan.total_steps:
                t0 = time.perf_counter()
                logs: dict[str, float] = {}
                for micro in range(plan.grad_accum):
                    idx = batches[b + micro]
                    seen.extend(self.train_set[i].key for i in idx)
                    inputs = self._inputs(idx, self.train_set)
                    with acc.autocast():
                        if self.stage == "sfe":
                            loss = wrapped(**inputs)
                        else:
                            pc, pr = wrapped(**inputs)
                            if ref is not None:
                                rc_, rr_ = ref[idx, 0].to(pc.device), ref[idx, 1].to(pc.device)
                            else:
                                with torch.no_grad():
                                    rc_, rr_ = ref_objective(**inputs)
                            dh = torch.tensor([self.train_set[i].delta_h for i in idx], device=pc.device)
                            loss, stats = edpo_loss(pc, pr, rc_, rr_, dh, rc.edpo.beta, rc.edpo.eta)
                            for k, v in stats.items():
                                logs[k] = logs.get(k, 0.0) + v / plan.grad_accum
                    logs["loss"] = logs.get("loss", 0.0) + loss.item() / plan.grad_accum
                    if self.zero:
                        # DeepSpeed divides by its accumulation steps, and at the last micro-batch its step
                        # reduces the gradient slices, clips, updates and zeroes
                        wrapped.set_gradient_accumulation_boundary(micro == plan.grad_accum - 1)
                        wrapped.backward(loss)
                        wrapped.step()
                    else:
                        with self._sync(wrapped, micro == plan.grad_accum - 1):
                            acc.backward(loss / plan.grad_accum)
                if self.zero:
                    grad_norm = wrapped.get_global_grad_norm() if rc.optim.grad_clip else None
                else:
                    grad_norm = acc.clip_grad_norm_(params, rc.optim.grad_clip) if rc.optim.grad_clip else None
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                b += plan.grad_accum
                step += 1
                samples += plan.global_batch
                logs = {k: _mean_over_processes(acc, v) for k, v in logs.items()}
                dt = time.perf_counter() - t0
                rec = {"step": step, "epoch": epoch, **logs, "lr": scheduler.get_last_lr()[0],
                       "grad_norm": _scalar(grad_norm) if grad_norm is not None else None,
                       "samples_per_s": plan.global_batch / dt, "step_s": dt}
                if acc.is_main_process and (step % max(1, rc.train.log_every) == 0 or step == plan.total_steps
                                            or step == 1):
                    jsonl.append(metrics_path, [rec])
                if progress and acc.is_main_process:
                    progress(step, rec)
                if rc.train.save_every and step % rc.train.save_every == 0 and step < plan.total_steps:
                    next_b = b if b < usable else 0
                    save_state(acc, self.run_dir, self.model, optimizer, scheduler,
                               {"step": step, "epoch": epoch if b < usable else epoch + 1, "batch": next_b})
            epoch += 1
        elapsed = time.perf_counter() - t_start
        summary = {"stage": self.stage, "steps": step, "epochs_seen": epoch, "train_s": elapsed,
                   "samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
                   "feature_cache": {"hits": self.features.hits, "misses": self.features.misses}}
        if self.val_set:
            summary["val"] = self.evaluate(objective)
        self._write_rank_record(seen, optimizer)
        acc.wait_for_everyone()
        from sage_cli.models.checkpoint import trained_state

        trained = whole(trained_state(self.model), keep=acc.is_main_process)  # every process: gathers shards
        if acc.is_main_process:
            summary["checkpoint"] = str(self.save_checkpoint(trained))
            write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        acc.wait_for_everyone()
        return summary

    def _prepare(self, objective, log=None):
        """The objective as each step runs it, its optimizer, schedule and trained parameters: wrapped by
        accelerate (DDP), or sharded in place (FSDP2) with the optimizer made afterwards, on the shards."""
        from torch.optim import AdamW
        from transformers import get_linear_schedule_with_warmup

        acc, rc, plan = self.accelerator, self.recipe, self.plan
        if self.fsdp:
            units = shard(objective, self.model, acc.device, acc.num_processes, self.fsdp)
            if log and acc.is_main_process:
                log(f"FSDP2: {units} decoder layers + the rest as one unit, sharded over {acc.num_processes} "
                    "process(es); the vision encoder stays whole")
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = AdamW(params, lr=rc.optim.lr, weight_decay=rc.optim.weight_decay)
        scheduler = get_linear_schedule_with_warmup(optimizer, min(rc.optim.warmup_steps, plan.total_steps),
                                                    plan.total_steps)
        if self.fsdp:
            return objective, optimizer, scheduler, params
        if self.zero:
            # the scheduler stays ours, on AdamW's param groups (which ZeRO keeps): it steps once per step
            _configure_deepspeed(acc, rc, plan)
        wrapped, optimizer = acc.prepare(objective, optimizer)
        if self.zero and log and acc.is_main_process:
            log(f"DeepSpeed ZeRO-{self.zero}: optimizer states{' and gradients' if self.zero == 2 else ''} "
                f"partitioned over {acc.num_processes} process(es); parameters whole on each")
        return wrapped, optimizer, scheduler, params

    @contextlib.contextmanager
    def _sync(self, wrapped, last_micro: bool):
        """Gradients are averaged over processes only on the last micro-batch of a step."""
        if last_micro or self.accelerator.num_processes == 1:
            yield
        elif self.fsdp:
            wrapped.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                wrapped.set_requires_gradient_sync(True)
        else:
            with self.accelerator.no_sync(wrapped):
                yield

    def _write_rank_record(self, seen: list[str], optimizer) -> None:
        """ranks/rank-N.json: what this process trained on and a digest of its final weights (data-parallel
        ranks must see different examples and end with the same weights). Under FSDP the digest is of this
        process's slices (`shard_sha256`, they differ) and `fsdp` says how much of the model it holds."""
        import hashlib

        from sage_cli.models.checkpoint import trained_state

        h = hashlib.sha256()
        for k, v in sorted(trained_state(self.model).items()):
            h.update(k.encode())
            h.update((v.to_local() if _is_shard(v) else v).detach().float().cpu().numpy().tobytes())
        rec = {"rank": self.accelerator.process_index, "examples_seen": len(seen), "first_examples": seen[:200]}
        if self.fsdp:
            rec.update(shard_sha256=h.hexdigest(), fsdp=sharding_record(self.model, optimizer))
        else:
            rec["weights_sha256"] = h.hexdigest()
        if self.zero:  # this process's slice of the fp32 master weights (AdamW's states are the same size)
            slices = optimizer.optimizer.single_partition_of_fp32_groups
            rec["zero"] = {"stage": self.zero, "partition_numel": sum(t.numel() for t in slices),
                           "trainable_numel": sum(p.numel() for p in self.model.parameters() if p.requires_grad)}
        write_text(self.run_dir / "ranks" / f"rank-{self.accelerator.process_index}.json", json.dumps(rec, indent=1))

    @torch.no_grad()
    def evaluate(self, objective) -> dict:
        """Validation loss (SFE: CE; E-DPO: the E-DPO loss and reward accuracy) with the model in eval mode.

        E-DPO's validation reference is the starting model's, computed before training (see `run`)."""
        from sage_cli.train.losses import edpo_loss

        self.model.eval()
        rc, data = self.recipe, self.val_set
        ref = self._val_ref
        total, n, acc_sum = 0.0, 0, 0.0
        for start in range(0, len(data), rc.train.batch_size):
            idx = list(range(start, min(start + rc.train.batch_size, len(data))))
            inputs = self._inputs(idx, data)
            with self.accelerator.autocast():
                if self.stage == "sfe":
                    loss = objective(**inputs)
                else:
                    pc, pr = objective(**inputs)
                    dh = torch.tensor([data[i].delta_h for i in idx], device=pc.device)
                    loss, stats = edpo_loss(pc, pr, ref[idx, 0].to(pc.device), ref[idx, 1].to(pc.device), dh,
                                            rc.edpo.beta, rc.edpo.eta)
                    acc_sum += stats["rewards/accuracy"] * len(idx)
            total += loss.item() * len(idx)
            n += len(idx)
        self.model.train()
        self.model.backbone.parts()["vision"].eval()
        out = {"loss": total / n}
        if self.stage == "edpo":
            out["rewards/accuracy"] = acc_sum / n
        return out

    def save_checkpoint(self, state: dict | None = None) -> Path:
        """The final checkpoint; `state` is the trained weights already gathered (see `whole`) under FSDP."""
        from sage_cli.models import checkpoint as ckpt

        model = self.model
        extra = {"stage": self.stage, "start": self.recipe.model.checkpoint, "steps": self.plan.total_steps}
        return ckpt.save(model, self.run_dir / "checkpoint", self.recipe.model.backbone, extra=extra, lora=self.lora,
                         state=state)


def _scalar(t) -> float:
    return float(t.full_tensor() if _is_shard(t) else t)  # under FSDP the gradient norm is a DTensor


def _mean_over_processes(acc, value: float) -> float:
    if acc.num_processes == 1:
        return value
    t = torch.tensor([value], device=acc.device)
    return acc.reduce(t, reduction="mean").item()


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Before any work: a fresh run needs an empty folder unless --overwrite (or --resume auto)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise SageError(f"{run_dir}: is a file; --out takes a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (resume or overwrite):
        raise SageError(f"{run_dir}: holds an earlier run; pass --resume auto to continue it or --overwrite "
                        "to start again")


def prepare_run_dir(run_dir: Path, recipe_yaml: str, resume: bool, overwrite: bool) -> None:
    """Clear an earlier run when overwriting (not resuming), then write the resolved recipe."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume, overwrite)
    if run_dir.is_dir() and any(run_dir.iterdir()) and overwrite and not resume:
        tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.old-", dir=run_dir.parent))
        run_dir.rename(tmp / run_dir.name)
        shutil.rmtree(tmp, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "recipe.yaml", recipe_yaml)
