"""PNG plots of a benchmark run (matplotlib, the optional `plots` extra; Agg backend, no display needed).

* accuracy_by_level: one bar group per run (standard, identification, diagnosis, average), in percent;
* examples: test images with their anomaly map drawn on (one-shot) and the first question's answer.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from sage_cli.bench.metrics import LEVELS

BARS = (*LEVELS, "average")


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from sage_cli.atomic import replacing

    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def accuracy_by_level(runs: list[tuple[str, dict]], path: Path, title: str = "Accuracy by level") -> Path:
    """`runs`: (label, accuracy dict {standard, identification, diagnosis, average}); a level without
    questions is drawn as an empty slot."""
    plt = _pyplot()
    n = len(runs)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(BARS) + 0.6 * n), 4.0))
    for i, (label, acc) in enumerate(runs):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(BARS))]
        vals = [100 * acc[b] if acc.get(b) is not None else 0.0 for b in BARS]
        bars = ax.bar(xs, vals, width * 0.95, label=label)
        for bar, b in zip(bars, BARS):
            if acc.get(b) is not None:
                ax.annotate(f"{100 * acc[b]:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(BARS)), [b.capitalize() for b in BARS])
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.axhline(50, color="grey", lw=0.6, ls="--")  # a coin's score on balanced yes/no questions
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def examples(items: list[dict], path: Path) -> Path:
    """`items`: {id, image (PIL), anomaly (engine.AnomalyMap or None), question, answer, correct}."""
    from sage_cli import heatmap

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(items), figsize=(3.4 * len(items), 4.4), squeeze=False)
    for ax, ex in zip(axes[0], items):
        img = ex["image"]
        amap = ex.get("anomaly")
        if amap is not None:
            img = heatmap.render_map(img, amap)
        ax.imshow(img)
        ax.set_axis_off()
        mark = {True: "right", False: "wrong"}.get(ex.get("correct"), "")
        lines = textwrap.wrap(f"Q: {ex.get('question', '')}", 44)[:3] + \
            textwrap.wrap(f"A: {ex.get('answer') or '(empty)'}", 44)[:4] + ([f"[{mark}]"] if mark else [])
        ax.set_title(textwrap.shorten(str(ex["id"]), 40), fontsize=8)
        ax.text(0.0, -0.04, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=7)
    return _save(fig, path)
