"""The run folder: its check before a run, resumable states, the RNG, the E-DPO reference file, and what a
finished run leaves (rank records, summary, checkpoint).

    recipe.yaml          the resolved recipe
    metrics.jsonl        one line per logged step (appended; after a resume a step may appear twice,
                         the last line wins)
    ref_logps-*.safetensors  E-DPO only: log π_ref of the chosen / rejected answers the plan visits
    state/step-N/        what resuming needs: trained weights, optimizer, scheduler, RNG, position
    ranks/rank-N.json    what each process trained on, and a digest of its weights
    summary.json         steps, speed, validation, where the checkpoint is
    checkpoint/          the final sage checkpoint (only what was trained), for `sage infer` / stage 2
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sage_cli import runfolder
from sage_cli.atomic import replacing, swap_in_dir, write_text
from sage_cli.errors import SageError
from sage_cli.models import checkpoint as ckpt
from sage_cli.train.distributed import like, whole

STATE_KEEP = 2  # resumable states kept on disk (older ones are deleted)


# ---- before the run -----------------------------------------------------------------------------------


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Before any work: a fresh run needs an empty folder unless --overwrite (or --resume auto)."""
    runfolder.refuse_file(run_dir)
    if runfolder.entries(run_dir) and not (resume or overwrite):
        raise SageError(f"{run_dir}: holds an earlier run; pass --resume auto to continue it or --overwrite "
                        "to start again")


def prepare_run_dir(run_dir: Path, recipe_yaml: str, resume: bool, overwrite: bool) -> None:
    """Clear an earlier run when overwriting (not resuming: --resume auto wins), then write the resolved recipe."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume, overwrite)
    if runfolder.entries(run_dir) and overwrite and not resume:
        runfolder.clear(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "recipe.yaml", recipe_yaml)


# ---- RNG ----------------------------------------------------------------------------------------------


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


# ---- resumable states ---------------------------------------------------------------------------------


def save_state(topology, run_dir: Path, model, progress: dict) -> Path:
    """state/step-N: the trained weights, optimizer, scheduler, each process's RNG, where the run is.

    Every process calls it (FSDP shards are gathered); the main one writes whole tensors, so a state
    has the same files with or without sharding. Written to a temporary folder and renamed into place,
    so a kill leaves the previous state whole.
    """
    acc = topology.acc
    main = acc.is_main_process
    states = run_dir / "state"
    final = states / f"step-{progress['step']:07d}"
    tmp = states / f".step-{progress['step']:07d}.tmp"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng-{acc.process_index}.pt")
    trained = whole(ckpt.trained_state(model), keep=main)  # collective under FSDP
    topology.save_optimizer(tmp)
    if main:
        save_file({k: v.contiguous() for k, v in trained.items()}, str(tmp / "trained.safetensors"))
        torch.save(topology.scheduler.state_dict(), tmp / "scheduler.pt")
    acc.wait_for_everyone()
    if main:
        (tmp / "progress.json").write_text(json.dumps(progress), encoding="utf-8")  # last: marks it complete
        swap_in_dir(tmp, final)
        for old in sorted(states.glob("step-*"))[:-STATE_KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def latest_state(run_dir: Path) -> Path | None:
    done = [d for d in sorted((run_dir / "state").glob("step-*")) if (d / "progress.json").is_file()]
    return done[-1] if done else None


def load_state(topology, state_dir: Path, model) -> dict:
    """Weights, optimizer, scheduler and this process's RNG from `state_dir`; returns the saved position."""
    trained = load_file(str(state_dir / "trained.safetensors"))
    own = dict(model.named_parameters())
    names = _trained_names(model)
    with torch.no_grad():
        for key, tensor in trained.items():
            own[names[key]].copy_(like(tensor, own[names[key]]))
    topology.load_optimizer(state_dir)
    topology.scheduler.load_state_dict(torch.load(state_dir / "scheduler.pt", weights_only=True))
    rng = state_dir / f"rng-{topology.acc.process_index}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=True))
    return json.loads((state_dir / "progress.json").read_text(encoding="utf-8"))


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


# ---- E-DPO's reference log-probs ----------------------------------------------------------------------


def load_reference(path: Path, digest: str) -> torch.Tensor | None:
    """The saved table [N, 2], if `path` holds one for the same pairs (`digest`)."""
    if not path.is_file():
        return None
    saved = load_file(str(path))
    return saved["logps"] if bytes(saved["digest_"].tolist()).decode() == digest else None


def save_reference(path: Path, logps: torch.Tensor, digest: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file({"logps": logps, "digest_": torch.tensor(list(digest.encode()), dtype=torch.uint8)}, str(tmp))


# ---- what a finished run leaves -----------------------------------------------------------------------


def write_rank_record(run_dir: Path, rank: int, seen: list[str], weights: dict) -> None:
    """ranks/rank-N.json: what this process trained on (data-parallel ranks must see different examples)
    and what it holds of the final weights (`weights`: the topology's record)."""
    rec = {"rank": rank, "examples_seen": len(seen), "first_examples": seen[:200], **weights}
    write_text(run_dir / "ranks" / f"rank-{rank}.json", json.dumps(rec, indent=1))


def trained_wordings(recipe) -> str | None:
    """The version of sage's question banks the run's questions came from (prefs/wordings.py), or None.

    Read from the `sage prefs build` manifest beside the training file (E-DPO pairs: beside the QA file
    `sage score mle` scored), else inherited from the starting checkpoint."""
    def manifest(path: Path) -> dict:  # what can be read of it; a missing or broken file is {}
        return runfolder.read_manifest(path, lenient=True) or {}

    if recipe.data.train:
        folder = Path(recipe.data.train).parent
        qa = manifest(folder / "score.json").get("qa_file")
        found = manifest((Path(qa).parent if isinstance(qa, str) else folder) / "prefs.json").get("wordings")
        if found:
            return found
    start = ckpt.resolve(recipe.model.checkpoint, None) if recipe.model.checkpoint else None  # "sage-smol" too
    return manifest(Path(start) / ckpt.CONFIG).get("wordings") if start else None


def save_checkpoint(run_dir: Path, model, recipe, stage: str, steps: int, lora: dict | None,
                    trained: dict | None = None) -> Path:
    """checkpoint/: the final sage checkpoint; `trained` is the trained weights already gathered (`whole`).
    A run trained on one list of facts for every image leaves it as the checkpoint's facts.txt: the model has
    only seen prompts with facts, and `sage infer` or a next stage without --facts then uses these."""
    extra = {"stage": stage, "start": recipe.model.checkpoint, "steps": steps}
    if wordings := trained_wordings(recipe):
        extra["wordings"] = wordings
    out = ckpt.save(model, run_dir / "checkpoint", recipe.model.backbone, extra=extra, lora=lora, state=trained)
    if recipe.model.facts_mode != "none" and recipe.data.facts:
        from sage_cli.facts.store import FactsFile

        same = FactsFile(recipe.data.facts).same  # None: a facts JSON Lines file, facts per image
        if same:
            write_text(out / ckpt.FACTS, "".join(f"{line}\n" for line in same))
    return out


def write_summary(run_dir: Path, summary: dict) -> None:
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
