"""Watching a training run (#23): plots/curves.png and `sage train plot`, validation during training
(train.eval_every), TensorBoard through accelerate's trackers (train.report_to), the bars of the passes
before training; and the rough edges: a dry run without data, fact fusion without facts, resume loading
with weights_only.
"""

import json
import sys

import pytest
import torch

from sage_cli.cli import run
from test_train import _metrics, _sfe_args, world  # noqa: F401  (world: the tiny VLM + data)

PNG = b"\x89PNG\r\n\x1a\n"


def _write_metrics(run_dir, edpo=False):
    run_dir.mkdir(parents=True)
    recs = []
    for s in range(1, 7):
        rec = {"step": s, "epoch": 0, "loss": 1.0 / s, "lr": 1e-3 * s, "grad_norm": 0.5 + s}
        if edpo:
            rec.update({"rewards/margins": 0.1 * s, "rewards/accuracy": min(1.0, 0.2 * s)})
        if s % 3 == 0:
            rec["val/loss"] = 1.2 / s
        recs.append(rec)
    recs.append({**recs[-1], "loss": 0.1})  # a resumed run logs a step again: the last line wins
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 7, "lo')
    return run_dir


# ---- curves and `sage train plot` ---------------------------------------------------------------


@pytest.mark.parametrize("edpo", [False, True])
def test_plot_redraws_the_curves_of_a_run(tmp_path, capsys, edpo):
    from sage_cli.train import curves

    d = _write_metrics(tmp_path / "run", edpo)
    recs = curves.read_metrics(d)
    assert [r["step"] for r in recs] == list(range(1, 7)) and recs[-1]["loss"] == 0.1  # cut last line skipped
    steps, values = curves.series(recs, "val/loss")
    assert steps == [3, 6] and values == pytest.approx([0.4, 0.2])
    assert run(["train", "plot", str(d)]) == 0
    out = d / "plots" / "curves.png"
    assert capsys.readouterr().out.strip() == str(out) and out.read_bytes().startswith(PNG)


