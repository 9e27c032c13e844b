"""`train.report_to`: experiment trackers besides metrics.jsonl, through accelerate's (`log_with`,
`init_trackers`, `log`). Opt-in: tensorboard is an optional extra (`pip install 'sage-cli[tensorboard]'`),
its event files go to RUN/tensorboard/.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sage_cli.errors import SageError

EXTRA = {"tensorboard": "pip install 'sage-cli[tensorboard]'"}


def check(report_to: list[str]) -> None:
    """Before any work: every tracker asked for is installed."""
    from accelerate.utils import is_tensorboard_available

    if "tensorboard" in report_to and not is_tensorboard_available():
        raise SageError(f"train.report_to has tensorboard, which is not installed: {EXTRA['tensorboard']}")


def start(acc, recipe, run_dir: Path, name: str) -> bool:
    """Start the recipe's trackers on `acc` (main process); False when there are none.

    The Accelerator is made before the run folder is known (distributed.from_environment), so its
    `log_with` and logging directory are set here, as its constructor would have set them."""
    report_to = list(recipe.train.report_to)
    if not report_to:
        return False
    from accelerate.tracking import filter_trackers

    check(report_to)
    logging_dir = str(Path(run_dir) / "tensorboard")
    acc.project_configuration.logging_dir = logging_dir
    acc.log_with = filter_trackers(report_to, logging_dir)
    acc.init_trackers(name, config=_flat(dataclasses.asdict(recipe)))
    return True


def finish(acc) -> None:
    """Flush and close the trackers (not `end_training`: that also ends the process group)."""
    for tracker in acc.trackers:
        tracker.finish()
    acc.trackers = []


def numbers(rec: dict) -> dict[str, float]:
    """The record's numeric values, as trackers take them."""
    return {k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}


def _flat(d: dict, prefix: str = "") -> dict:
    """A nested recipe as `section.key` -> int / float / str / bool (TensorBoard's hparams take no lists, no None)."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
