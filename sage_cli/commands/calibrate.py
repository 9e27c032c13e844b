"""`sage calibrate CKPT --on VAL`: fit P(defect) on synthetic validation pairs and store it in the checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from sage_cli.commands.options import Device, Dtype


def calibrate(
    checkpoint: str = typer.Argument(..., help="The checkpoint folder to calibrate, or sage-smol (the shipped one, calibrated in place unless --out)."),
    on: Path = typer.Option(..., "--on", help="Validation data in any format sage reads, with normal and defective one-shot pairs: meant to be synthetic (`sage data synth`), never the photos you will report on."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write a calibrated copy of the checkpoint here instead of calibrating it in place."),
    features: Optional[str] = typer.Option(None, "--features", help="Comma-separated: logit_p_yes (of the first-token P(yes)), log_map_max (the map's peak), log_map_ratio (peak over mean), log_map_top4 (mean of the 4 highest patches); or auto: every combination fitted with each category of VAL held out in turn, the best held-out balanced accuracy kept. Default: log_map_max,log_map_ratio (--shots 0: logit_p_yes, the only one without a map)."),
    threshold: float = typer.Option(0.5, "--threshold", help="The verdict is P(defect) >= this (the fit weighs both classes equally, so 0.5 is where both errors cost the same)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most N normal and N defective pairs per category (a stable seeded choice)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the references of image data sets and --limit's choice."),
    device: Device = "auto",
    dtype: Dtype = "auto",
    shots: int = typer.Option(1, "--shots", help="Normal references per pair (drawn as `sage bench --shots` draws them): fit the maps that `sage infer TEST REF1 .. REFN` with N references shows. 0: the test image alone, P(yes) only, stored apart (config.json's \"calibration_zero_shot\") for requests without a reference."),
    rows: Optional[Path] = typer.Option(None, "--rows", help="Also write each pair's measurements (P(yes), map peak and mean, features, label) as JSON Lines."),
    as_json: bool = typer.Option(False, "--json", help="Print the stored calibration as JSON."),
) -> None:
    """Calibrate a checkpoint's detection: P(defect) from P(yes) and the anomaly map, fitted on VAL.

    For every labelled one-shot pair of VAL, the checkpoint's first-token P(yes) to "Is there any defect on the test object?" and the Eq. 1 map are measured, and a logistic calibration is fitted on them (classes weighted equally). The weights, the threshold, what VAL was and the figures on it go under config.json's "calibration" key, written atomically. `sage infer`, `sage bench` and `sage serve` then report the calibrated P(defect) and its verdict beside the raw P(yes), and start their answers on whether the part is defective or normal, or where the defect is, with that verdict (unless --no-guided). With --shots 0 the test images are measured alone and P(yes) is the feature; that fit goes under "calibration_zero_shot" and serves requests without a reference.
    """
    from sage_cli.models.calibration import Options, calibrate as run, parse_features

    opts = Options(checkpoint=checkpoint, val=on, out=out, features=parse_features(features) if features else None,
                   threshold=threshold,
                   limit=limit, seed=seed, device=device, dtype=dtype, rows=rows, shots=shots)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    err = Console(stderr=True)
    with Progress(TextColumn("calibrate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                  transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("calibrate", total=None)
        done = run(opts, progress=lambda n, total: bar.update(task, completed=n, total=total))
    cal = done["calibration"]
    if as_json:
        sys.stdout.write(json.dumps(cal, indent=2) + "\n")
        return
    m, v = cal["metrics"], cal["val"]
    if cal.get("features_chosen"):
        sys.stdout.write(f"features chosen by leave-one-category-out balanced accuracy over "
                         f"{len(cal['features_chosen']['tried'])} combinations: {', '.join(cal['features'])}\n")
    terms = " + ".join(f"{w:.3f}·{n}" for n, w in zip(cal["features"], cal["weights"]))
    out_ = sys.stdout
    refs = f", {cal['shots']} references each" if cal.get("shots", 1) > 1 else \
        ", zero-shot (no reference)" if cal.get("shots") == 0 else ""
    out_.write(f"calibrated {done['checkpoint']} on {v['name']} ({v['format']}, {v['pairs']} pairs{refs}: "
               f"{v['defective']} defective, {v['normal']} normal, {len(v['categories'])} categories)\n")
    out_.write(f"P(defect) = sigmoid({terms} + {cal['bias']:.3f}); verdict: P(defect) >= {cal['threshold']:g}\n")
    fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    out_.write(f"on VAL: AUROC raw P(yes) {fmt(m['auroc_p_yes'])} · map peak {fmt(m['auroc_map_max'])} · "
               f"calibrated {fmt(m['auroc_calibrated'])}\n")
    raw, at = m["raw_at_0.5"], m["at_threshold"]
    out_.write(f"        accuracy {fmt(raw['accuracy'])} (balanced {fmt(raw['balanced_accuracy'])}) at raw P(yes) >= 0.5; "
               f"{fmt(at['accuracy'])} (balanced {fmt(at['balanced_accuracy'])}) at the stored threshold\n")
    loco = m.get("leave_one_category_out")
    if loco:
        out_.write(f"        each category predicted by a fit on the others: AUROC {fmt(loco['auroc'])}, balanced "
                   f"accuracy {fmt(loco['balanced_accuracy'])}\n")
