"""`sage data export` (QA groups and preference pairs as Hugging Face datasets), `sage train` reading
them back, and the one-line errors of malformed training records.

The data is real: the hazelnut photos through `sage prefs build` and `sage score mle --judge offline:sbert`,
trained on a tiny InternVL saved to disk (as tests/test_train.py).
"""

import json
import os
from pathlib import Path

import pytest
from conftest import HAZELNUT_TOY, write_image

from sage_cli.cli import run
from sage_cli.errors import SageError
from sage_cli.train import examples as ex

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def hazel(tmp_path_factory):
    """QA groups and pairs of 3 real hazelnut test photos, and a tiny VLM."""
    if not (HAZELNUT_TOY / "hazelnut").is_dir():
        pytest.skip(f"{HAZELNUT_TOY.resolve()} not found")
    from tiny_models import save_tiny_internvl

    root = tmp_path_factory.mktemp("export")
    os.environ["SAGE_CACHE"] = str(root / "cache")  # feature cache and dataset images stay in tmp
    assert run(["prefs", "build", "--from", str(HAZELNUT_TOY), "--out", str(root / "prefs"), "--limit", "3",
                "--val-frac", "0.34"]) == 0
    assert run(["score", "mle", str(root / "prefs/train.jsonl"), "--out", str(root / "scores"),
                "--judge", "offline:sbert"]) == 0
    yield {"root": root, "vlm": save_tiny_internvl(root / "vlm"), "prefs": root / "prefs",
           "pairs": root / "scores/pairs.jsonl"}
    os.environ.pop("SAGE_CACHE", None)


def _lines(path: Path) -> list[dict]:
    return [json.loads(s) for s in path.read_text().splitlines() if s.strip()]


def _train(stage, w, data, out, *extra):
    return run(["train", stage, f"model.backbone={w['vlm']}", "--train", str(data), "--out", str(out),
                "train.batch_size=2", "train.max_steps=2", "optim.warmup_steps=0", "model.facts_mode=none", *extra])


