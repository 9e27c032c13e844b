"""Values more than one command shares: the default question and the bundled photos."""

from __future__ import annotations

from pathlib import Path

# What `sage infer` and `sage serve` ask without -q, and what `sage bench` asks a group with no detection question.
DEFAULT_QUESTION = "Is there any defect on the test object?"

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE = ASSETS / "hazelnut_sample"  # real hazelnut photos in MVTec layout (CC BY 4.0): the toy data set
PAIR = ASSETS / "hazelnut_pair"  # one crack and its normal reference: `make infer`
