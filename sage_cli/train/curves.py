"""plots/curves.png of a run, drawn from its metrics.jsonl: loss (and validation loss), learning rate,
gradient norm, and for E-DPO the reward margins and accuracy. Redrawn at every save and at the end, and
by `sage train plot RUN`. Only metrics.jsonl is read, so a run that is still going (or was killed) can be
drawn from another shell.
"""

from __future__ import annotations

import json
from pathlib import Path

from sage_cli.atomic import replacing
from sage_cli.errors import SageError

CURVES = Path("plots") / "curves.png"
NO_MATPLOTLIB = "no plots/curves.png: matplotlib is not installed (pip install 'sage-cli[plots]')"

# (title, [(metrics key, label)]): one panel each, drawn when the run logged any of its keys
PANELS = [
    ("loss", [("loss", "train"), ("val/loss", "validation")]),
    ("learning rate", [("lr", "lr")]),
    ("gradient norm (before clipping)", [("grad_norm", "grad norm")]),
    ("E-DPO reward margin", [("rewards/margins", "train"), ("val/rewards/margins", "validation")]),
    ("E-DPO reward accuracy", [("rewards/accuracy", "train"), ("val/rewards/accuracy", "validation")]),
]


def read_metrics(run_dir: Path) -> list[dict]:
    """The logged steps in order; after a resume a step may appear twice and its last line wins."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise SageError(f"{run_dir}: no metrics.jsonl (not a `sage train` run folder, or no step logged yet)")
    by_step: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            by_step[rec["step"]] = rec
    return [by_step[s] for s in sorted(by_step)]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that logged `key` as a number."""
    pts = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pts], [v for _, v in pts]


def redraw(run_dir: Path) -> str | None:
    """`draw` for a run in progress: None when drawn (or nothing logged yet), else a note saying why not.
    A plot must never stop a training run."""
    if not (Path(run_dir) / "metrics.jsonl").is_file():
        return None
    try:
        return NO_MATPLOTLIB if draw(run_dir) is None else None
    except Exception as e:  # noqa: BLE001
        return f"plots/curves.png not drawn: {e}"


def draw(run_dir: Path) -> Path | None:
    """Write RUN/plots/curves.png from RUN/metrics.jsonl; None when matplotlib is not installed."""
    records = read_metrics(run_dir)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    panels = [(title, lines) for title, lines in PANELS if any(series(records, k)[0] for k, _ in lines)]
    # Figure without pyplot: no global state, no display backend, safe in any thread
    fig = Figure(figsize=(6.5, 2.4 * max(1, len(panels))), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(panels)), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, lines) in zip(axes, panels):
        for key, label in lines:
            steps, values = series(records, key)
            if steps:
                # validation is logged at a few steps only: markers show where
                ax.plot(steps, values, label=label, marker="o" if key.startswith("val/") else None, markersize=3)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=8)
    axes[-1].set_xlabel("optimizer step")
    if not panels:
        axes[0].text(0.5, 0.5, "no step logged yet", ha="center", va="center", transform=axes[0].transAxes)
    out = Path(run_dir) / CURVES
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:  # a reader never sees half a PNG
        fig.savefig(tmp, format="png", dpi=110)
    return out