def test_pairs_export_loads_with_datasets_and_trains_edpo(hazel, capsys):
    import datasets
    from PIL import Image

    out = hazel["root"] / "pairs_hf"
    assert run(["data", "export", str(hazel["pairs"]), "--format", "hf", "--out", str(out)]) == 0
    assert "preference pairs" in capsys.readouterr().out
    ds = datasets.load_from_disk(str(out))
    recs = _lines(hazel["pairs"])
    assert len(ds) == len(recs) > 0
    assert {"images", "prompt", "chosen", "rejected", "delta_h", "kind", "group_id", "q", "chosen_mle"} <= set(ds.column_names)
    assert isinstance(ds.features["images"].feature, datasets.Image)
    row, rec = ds[0], recs[0]
    assert all(isinstance(im, Image.Image) for im in row["images"]) and len(row["images"]) == 2  # test, reference
    assert row["images"][0].size == Image.open(HAZELNUT_TOY / rec["test_image"]).size
    assert row["prompt"][0]["content"][-1]["text"] == rec["question"]
    assert [c["type"] for c in row["prompt"][0]["content"]] == ["image", "image", "text"]
    assert row["chosen"][0] == {"role": "assistant", "content": [{"type": "text", "text": rec["chosen"]}]}
    assert row["delta_h"] == pytest.approx(rec["delta_h"]) and row["kind"] == rec["kind"]

    # the dataset trains as the JSON Lines do: stage 1 from the QA export, stage 2 from this one
    qa = hazel["root"] / "qa_hf"
    assert run(["data", "export", str(hazel["prefs"] / "train.jsonl"), "--format", "hf", "--out", str(qa)]) == 0
    sfe = hazel["root"] / "sfe"
    assert _train("sfe", hazel, qa, sfe) == 0
    edpo = hazel["root"] / "edpo"
    assert _train("edpo", hazel, out, edpo, "--checkpoint", str(sfe / "checkpoint")) == 0
    assert (edpo / "checkpoint/model.safetensors").is_file()
    steps = [json.loads(s)["step"] for s in (edpo / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 2

    # the examples match the JSON Lines ones, images read from the cache by content
    facts = ex.FactsIndex(None)
    from_ds, from_jsonl = (ex.pair_examples(p, None, facts, 1) for p in (out, hazel["pairs"]))
    assert [(e.key, e.question, e.chosen, e.delta_h) for e in from_ds] == \
           [(e.key, e.question, e.chosen, e.delta_h) for e in from_jsonl]
    assert from_ds[0].test.read_bytes() == from_jsonl[0].test.read_bytes()


def test_qa_folder_exports_one_parquet_per_split_and_trains_from_one(hazel, capsys):
    import datasets

    out = hazel["root"] / "qa_parquet"
    assert run(["data", "export", str(hazel["prefs"]), "--format", "parquet", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train.parquet", "val.parquet"]
    ds = datasets.Dataset.from_parquet(str(out / "train.parquet"), cache_dir=str(hazel["root"] / "hf"))
    groups = _lines(hazel["prefs"] / "train.jsonl")
    assert len(ds) == len(groups) and ds[0]["id"] == groups[0]["id"]
    assert ds[0]["questions"][0]["answer"] is groups[0]["questions"][0]["answer"]
    assert len(ex.sfe_examples(out / "train.parquet", None, ex.FactsIndex(None), 1)) == \
           len(ex.sfe_examples(hazel["prefs"] / "train.jsonl", None, ex.FactsIndex(None), 1))

    hf_dict = hazel["root"] / "qa_dict"  # a folder of splits is a DatasetDict; train names one split
    assert run(["data", "export", str(hazel["prefs"]), "--format", "hf", "--out", str(hf_dict)]) == 0
    assert set(datasets.load_from_disk(str(hf_dict))) == {"train", "val"}
    with pytest.raises(SageError, match="name one"):
        ex.sfe_examples(hf_dict, None, ex.FactsIndex(None), 1)
    with pytest.raises(SageError, match="holds QA groups, not preference pairs"):
        ex.pair_examples(hf_dict / "train", None, ex.FactsIndex(None), 1)
    assert len(ex.sfe_examples(hf_dict / "val", None, ex.FactsIndex(None), 0)) > 0


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"),
    ("not_sage", "is not a sage-qa/1 or sage-pairs/1"),
    ("exists", "already exists; pass --overwrite"),
    ("format", "--format must be one of hf, parquet"),
])
def test_bad_export_input_is_one_line(tmp_path, capsys, case, message):
    src = tmp_path / "prefs" / "x.jsonl"
    src.parent.mkdir()
    src.write_text(json.dumps({"format": "sage-scores/1", "group_id": "g"}) + "\n")
    out = tmp_path / "out"
    if case == "exists":
        out.mkdir()
        src.write_text(json.dumps({"format": "sage-pairs/1"}) + "\n")
    args = ["data", "export", str(tmp_path / "nope.jsonl" if case == "missing" else src),
            "--format", "csv" if case == "format" else "hf", "--out", str(out)]
    assert run(args) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary left


# ---- malformed training records: one line naming file and line ----------------------------------------

PAIR = {"format": "sage-pairs/1", "group_id": "g1", "q": 0, "test_image": "t.png", "reference_image": "r.png",
        "question": "Is there a defect?", "chosen": "Yes, a crack.", "rejected": "No.", "delta_h": 0.1, "kind": "min"}
QA = {"format": "sage-qa/1", "id": "g1", "domain": "industrial", "category": "widget", "test_image": "t.png",
      "reference_image": "r.png", "pair_type": "standard",
      "questions": [{"question": "Is there a defect?", "answer": True, "options": ["Yes.", "No.", "Maybe.", "?"]}]}


@pytest.mark.parametrize("stage, change, message", [
    ("pairs", {"delta_h": "abc"}, "delta_h must be a finite number, got 'abc'"),
    ("pairs", {"delta_h": True}, "delta_h must be a finite number"),
    ("pairs", {"test_image": 5}, "test_image must be a string, got 5"),
    ("pairs", {"reference_image": ["r.png"]}, "reference_image must be a string or null"),
    ("pairs", {"chosen": None}, "missing field 'chosen'"),
    ("pairs", {"q": "0"}, "q must be an integer"),
    ("pairs", {"kind": "mid"}, "kind must be min or max"),
    ("qa", {"questions": [{"question": "Is there a defect?", "answer": "yes"}]}, "answer must be true or false"),
    ("qa", {"questions": ["Is there a defect?"]}, "malformed record"),
    ("qa", {"pair_type": None}, "pair_type must be one of"),
])
def test_malformed_training_record_is_one_line_with_file_and_line(tmp_path, stage, change, message):
    write_image(tmp_path / "t.png")
    write_image(tmp_path / "r.png")
    good, bad = dict(PAIR if stage == "pairs" else QA), dict(PAIR if stage == "pairs" else QA)
    bad.update(change)
    if change.get("chosen", "") is None:
        bad.pop("chosen")
    path = tmp_path / f"{stage}.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**bad, "id": "g2", "group_id": "g2"}) + "\n")
    read = ex.pair_examples if stage == "pairs" else ex.sfe_examples
    with pytest.raises(SageError) as e:
        read(path, None, ex.FactsIndex(None), 1)
    text = str(e.value)
    assert message in text and "\n" not in text
    assert f"{path}:2" in text if stage == "pairs" else "qa.jsonl line 2" in text
