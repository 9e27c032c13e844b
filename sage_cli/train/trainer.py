"""Both training stages, one loop: on one CPU process, one GPU, data-parallel processes (DDP), sharded ones
(FSDP2) or DeepSpeed ZeRO-1/2 under `accelerate launch` (how each shares a step: distributed.py).

    run = Run(stage, recipe, run_dir)   # data, topology, plan, model, feature cache
    summary = run.run(resume=False)     # feature cache, objective (+ E-DPO's reference), train, save

The stage decides the data (setup.py) and the objective (objective.py: `objective(batch) -> (loss,
stats)`); the loop is the same for both. Data order is a seeded permutation per epoch, split into
global batches; process r takes the r-th slice of each, so ranks see different examples and a resumed
run replays the same order. The run folder's files are listed in state.py.

Logging is the loop's: each logged step goes to metrics.jsonl, to the trackers of `train.report_to`
(trackers.py) and to the caller's `progress`; validation (every `train.eval_every` steps and at the end)
joins its step's record as val/*; plots/curves.png is redrawn from metrics.jsonl at each save and at the end.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import random
import time
from pathlib import Path

import torch

from sage_cli import jsonl
from sage_cli.errors import SageError
from sage_cli.models.cache import cache_root as default_cache_root
from sage_cli.models.checkpoint import trained_state
from sage_cli.seeding import seeded
from sage_cli.train import curves, distributed, trackers
from sage_cli.train.distributed import mean_over_processes, scalar, whole
from sage_cli.train.features import FeatureCache
from sage_cli.train.objective import Batch, EDPOObjective, SFEObjective
from sage_cli.train.setup import (START, build_model, count_parameters, load_examples, make_plan, model_dtype,
                                  planned_indices, steps)
from sage_cli.train.state import (latest_state, load_reference, load_state, save_checkpoint, save_reference,
                                  save_state, write_rank_record, write_summary)


def shown_zero_shot(share: float, seed: int, step: int, micro: int) -> bool:
    """Whether micro-batch `micro` of optimizer step `step` is shown without its reference
    (data.zero_shot_share): a draw from the seed, step and micro-batch alone, so a resumed run and every
    process of a distributed one draw the same."""
    return share > 0 and random.Random(f"{seed}/{step}/{micro}").random() < share


def _quiet(line: str) -> None:
    pass


def _no_bar(label: str, total: int):
    return contextlib.nullcontext(lambda n: None)


class Run:
    """One training run of either stage; `run()` trains, `plan` says what it would do."""

    def __init__(self, stage: str, recipe, run_dir: Path, ref_mode: str = "cached", feature_cache: bool = True,
                 cache_root: Path | None = None, limit: int | None = None, plan_only: bool = False):
        if stage not in ("sfe", "edpo"):
            raise ValueError(stage)
        self.stage, self.recipe, self.run_dir = stage, recipe, Path(run_dir)
        self.ref_mode = ref_mode  # E-DPO: "cached" (computed once) or "model" (a frozen copy run every step)
        trackers.check(recipe.train.report_to)
        # plan_only without data (a dry run): the model's side of the plan, no examples
        no_data = plan_only and not recipe.data.train
        self.train_set, self.val_set = ([], []) if no_data else load_examples(stage, recipe)
        if limit:
            self.train_set = self.train_set[:limit]  # benchmarks time a slice of the data
        self.topology = distributed.from_environment(recipe)
        self.accelerator = acc = self.topology.acc
        self.plan = make_plan(stage, len(self.train_set), len(self.val_set), recipe, acc.num_processes)
        with seeded(recipe.train.seed):  # the new layers (fusion, projection, LoRA) start the same every run
            self.model, self.lora = build_model(recipe, stage, model_dtype(recipe, acc.device), acc.device)
        self.plan.trainable, self.plan.frozen = count_parameters(self.model)
        self.features = FeatureCache(self.model.backbone, cache_root or default_cache_root(), enabled=feature_cache)
        # E-DPO: (example indices, batch) -> [B, 2] reference log-probs of the batch's pairs
        self.train_reference = self.val_reference = None
        self.seen: list[str] = []  # example keys this process trained on, in order
        self.log, self.phase = _quiet, _no_bar  # run() takes the caller's
        self.notes: set[str] = set()  # what the run has said about its plots

    # -- batches and the objective

    def _batch(self, idx: list[int], data: list, reference=None, zero_shot: bool = False) -> Batch:
        exs = [data[i] for i in idx]
        if zero_shot:  # the same examples without their reference image (data.zero_shot_share)
            exs = [dataclasses.replace(e, reference=None) for e in exs]
        f_t = self.features.get([e.test for e in exs])  # [B, N, D]
        refs = [e.reference for e in exs]
        if any(r is None for r in refs) and not all(r is None for r in refs):
            raise SageError("a batch mixes one-shot and zero-shot examples; use data.shots=0 or give every "
                            "group a reference")
        batch = Batch(exs, f_t, self.features.get(refs) if refs[0] is not None else None)
        if reference is not None:
            batch.ref_logps = reference(idx, batch)
        return batch

    def _objective(self):
        """The stage's objective on the model (E-DPO: with its references, from the starting model)."""
        rc = self.recipe
        if self.stage == "sfe":
            return SFEObjective(self.model, rc.train.verdict_weight)
        objective = EDPOObjective(self.model, rc.edpo.beta, rc.edpo.eta)
        self._set_references(objective)
        return objective

    def _set_references(self, objective: EDPOObjective) -> None:
        """E-DPO's reference log-probs, from the model as it starts (before any step): tables computed once
        (validation always; training unless ref_mode is "model", a frozen copy run every step)."""
        rc, rank = self.recipe, self.accelerator.process_index
        if self.val_set:
            val = self.reference_logps(self.val_set, objective, list(range(len(self.val_set))), f"val-rank{rank}")
            self.val_reference = lambda idx, batch: val[idx]
        if self.ref_mode == "cached":
            tag = f"train-rank{rank}of{self.plan.world_size}"
            table = self.reference_logps(self.train_set, objective, planned_indices(self.plan, rank), tag)
            self.train_reference = lambda idx, batch: table[idx]
        else:
            frozen = EDPOObjective(copy.deepcopy(self.model).eval().requires_grad_(False),  # whole, even under FSDP
                                   rc.edpo.beta, rc.edpo.eta)

            def live(idx, batch):
                with torch.no_grad(), self.accelerator.autocast():
                    return torch.stack(frozen.pair_logps(batch), dim=1)  # [B, 2]

            self.train_reference = live

    @torch.no_grad()
    def reference_logps(self, data: list, objective: EDPOObjective, indices: list[int], name: str) -> torch.Tensor:
        """log π_ref(chosen), log π_ref(rejected) [N, 2] of the pairs at `indices` (NaN elsewhere), from the
        starting (SFE) model in eval mode: exact to reuse, as the encoder is frozen. Computed before any
        training step (a resumed run loads its saved state only after this) and kept in the run folder."""
        path = self.run_dir / f"ref_logps-{name}.safetensors"
        digest = hashlib.sha256(json.dumps([[data[i].key, data[i].chosen, data[i].rejected] for i in indices])
                                .encode()).hexdigest()
        saved = load_reference(path, digest)
        if saved is not None:
            return saved
        was = self.model.training
        self.model.eval()
        out = torch.full((len(data), 2), float("nan"))  # [N, 2]
        bs = self.recipe.train.batch_size
        with self.phase(f"E-DPO reference log-probs ({name.partition('-')[0]})", len(indices)) as advance:
            for start in range(0, len(indices), bs):
                idx = indices[start:start + bs]
                with self.accelerator.autocast():
                    c, r = objective.pair_logps(self._batch(idx, data))  # [B], [B]
                out[idx, 0], out[idx, 1] = c.float().cpu(), r.float().cpu()
                advance(len(idx))
        self.model.train(was)
        save_reference(path, out, digest)
        return out

    # -- training

    def run(self, resume: bool = False, progress=None, log=None, phase=None) -> dict:
        """Train to the end of the plan; returns the final summary. `progress(step, metrics)` is called
        after each optimizer step on the main process; `log(line)` says what the run does;
        `phase(label, total)` is a context giving `advance(n)` for the passes before training (a bar)."""
        self.log, self.phase = log or _quiet, phase or _no_bar
        with seeded(self.recipe.train.seed):  # the run's own random stream; the caller's is given back after
            self.fill_features()
            objective = self._objective()
            module = self.topology.prepare(objective, self.model, self.plan, log)
            start = self._resume(log) if resume else START
            tracking = self.accelerator.is_main_process and trackers.start(self.accelerator, self.recipe,
                                                                            self.run_dir, self.stage)
            try:
                trained = self.train(module, start, progress, objective, tracking)
                return self._finish(objective, trained)
            finally:
                if tracking:
                    trackers.finish(self.accelerator)

    @torch.no_grad()
    def fill_features(self) -> None:
        """Encode every image this process will read (its planned examples, validation) into the feature
        cache up front, with a bar: the one pass of the frozen encoder is visible, not hidden in epoch 1."""
        if not self.features.enabled:
            return
        exs = [self.train_set[i] for i in planned_indices(self.plan, self.accelerator.process_index)] + self.val_set
        paths = list(dict.fromkeys(p for e in exs for p in (e.test, e.reference) if p is not None))
        vision = self.model.backbone.parts()["vision"]
        was, bs = vision.training, self.recipe.train.batch_size
        vision.eval()  # as in every other pass: no dropout, no draw from the run's random stream
        with self.phase("feature cache", len(paths)) as advance:
            for start in range(0, len(paths), bs):
                self.features.get(paths[start:start + bs])
                advance(len(paths[start:start + bs]))
        vision.train(was)

    def _resume(self, log=None) -> dict:
        """The position to go on from: the latest complete state of the run folder, loaded; else the start."""
        found = latest_state(self.run_dir)
        if found is None:
            return START
        position = load_state(self.topology, found, self.model)
        if log:
            log(f"resumed from {found} (step {position['step']})")
        return position

    def train(self, module, start: dict, progress=None, objective=None, tracking: bool = False) -> dict:
        """The optimizer steps from `start` to the end of the plan: log, validate, report, save resumable
        states. Validation (of `objective`) runs every train.eval_every steps and after the last one."""
        acc, tc, plan = self.accelerator, self.recipe.train, self.plan
        last, epochs_seen, samples, val = start["step"], start["epoch"], 0, None
        self.seen = []
        t_start = time.perf_counter()
        self.model.train()
        self.model.backbone.parts()["vision"].eval()
        for step in steps(plan, acc.process_index, start):
            t0 = time.perf_counter()
            logs, grad_norm = self._train_step(module, step.micro_batches, step.number)
            samples += plan.global_batch
            dt = time.perf_counter() - t0
            rec = {"step": step.number, "epoch": step.epoch, **logs, "lr": self.topology.scheduler.get_last_lr()[0],
                   "grad_norm": scalar(grad_norm) if grad_norm is not None else None,
                   "samples_per_s": plan.global_batch / dt, "step_s": dt}
            final = step.number == plan.total_steps
            if self.val_set and objective is not None and (final or tc.eval_every and step.number % tc.eval_every == 0):
                t_val = time.perf_counter()
                val = self.evaluate(objective)  # every process: FSDP gathers in the forward
                rec.update({f"val/{k}": v for k, v in val.items()})
                t_start += time.perf_counter() - t_val  # train_s and samples/s count training only
            if acc.is_main_process:
                self._report(rec, final, progress, tracking)
            if tc.save_every and step.number % tc.save_every == 0 and not final:
                save_state(self.topology, self.run_dir, self.model, step.after)
                self.draw_curves()
            last, epochs_seen = step.number, step.epoch + 1
        elapsed = time.perf_counter() - t_start
        out = {"steps": last, "epochs_seen": epochs_seen, "train_s": elapsed,
               "samples_per_s": samples / elapsed if elapsed > 0 else 0.0}
        return {**out, "val": val} if val is not None else out  # the last step's validation, if any ran

    def _report(self, rec: dict, final: bool, progress, tracking: bool) -> None:
        """One step's record to metrics.jsonl and the trackers (every train.log_every steps, the first and
        last, and any with validation), and to the caller's `progress` (every step)."""
        every = max(1, self.recipe.train.log_every)
        if rec["step"] % every == 0 or rec["step"] == 1 or final or "val/loss" in rec:
            jsonl.append(self.run_dir / "metrics.jsonl", [rec])
            if tracking:
                self.accelerator.log(trackers.numbers(rec), step=rec["step"])
        if progress:
            progress(rec["step"], rec)

    def _train_step(self, module, micro_batches: list[list[int]], step: int = 0) -> tuple[dict, torch.Tensor | None]:
        """One optimizer step: the loss and stats of each micro-batch, backward, update. Returns the stats
        averaged over micro-batches and processes, and the gradient norm (None: no clipping)."""
        logs: dict[str, float] = {}
        n, share, seed = self.plan.grad_accum, self.recipe.data.zero_shot_share, self.recipe.train.seed
        for i, idx in enumerate(micro_batches):
            self.seen.extend(self.train_set[j].key for j in idx)
            batch = self._batch(idx, self.train_set, self.train_reference, shown_zero_shot(share, seed, step, i))
            with self.accelerator.autocast():
                loss, stats = module(batch)
            for k, v in {**stats, "loss": loss}.items():
                logs[k] = logs.get(k, 0.0) + v.item() / n
            self.topology.backward(loss, last_micro=i == n - 1)
        grad_norm = self.topology.step()
        self.topology.scheduler.step()
        return mean_over_processes(self.accelerator, logs), grad_norm

    @torch.no_grad()
    def evaluate(self, objective) -> dict:
        """Validation loss (SFE: CE; E-DPO: the E-DPO loss) and the objective's `val_stats`, with the model in
        eval mode. E-DPO's validation reference is the starting model's, computed before training."""
        self.model.eval()
        data, bs = self.val_set, self.recipe.train.batch_size
        sums = dict.fromkeys(("loss", *objective.val_stats), 0.0)
        for start in range(0, len(data), bs):
            idx = list(range(start, min(start + bs, len(data))))
            batch = self._batch(idx, data, self.val_reference)
            with self.accelerator.autocast():
                loss, stats = objective(batch)
            values = {"loss": loss, **stats}
            for k in sums:
                sums[k] += values[k].item() * len(idx)
        self.model.train()
        self.model.backbone.parts()["vision"].eval()
        return {k: v / len(data) for k, v in sums.items()}

    def _finish(self, objective, trained: dict) -> dict:
        """Validation, the rank record, the final checkpoint and summary.json; returns the summary."""
        acc = self.accelerator
        summary = {"stage": self.stage, **trained,
                   "feature_cache": {"hits": self.features.hits, "misses": self.features.misses}}
        if self.val_set and "val" not in summary:  # validated after the last step unless it ran before a resume
            summary["val"] = self.evaluate(objective)
        write_rank_record(self.run_dir, acc.process_index, self.seen, self.topology.rank_record(self.model))
        acc.wait_for_everyone()
        weights = whole(trained_state(self.model), keep=acc.is_main_process)  # every process: gathers shards
        if acc.is_main_process:
            summary["checkpoint"] = str(save_checkpoint(self.run_dir, self.model, self.recipe, self.stage,
                                                        self.plan.total_steps, self.lora, weights))
            write_summary(self.run_dir, summary)
        self.draw_curves()
        acc.wait_for_everyone()
        return summary

    def draw_curves(self) -> None:
        """plots/curves.png (main process); what stopped it is said once a run, and never stops the run."""
        note = curves.redraw(self.run_dir) if self.accelerator.is_main_process else None
        if note and note not in self.notes:
            self.notes.add(note)
            self.log(note)
