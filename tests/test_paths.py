"""paths.inside: record paths may not climb out of the root, but user-made links are followed."""

import os

import pytest

from sage_cli.data.paths import inside
from sage_cli.errors import SageError


@pytest.mark.parametrize("rel", ["../x.png", "a/../../x.png", "/etc/passwd", ".."])
def test_escaping_paths_are_refused(tmp_path, rel):
    with pytest.raises(SageError, match="escapes the dataset root"):
        inside(tmp_path, rel)


def test_inner_paths_and_links_are_accepted(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "img.png").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "linked")  # how MMAD's instructions assemble a root
    assert inside(root, "linked/img.png").read_bytes() == b"x"
    assert inside(root, "a/./b/../c.png") == root / "a" / "c.png"
