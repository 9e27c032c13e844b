"""The one protocol every data-set reader follows: a name, what its records are, how to recognise a root,
how to read it. Each reader module (mvtec, visa, manta, mmad, qa_jsonl) ends with its `READER`;
`formats.py` lists them in the order a root is recognised."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Reader:
    name: str  # the --format name
    kind: str  # what the records are: "image" (ImageRecord), "qa" (QAGroup) or "mmad" (MMADItem)
    layout: str  # the folder layout in words, for errors and help
    recognise: Callable[[Path], bool]
    read_records: Callable[..., Iterable]  # (root, problems, [seed=...,] check_images=...)
    seeded: bool = False  # the reader picks reference images with a seed
    file_ok: bool = False  # ROOT may be a single file

    def read(self, root: Path, problems, seed: int = 0, check_images: bool = False) -> Iterable:
        extra = {"seed": seed} if self.seeded else {}
        return self.read_records(root, problems, check_images=check_images, **extra)
