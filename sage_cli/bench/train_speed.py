"""Training speed of SAGE's choices against their plain baselines, all measured in one run.

* SFE with a QA group's questions sharing one prompt prefix (train.shared_prefix) vs each question run as
  its own sequence, on the same batches (examples per second);
* SFE step (fact tokens fused into the prompt) vs plain supervised fine-tuning (no facts), same data and
  grouping;
* E-DPO step with the shared prefix and reference log-probs computed once vs today's batch (chosen and
  rejected concatenated as full sequences), with the reference cached and with a frozen reference model
  run every step; all on the same batches;
* an epoch with the encoder's features cached (second epoch: all hits) vs encoding every image.

Each configuration trains a few warm-up steps that are not timed, then `steps` timed ones; step times
are medians. The configurations of one comparison run baseline(s) first, then SAGE, twice over, and
pool the steps of both runs. Peak memory is the high-water mark of the process's RSS above its level
before the configuration's model was loaded (sampled every 10 ms; Linux), or the CUDA peak on a GPU.
The epoch comparison and the E-DPO reference pass use the first `examples` examples.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch


class RSSPeak:
    """Samples /proc/self/statm in a thread: peak resident memory above the level at start, in MiB."""

    def __init__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss() -> float | None:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            return None
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self):
        while not self._stop.wait(0.01):
            now = self._rss()
            if now is not None and now > self.peak:
                self.peak = now

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def result(self) -> dict:
        out = {"rss_mb": (self.peak - self.base) if self.base is not None else None}
        if torch.cuda.is_available():
            out["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out


def _timed_run(stage: str, recipe, run_dir: Path, warmup: int, ref_mode: str = "cached",
               feature_cache: bool = True, cache_root: Path | None = None, limit: int | None = None,
               alone: bool = False) -> dict:
    """Train one configuration; returns the median step time after warm-up, epoch times, and the peak
    memory of training above the level once the model is loaded. `alone`: the recipe's batches (with
    train.shared_prefix, a group's examples together), but every sequence run on its own (the baseline
    of shared-prefix training on the same batches)."""
    import gc

    from sage_cli.train.examples import run_alone
    from sage_cli.train.trainer import Run

    gc.collect()
    steps: list[dict] = []
    t0 = time.perf_counter()
    run = Run(stage, recipe, run_dir, ref_mode=ref_mode, feature_cache=feature_cache, cache_root=cache_root,
              limit=limit)
    if alone:
        run_alone(run.train_set + run.val_set)
    t_setup = time.perf_counter() - t0
    prompts = _prompts_per_batch(run.train_set, recipe.train.batch_size)
    with RSSPeak() as mem:
        summary = run.run(progress=lambda step, rec: steps.append(rec))
    wall = time.perf_counter() - t0  # model load, E-DPO's reference pass, every step
    timed = [r["step_s"] for r in steps[warmup:]] or [r["step_s"] for r in steps]
    epochs: dict[int, float] = {}
    for r in steps:
        epochs[r["epoch"]] = epochs.get(r["epoch"], 0.0) + r["step_s"]
    return {"step_s": statistics.median(timed), "timed": timed, "steps": len(steps), "setup_s": t_setup, "wall_s": wall,
            "epoch_s": [epochs[e] for e in sorted(epochs)], "checkpoint": summary.get("checkpoint"),
            "cache": summary["feature_cache"], "prompts_per_batch": prompts, **mem.result()}


def _prompts_per_batch(examples: list, batch_size: int) -> float | None:
    """Distinct prompt prefixes per micro-batch, on average, in the order the shuffle keeps together (runs
    of batch_size consecutive examples); None when the examples share none (run alone). 1.0: each
    micro-batch is one QA group (or one question's pairs)."""
    keys = [e.prefix for e in examples]
    if not keys or keys[0] is None:
        return None
    blocks = [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]
    return statistics.mean(len(set(b)) for b in blocks)


def _pooled(runs: list[dict]) -> dict:
    """Several runs of one configuration: the median over all their timed steps, the largest peak."""
    timed = [s for r in runs for s in r["timed"]]
    out = {**runs[-1], "step_s": statistics.median(timed), "timed": timed, "runs": len(runs),
           "total_s": statistics.mean(r["wall_s"] for r in runs)}
    for key in ("rss_mb", "cuda_mb"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        out[key] = max(vals) if vals else None
    return out


def _paired(a: dict, b: dict) -> float:
    """Median over matching steps of a's step time / b's."""
    return statistics.median(x / y for x, y in zip(a["timed"], b["timed"]))


def train_speed(sfe_recipe, edpo_recipe, steps: int = 10, warmup: int = 2, examples: int | None = 32,
                log=print) -> dict:
    """Every comparison of the module docstring on the recipes' data (their data.* must be set). Both
    recipes are taken with train.shared_prefix on: the baselines run the same batches."""
    with tempfile.TemporaryDirectory(prefix="sage-speed-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"  # a private feature cache, so nothing is warm from earlier runs

        def recipe(base, **changes):
            r = copy.deepcopy(base)
            r.train.max_steps, r.train.epochs, r.train.log_every, r.train.save_every = warmup + steps, 1, 1, None
            r.train.shared_prefix = True
            for dotted, value in changes.items():
                section, key = dotted.split("__")
                setattr(getattr(r, section), key, value)
            return r

        def interleaved(configs: list[tuple[str, object]]) -> list[dict]:
            """Each configuration twice, in the order given, twice over (baselines first, SAGE last): pooling
            two runs of each evens out drifts of a shared machine (the first run in a process also pays
            one-time allocations). Returns the pooled results in the order given."""
            got: dict[str, list[dict]] = {name: [] for name, _ in configs}
            for i in range(2):
                for name, fn in configs:
                    log(f"{name} ({i + 1} of 2)")
                    got[name].append(fn(tmp / f"{name}-{i}".replace(" ", "-").replace(",", "")))
            return [_pooled(got[name]) for name, _ in configs]

        sfe_r = recipe(sfe_recipe)
        plain_r = recipe(sfe_recipe, model__facts_mode="none", data__facts=None)

        def sfe_run(r, alone=False):
            return lambda d: _timed_run("sfe", r, d, warmup, cache_root=cache, limit=examples, alone=alone)

        alone, plain, sfe = interleaved([("SFE one sequence per question", sfe_run(sfe_r, alone=True)),
                                         ("plain SFT without facts", sfe_run(plain_r)),
                                         ("SFE shared prefix", sfe_run(sfe_r))])
        edpo_base = recipe(edpo_recipe, model__checkpoint=sfe["checkpoint"])

        def edpo_run(ref_mode, alone=False):
            return lambda d: _timed_run("edpo", edpo_base, d, warmup, ref_mode=ref_mode, cache_root=cache,
                                        limit=examples, alone=alone)

        live, concat, cached = interleaved([("E-DPO reference model every step", edpo_run("model", alone=True)),
                                            ("E-DPO concatenated cached reference", edpo_run("cached", alone=True)),
                                            ("E-DPO shared prefix cached reference", edpo_run("cached"))])

        # Feature cache: two epochs over a small slice; with the cache the second epoch reads every feature.
        two = recipe(sfe_recipe)
        two.train.max_steps, two.train.epochs = None, 2
        log("two epochs with the feature cache")
        with_cache = _timed_run("sfe", two, tmp / "cache-on", 0, cache_root=tmp / "cache-fresh", limit=examples)
        log("two epochs without it")
        without = _timed_run("sfe", two, tmp / "cache-off", 0, feature_cache=False, cache_root=tmp / "unused",
                             limit=examples)
    return {
        "steps_timed": steps, "warmup": warmup, "examples": examples,
        "sfe": sfe, "sfe_alone": alone, "plain_sft": plain,
        "edpo_cached_ref": cached, "edpo_concat_ref": concat, "edpo_live_ref": live,
        "epochs_with_cache": with_cache, "epochs_without_cache": without,
        "ratios": {
            # Every side trains on the same batches in the same order, so step i of one is compared with
            # step i of the other: batch-to-batch differences in length cancel out.
            "sfe_shared_vs_alone_examples_per_s": _paired(alone, sfe),  # target >= 2.5
            "sfe_vs_plain_step": _paired(sfe, plain),  # target <= 1.10
            "edpo_shared_vs_concat_step": _paired(cached, concat),  # target <= 0.60
            "edpo_cached_vs_live_step": _paired(cached, live),  # shared + cached vs today's live; target <= 0.45
            "edpo_concat_cached_vs_live_step": _paired(concat, live),  # the cache alone; was <= 0.70
            "sfe_vs_plain_median_steps": sfe["step_s"] / plain["step_s"],
            "edpo_cached_vs_live_median_steps": cached["step_s"] / live["step_s"],
            "epoch2_cache_vs_none": with_cache["epoch_s"][-1] / without["epoch_s"][-1],
        },
    }
