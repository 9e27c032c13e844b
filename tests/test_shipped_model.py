"""The sage-smol checkpoint shipped in the package: it loads by default and tells the bundled real pairs apart.

The bundled photos are real hazelnuts (CC BY 4.0, see sage_cli/assets/hazelnut_pair/ATTRIBUTION.md):
a defect the model never trained on (training used synthetic defects only), its normal reference, and
a normal test photo of the test split.
"""

import json

import pytest
from PIL import Image

from sage_cli.bench.verdict import verdict
from sage_cli.cli import run
from sage_cli.models import checkpoint

PAIR = checkpoint.shipped_dir().parent / "hazelnut_pair"
DEFECT, REFERENCE, NORMAL = PAIR / "crack.jpg", PAIR / "reference.jpg", PAIR / "good.jpg"
QUESTION = "Is there any defect on the test object?"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (checkpoint.shipped_dir() / checkpoint.CONFIG).is_file(),
                       reason="this install has no shipped sage-smol checkpoint"),
]


def test_the_shipped_checkpoint_is_small_and_documented():
    ship = checkpoint.shipped_dir()
    config = checkpoint.read_config(ship)
    assert config["backbone"] == "sage-smol" and config["stage"] == "edpo"
    assert config["wordings"] == "sage-wordings/2"  # the question bank it trained on (prefs/wordings.py)
    assert (ship / checkpoint.WEIGHTS).stat().st_size <= 25 * 2**20
    card = (ship / "MODEL_CARD.md").read_text(encoding="utf-8")
    for must in ("CC BY 4.0", "Apache-2.0", "CC0", "recipes/release/sage-smol.sh", "AUROC"):
        assert must in card


def _ask(capsys, test, tmp_path):
    rc = run(["infer", str(test), str(REFERENCE), "-q", QUESTION, "--json", "--max-new-tokens", "32",
              "--heatmap", str(tmp_path / "heatmap.png")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["checkpoint"] == str(checkpoint.shipped_dir())  # the default, no flags needed
    return out


def test_the_defective_pair_gets_yes_and_the_normal_pair_no(capsys, tmp_path):
    """`make infer`'s crack and the bundled normal photo (neither trained on): issue #22's line, P(yes) >= 0.8
    on the crack and <= 0.2 on the normal photo (the card: 0.913 and 0.014), with the verdict in words."""
    bad = _ask(capsys, DEFECT, tmp_path)
    a = bad["answers"][0]
    assert verdict(a["answer"], QUESTION)[0] is True and a["p_yes"] >= 0.8, a
    assert Image.open(tmp_path / "heatmap.png").size == Image.open(DEFECT).size
    good = _ask(capsys, NORMAL, tmp_path)
    b = good["answers"][0]
    assert verdict(b["answer"], QUESTION)[0] is False and b["p_yes"] <= 0.2, b
    assert bad["facts"] == good["facts"] and len(bad["facts"]) == 8  # the shipped facts.txt, as no facts were given
