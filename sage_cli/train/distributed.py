"""How the processes of a run share each step, one class per topology with one interface:

    DataParallel  one process, or DDP: accelerate wraps the objective; every process holds everything
    FSDP2         sage shards the objective itself with torch's `fully_shard` (CPU and GPU alike)
    ZeRO          DeepSpeed ZeRO-1/2 through accelerate: whole parameters, partitioned optimizer states

    module = topology.prepare(objective, model, plan, log)  # wrap or shard; make optimizer + schedule
    topology.backward(loss, last_micro)                      # every micro-batch
    grad_norm = topology.step()                              # every optimizer step
    topology.save_optimizer(folder) / .load_optimizer(folder)
    topology.rank_record(model)                              # evidence for ranks/rank-N.json

`from_environment(recipe)` reads what `accelerate launch` asked for and picks the class.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState, PartialState
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.optim import AdamW
from transformers import get_linear_schedule_with_warmup

from sage_cli.errors import SageError
from sage_cli.models.checkpoint import trained_state

PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}  # recipe -> accelerate's mixed_precision


# ---- what `accelerate launch` asked for ---------------------------------------------------------------


@dataclass
class FSDPSettings:
    reshard_after_forward: bool = True  # free gathered layers after forward (re-gather in backward)


def take_fsdp_request() -> FSDPSettings | None:
    """The FSDP settings `accelerate launch` puts in the environment for `distributed_type: FSDP`.

    ACCELERATE_USE_FSDP is taken out of the environment: accelerate has no argument that turns it off,
    and reads it both when the Accelerator is made and in every clip_grad_norm_. Without it the
    Accelerator stays plain data-parallel and sage shards the model itself (`shard`); accelerate would
    run DDP on CPU anyway, so the same code then shards on CPU and GPU.
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


def from_environment(recipe) -> DataParallel:
    """The topology `accelerate launch` asked for (or one plain process), with its Accelerator."""
    zero = take_deepspeed_request()  # before the Accelerator, which would set DeepSpeed up
    fsdp = take_fsdp_request()
    if fsdp and recipe.train.precision == "fp16":
        raise SageError("FSDP trains in bf16 or fp32, not fp16 (its loss scaling does not cover shards): "
                        "set train.precision=bf16")
    # find_unused_parameters: a batch whose images have no facts leaves the fusion layer unused
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # cpu=True without a GPU: under torchrun, accelerate then sets up gloo instead of one process per rank;
    # with it accelerate would also drop DeepSpeed, which runs on CPU (gloo) by itself
    acc = Accelerator(mixed_precision=PRECISION[recipe.train.precision], kwargs_handlers=[ddp],
                      cpu=not torch.cuda.is_available() and zero is None,
                      gradient_accumulation_steps=recipe.train.grad_accum if zero else 1)
    if fsdp:
        if not torch.distributed.is_initialized():
            raise SageError("FSDP needs processes started by `accelerate launch` (--accelerate-config fsdp)")
        return FSDP2(acc, recipe, fsdp)
    if zero:
        _count_cpu_deepspeed_processes(acc)
        return ZeRO(acc, recipe, zero)
    return DataParallel(acc, recipe)


def _count_cpu_deepspeed_processes(acc) -> None:
    """Without a GPU, accelerate (1.x) sets DeepSpeed up (DeepSpeed runs gloo by itself) but leaves
    num_processes 1 and process_index 0 on every process: every process would then write as the main
    one, and DeepSpeed's batch check would fail. No public API sets them, so this writes accelerate's
    shared state from torch.distributed's; with a GPU it changes nothing."""
    dist = torch.distributed
    if acc.device.type != "cpu" or not dist.is_initialized() or acc.num_processes == dist.get_world_size():
        return
    fixed = {"num_processes": dist.get_world_size(), "process_index": dist.get_rank(),
             "local_process_index": int(os.environ.get("LOCAL_RANK", dist.get_rank()))}
    PartialState._shared_state.update(fixed)
    AcceleratorState._shared_state.update(fixed)


# ---- the topologies -----------------------------------------------------------------------------------


