"""`sage data ls` through typer's CliRunner."""

from __future__ import annotations

import json

import pytest
import typer
from conftest import (
    TINY_DEFECT_BOX,
    make_qa_root,
    make_tiny_manta,
    make_tiny_mmad,
    make_tiny_visa,
    manta_record,
    mmad_entry,
    qa_group,
    truncate,
    write_image,
    write_mask,
)
from typer.testing import CliRunner

from sage_cli.errors import SageError

runner = CliRunner()


def _app():
    """The real CLI when it is importable; otherwise a stand-in that registers `data ls` the same way."""
    try:
        from sage_cli.cli import app

        return app
    except ImportError:
        from sage_cli.commands.data_ls import ls

        app, data = typer.Typer(), typer.Typer()
        data.command("ls")(ls)
        app.add_typer(data, name="data")
        return app


def sage(*args):
    """(exit code, everything the user would see, stdout); a SageError counts as printed."""
    r = runner.invoke(_app(), ["data", "ls", *map(str, args)], env={"COLUMNS": "200"})
    text = r.output
    if isinstance(r.exception, SageError):
        text += f"\nerror: {r.exception}"
    elif r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, text, r.stdout


def test_ls_table_on_hazelnut(hazelnut_root):
    code, out, _ = sage(hazelnut_root)
    assert code == 0, out
    assert "mvtec" in out and "hazelnut" in out
    assert "colour 17" in out and "crack 1" in out
    assert "28" in out and "18" in out
    assert "no problems found" in out


def test_ls_json_on_tiny_mvtec(make_tiny_mvtec):
    root = make_tiny_mvtec(defects={"scratch": 2, "dent": 1})
    code, _, stdout = sage(root, "--json", "--seed", 3)
    assert code == 0
    s = json.loads(stdout)
    assert s["format"] == "mvtec" and s["records"] == 8 and s["seed"] == 3
    assert s["categories"]["widget"] == {"train": {"good": 4}, "test": {"good": 1, "dent": 1, "scratch": 2}, "masks": 3}
    assert s["problems"] == {"count": 0, "items": []}


def test_ls_reports_skipped_items(make_tiny_mvtec):
    root = make_tiny_mvtec()
    (root / "widget/ground_truth/scratch/000_mask.png").unlink()
    write_mask(root / "widget/ground_truth/scratch/001_mask.png", size=(8, 8), box=(0, 0, 2, 2))
    code, out, _ = sage(root)
    assert code == 0
    assert "skipped 2 item(s) with problems" in out
    assert "widget/test/scratch/000.png" in out and "8x8" in out


def test_ls_strict_stops_with_one_line(make_tiny_mvtec):
    root = make_tiny_mvtec()
    write_mask(root / "widget/ground_truth/scratch/007_mask.png", box=TINY_DEFECT_BOX)
    code, out, _ = sage(root, "--strict")
    assert code != 0
    assert "007_mask.png" in out and "no test image" in out


def test_ls_check_finds_truncated_image(make_tiny_mvtec):
    root = make_tiny_mvtec()
    truncate(write_image(root / "widget/test/good/000.png", (64, 64), (5, 6, 7)))
    code, out, _ = sage(root)
    assert code == 0 and "no problems found" in out
    code, _, stdout = sage(root, "--check", "--json")
    s = json.loads(stdout)
    assert s["problems"]["count"] == 1 and "widget/test/good/000.png" in s["problems"]["items"][0]
    code, out, _ = sage(root, "--check", "--strict")
    assert code != 0 and "truncated" in out


def test_ls_missing_root(tmp_path):
    code, out, _ = sage(tmp_path / "nope")
    assert code != 0 and "no such directory" in out


def test_ls_unknown_layout(tmp_path):
    code, out, _ = sage(tmp_path)
    assert code != 0 and "unknown dataset layout" in out and "mvtec:" in out


def test_ls_unknown_format(make_tiny_mvtec):
    code, out, _ = sage(make_tiny_mvtec(), "--format", "coco")
    assert code != 0 and "known formats" in out


@pytest.mark.parametrize("fmt", ["manta", "qa", "mmad", "visa"])
def test_ls_other_formats(tmp_path, fmt):
    from sage_cli.data.qa_jsonl import write_qa_jsonl

    if fmt == "manta":
        zero_shot = manta_record(pair_type="Deep diagnosis", reference_image=None)
        root = make_tiny_manta(tmp_path / "m", [manta_record(), zero_shot])
        expect = ["grain/rice", "Diag"]
    elif fmt == "qa":
        root = make_qa_root(tmp_path / "q")
        write_qa_jsonl(root / "g.jsonl", [qa_group(0), qa_group(1)])
        expect = ["grain/rice", "Ident"]
    elif fmt == "mmad":
        root = make_tiny_mmad(tmp_path / "d", {"MVTec-AD/bottle/test/broken/000.png": mmad_entry()})
        expect = ["MVTec-AD/bottle", "Anomaly Detection 1"]
    else:
        root = make_tiny_visa(tmp_path / "v")
        expect = ["candle", "chunk of wax missing 1"]
    code, out, _ = sage(root)
    assert code == 0, out
    assert f"format {fmt}" in out
    for e in expect:
        assert e in out
    code, _, stdout = sage(root, "--json", "--format", fmt)
    assert code == 0 and json.loads(stdout)["format"] == fmt


def test_ls_error_is_one_line_on_stderr(tmp_path, capsys):
    cli = pytest.importorskip("sage_cli.cli", reason="sage_cli.cli not importable yet")
    if not hasattr(cli, "run"):
        pytest.skip("sage_cli.cli has no run() yet")
    rc = cli.run(["data", "ls", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "no such directory" in err