def test_plot_without_metrics_is_one_line(tmp_path, capsys):
    assert run(["train", "plot", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no metrics.jsonl" in err and err.count("\n") == 1


def test_plot_without_matplotlib_is_a_note(tmp_path, capsys, monkeypatch):
    d = _write_metrics(tmp_path / "run")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    assert run(["train", "plot", str(d)]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().err and not (d / "plots").exists()


# ---- a run: validation during training, curves at each save ------------------------------------------


@pytest.fixture(scope="module")
def watched(world):  # noqa: F811
    out = world["root"] / "watched"
    assert run(_sfe_args(world, out, "--val", str(world["qa"]), "train.max_steps=6", "train.eval_every=2",
                         "train.save_every=3", "train.log_every=5")) == 0
    return out


def test_eval_every_logs_validation_during_training(watched):
    m = _metrics(watched)
    # log_every=5 logs steps 1 and 5; validated steps (2, 4, 6; 6 the last) are logged too
    assert sorted(m) == [1, 2, 4, 5, 6]
    assert [s for s in sorted(m) if "val/loss" in m[s]] == [2, 4, 6]
    summary = json.loads((watched / "summary.json").read_text())
    assert summary["val"]["loss"] == m[6]["val/loss"]  # the end's validation is the last step's
    assert summary["steps"] == 6


def test_every_run_draws_its_curves(watched):
    assert (watched / "plots" / "curves.png").read_bytes().startswith(PNG)


def test_validation_leaves_training_as_it_was(world, watched, tmp_path):  # noqa: F811
    out = tmp_path / "plain"
    assert run(_sfe_args(world, out, "--val", str(world["qa"]), "train.max_steps=6", "train.log_every=5")) == 0
    a, b = _metrics(watched), _metrics(out)
    assert sorted(b) == [1, 5, 6] and "val/loss" in b[6] and "val/loss" not in b[5]
    for s in b:
        assert a[s]["loss"] == pytest.approx(b[s]["loss"], rel=1e-6), f"step {s}"
    assert a[6]["val/loss"] == pytest.approx(b[6]["val/loss"], rel=1e-6)


def test_a_run_without_matplotlib_notes_it_and_trains(world, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    out = tmp_path / "run"
    assert run(_sfe_args(world, out, "train.max_steps=4", "train.save_every=2")) == 0
    err = capsys.readouterr().err
    assert err.count("matplotlib is not installed") == 1  # said once, not at every save
    assert (out / "checkpoint").is_dir() and not (out / "plots").exists()


def test_resume_loads_every_file_with_weights_only(world, watched, tmp_path, monkeypatch):  # noqa: F811
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(watched, cut)
    shutil.rmtree(cut / "checkpoint")  # as if killed after the state of step 3
    loads = []
    real = torch.load

    def spy(*a, **kw):
        loads.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    assert run(_sfe_args(world, cut, "--val", str(world["qa"]), "train.max_steps=6", "train.eval_every=2",
                         "train.save_every=3", "train.log_every=5", "--resume", "auto")) == 0
    assert loads and all(w is True for w in loads)
    assert _metrics(cut)[6]["loss"] == pytest.approx(_metrics(watched)[6]["loss"], rel=1e-5)


# ---- TensorBoard -------------------------------------------------------------------------------------


def test_report_to_tensorboard_writes_event_files(world, tmp_path):  # noqa: F811
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'sage-cli[tensorboard]')")
    out = tmp_path / "run"
    assert run(_sfe_args(world, out, "train.max_steps=3", "train.report_to=[tensorboard]")) == 0
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))


def test_report_to_without_tensorboard_is_one_line_naming_the_extra(world, tmp_path, capsys, monkeypatch):  # noqa: F811
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    out = tmp_path / "run"
    assert run(_sfe_args(world, out, "train.report_to=[tensorboard]")) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install 'sage-cli[tensorboard]'" in err and err.count("\n") == 1
    assert not out.exists()


def test_report_to_takes_only_known_trackers(world, tmp_path, capsys):  # noqa: F811
    assert run(_sfe_args(world, tmp_path / "run", "train.report_to=[tensorbord]")) == 1
    assert "did you mean 'tensorboard'" in capsys.readouterr().err


# ---- the bars of the passes before training ------------------------------------------------------------


def test_feature_cache_and_reference_passes_report_their_progress(world, tmp_path):  # noqa: F811
    """Run.run(phase=...) is given one bar per pass; the command draws them with rich, on a terminal only."""
    import contextlib

    from sage_cli.config import load_recipe
    from sage_cli.train.trainer import Run

    assert run(_sfe_args(world, tmp_path / "sfe", "train.max_steps=2")) == 0
    cfg = load_recipe("sage-smol", "edpo", [f"model.backbone={world['vlm']}", f"data.train={world['pairs']}",
                                            f"data.facts={world['facts']}", f"model.checkpoint={tmp_path / 'sfe/checkpoint'}",
                                            "train.batch_size=2", "train.max_steps=2"])
    bars = {}

    @contextlib.contextmanager
    def phase(label, total):
        bars[label] = [total, 0]
        yield lambda n: bars[label].__setitem__(1, bars[label][1] + n)

    (tmp_path / "edpo").mkdir()
    r = Run("edpo", cfg, tmp_path / "edpo", cache_root=tmp_path / "cache")
    r.run(phase=phase)
    assert set(bars) == {"feature cache", "E-DPO reference log-probs (train)"}
    assert all(total == done > 0 for total, done in bars.values())
    assert r.features.misses == bars["feature cache"][0]  # the fill encoded every image once, training none


def test_the_bars_are_hidden_when_stderr_is_not_a_terminal(world, tmp_path, capsys):  # noqa: F811
    assert run(_sfe_args(world, tmp_path / "run", "train.max_steps=2")) == 0
    assert "feature cache" not in capsys.readouterr().err


# ---- rough edges -------------------------------------------------------------------------------------------


def test_dry_run_without_data_shows_the_model_and_says_what_is_missing(world, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert run(["train", "sfe", f"model.backbone={world['vlm']}", "--out", str(out), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "adapter" in err and "fusion" in err and "trainable" in err  # the model's part of the plan
    assert "missing:" in err and "no training data" in err and "data.facts" in err
    assert not out.exists()


def test_fact_fusion_without_facts_is_refused_before_any_work(world, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    args = [a for a in _sfe_args(world, out) if a not in ("--facts", str(world["facts"]))]
    assert run(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.facts_mode=fe" in err and err.count("\n") == 1
    assert not out.exists()
    assert run([*args, "model.facts_mode=none", "--dry-run"]) == 0  # no fusion: no facts needed