def _trainable(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


def _adamw(params: list, recipe, plan):
    """AdamW and a linear schedule with warm-up over the plan's steps."""
    optimizer = AdamW(params, lr=recipe.optim.lr, weight_decay=recipe.optim.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(recipe.optim.warmup_steps, plan.total_steps),
                                                plan.total_steps)
    return optimizer, scheduler


class DataParallel:
    """One process, or DDP over many: accelerate wraps the objective, every process holds all weights and
    optimizer states, and gradients are averaged over the processes on a step's last micro-batch."""

    def __init__(self, accelerator, recipe):
        self.acc, self.recipe = accelerator, recipe
        self.grad_accum = recipe.train.grad_accum
        self.module = self.optimizer = self.scheduler = None
        self.params: list = []

    def prepare(self, objective, model, plan, log=None):
        """The objective as each step calls it; makes the optimizer and schedule on the trained weights."""
        self.params = _trainable(model)
        self.optimizer, self.scheduler = _adamw(self.params, self.recipe, plan)
        self.module, self.optimizer = self.acc.prepare(objective, self.optimizer)
        return self.module

    def backward(self, loss: torch.Tensor, last_micro: bool) -> None:
        with self._sync(last_micro):
            self.acc.backward(loss / self.grad_accum)

    def _sync(self, last_micro: bool):
        """Gradients are averaged over processes only on the last micro-batch of a step."""
        if last_micro or self.acc.num_processes == 1:
            return contextlib.nullcontext()
        return self.acc.no_sync(self.module)

    def step(self) -> torch.Tensor | None:
        """Clip, update, zero the gradients; returns the gradient norm before clipping (None: no clipping)."""
        clip = self.recipe.optim.grad_clip
        norm = self.acc.clip_grad_norm_(self.params, clip) if clip else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def save_optimizer(self, folder: Path) -> None:
        """optimizer.pt of whole tensors, written by the main process (every process gathers under FSDP)."""
        sd = self.optimizer.state_dict()
        main = self.acc.is_main_process
        state = {i: whole(s, keep=main) for i, s in sd["state"].items()}  # collective under FSDP
        if main:
            torch.save({"state": state, "param_groups": sd["param_groups"]}, folder / "optimizer.pt")

    def load_optimizer(self, folder: Path) -> None:
        """optimizer.pt, each tensor cut to this process's slice where its parameter is sharded."""
        sd = torch.load(folder / "optimizer.pt", weights_only=True)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]  # state_dict numbers them so
        sd["state"] = {i: {k: like(v, params[i]) if torch.is_tensor(v) else v for k, v in s.items()}
                       for i, s in sd["state"].items()}
        self.optimizer.load_state_dict(sd)

    def rank_record(self, model) -> dict:
        """What ranks/rank-N.json says of this process's weights: data-parallel ranks end equal."""
        return {"weights_sha256": local_digest(model)}


class FSDP2(DataParallel):
    """Each process holds a slice of every trained weight, gradient and optimizer state (torch's FSDP2);
    checkpoints and states are still written whole, gathered, in the same files as without sharding."""

    def __init__(self, accelerator, recipe, settings: FSDPSettings):
        super().__init__(accelerator, recipe)
        self.settings = settings

    def prepare(self, objective, model, plan, log=None):
        """Shards `objective` in place; the optimizer is made afterwards, on the shards."""
        units = shard(objective, model, self.acc.device, self.acc.num_processes, self.settings)
        if log and self.acc.is_main_process:
            log(f"FSDP2: {units} decoder layers + the rest as one unit, sharded over {self.acc.num_processes} "
                "process(es); the vision encoder stays whole")
        self.params = _trainable(model)
        self.optimizer, self.scheduler = _adamw(self.params, self.recipe, plan)
        self.module = objective
        return objective

    def _sync(self, last_micro: bool):
        if last_micro or self.acc.num_processes == 1:
            return contextlib.nullcontext()
        return _without_gradient_sync(self.module)

    def rank_record(self, model) -> dict:
        # the digest is of this process's slices (they differ between ranks)
        return {"shard_sha256": local_digest(model), "fsdp": sharding_record(model, self.optimizer)}


@contextlib.contextmanager
def _without_gradient_sync(module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


class ZeRO(DataParallel):
    """DeepSpeed ZeRO-1 (optimizer states partitioned) or ZeRO-2 (and gradients): parameters stay whole on
    every process; the state folder keeps one optimizer file per process (`optimizer-rankN.pt`)."""

    def __init__(self, accelerator, recipe, stage: int):
        super().__init__(accelerator, recipe)
        self.stage = stage

    def prepare(self, objective, model, plan, log=None):
        self.params = _trainable(model)
        # the scheduler stays ours, on AdamW's param groups (which ZeRO keeps): it steps once per step
        self.optimizer, self.scheduler = _adamw(self.params, self.recipe, plan)
        # the batch, accumulation and clipping of the recipe (there is no dataloader for accelerate to read
        # them from); precision comes from the Accelerator's mixed_precision
        self.acc.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=plan.batch_size, gradient_accumulation_steps=plan.grad_accum,
            train_batch_size=plan.global_batch, gradient_clipping=float(self.recipe.optim.grad_clip or 0.0))
        self.module, self.optimizer = self.acc.prepare(objective, self.optimizer)
        if log and self.acc.is_main_process:
            log(f"DeepSpeed ZeRO-{self.stage}: optimizer states{' and gradients' if self.stage == 2 else ''} "
                f"partitioned over {self.acc.num_processes} process(es); parameters whole on each")
        return self.module

    def backward(self, loss: torch.Tensor, last_micro: bool) -> None:
        # DeepSpeed divides by its accumulation steps, and at the last micro-batch its step reduces the
        # gradient slices, clips, updates and zeroes
        self.module.set_gradient_accumulation_boundary(last_micro)
        self.module.backward(loss)
        self.module.step()

    def step(self) -> torch.Tensor | None:
        return self.module.get_global_grad_norm() if self.recipe.optim.grad_clip else None

    def save_optimizer(self, folder: Path) -> None:
        """This process's slice of the optimizer states, as DeepSpeed keeps them."""
        torch.save(self.optimizer.optimizer.state_dict(), folder / f"optimizer-rank{self.acc.process_index}.pt")

    def load_optimizer(self, folder: Path) -> None:
        """Every process reads all slices (DeepSpeed picks its own); its fp32 master weights come from them."""
        files = sorted(folder.glob("optimizer-rank*.pt"), key=lambda f: int(f.stem.removeprefix("optimizer-rank")))
        if len(files) != self.acc.num_processes:
            raise SageError(f"{folder} was saved by {len(files) or 'no'} DeepSpeed process(es), not "
                            f"{self.acc.num_processes}: resume with the accelerate config it was trained with")
        # weights-only, with the few DeepSpeed classes its state holds allowed by name: a run folder from
        # someone else cannot run code when resumed
        with torch.serialization.safe_globals(_deepspeed_state_classes()):
            slices = [torch.load(f, weights_only=True) for f in files]
        self.optimizer.optimizer.load_state_dict(slices, load_optimizer_states=True, load_from_fp32_weights=True)

    def rank_record(self, model) -> dict:
        # this process's slice of the fp32 master weights (AdamW's states are the same size)
        slices = self.optimizer.optimizer.single_partition_of_fp32_groups
        zero = {"stage": self.stage, "partition_numel": sum(t.numel() for t in slices),
                "trainable_numel": sum(p.numel() for p in _trainable(model))}
        return {**super().rank_record(model), "zero": zero}


# ---- FSDP2 sharding and whole tensors -----------------------------------------------------------------


def shard(objective, model, device, world: int, settings: FSDPSettings) -> int:
    """Shard `objective` (and the SageModel in it) in place with FSDP2; returns the number of layer units.

    Each LLM decoder layer is one unit, gathered only while it runs; everything else (adapter, fusion,
    projection, embeddings, head) is the root unit, gathered for the whole step, so a batch that skips
    the fusion layer on one process cannot leave the processes' collectives out of step. The frozen
    vision encoder stays whole on every process: the feature cache runs it outside the training step,
    on however many uncached images each process has.
    """
    # here, not at the top: FSDP2's public `fully_shard` is torch >= 2.6, and the other topologies run on older torch
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


def is_shard(t) -> bool:
    return isinstance(t, DTensor)


def whole(state: dict, keep: bool = True) -> dict:
    """`state` on the CPU, FSDP shards gathered into whole tensors; empty unless `keep`.

    Gathering is collective: every process calls this, with the same keys in the same order.
    """
    out = {}
    for k, v in state.items():
        if is_shard(v):
            v = v.full_tensor()
        if keep:
            out[k] = v.detach().cpu() if torch.is_tensor(v) else v
    return out


def like(tensor: torch.Tensor, param):
    """A whole tensor cut like `param`: this process's slice when `param` is an FSDP shard of that shape."""
    if not (is_shard(param) and tuple(tensor.shape) == tuple(param.shape)):
        return tensor
    # src_data_rank=None: every process holds the whole tensor and keeps its own slice, no communication
    return distribute_tensor(tensor.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def sharding_record(model, optimizer) -> dict:
    """How much of the parameters and optimizer states this process holds (evidence of sharding)."""
    rec = {"sharded_params": 0, "whole_params": 0, "numel": 0, "local_numel": 0, "trainable_numel": 0,
           "trainable_local_numel": 0, "optimizer_numel": 0, "optimizer_local_numel": 0}
    for p in model.parameters():
        local = p.to_local().numel() if is_shard(p) else p.numel()
        rec["sharded_params" if is_shard(p) else "whole_params"] += 1
        rec["numel"] += p.numel()
        rec["local_numel"] += local
        if p.requires_grad:
            rec["trainable_numel"] += p.numel()
            rec["trainable_local_numel"] += local
    for s in optimizer.state.values():
        for v in s.values():
            if torch.is_tensor(v) and v.dim() > 0:
                rec["optimizer_numel"] += v.numel()
                rec["optimizer_local_numel"] += v.to_local().numel() if is_shard(v) else v.numel()
    return rec


def local_digest(model) -> str:
    """sha256 of the trained weights this process holds (its slices of them under FSDP)."""
    h = hashlib.sha256()
    for k, v in sorted(trained_state(model).items()):
        h.update(k.encode())
        h.update((v.to_local() if is_shard(v) else v).detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


# ---- numbers for the log ------------------------------------------------------------------------------


def mean_over_processes(acc, values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the processes (one all-reduce, in float32); as is with one process."""
    if acc.num_processes == 1:
        return values
    t = torch.tensor(list(values.values()), device=acc.device)  # [K]
    return dict(zip(values, acc.reduce(t, reduction="mean").tolist()))


def scalar(t) -> float:
    return float(t.full_tensor() if is_shard(t) else t)  # under FSDP the gradient norm is a DTensor


def _deepspeed_state_classes() -> list:
    """The classes in a DeepSpeed ZeRO optimizer state besides tensors and plain containers."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
