"""atomic: an interrupted write leaves the old file or folder whole and no temporary behind."""

import os

import pytest

from sage_cli.atomic import replacing, swap_in_dir, write_text


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.jsonl"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_new_file_gets_umask_mode_and_old_file_keeps_its_mode(tmp_path):
    target = tmp_path / "a" / "new.txt"
    write_text(target, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    os.chmod(target, 0o640)
    write_text(target, "y")
    assert target.read_text() == "y" and target.stat().st_mode & 0o777 == 0o640


def test_swap_in_dir_replaces_a_folder_whole(tmp_path):
    dest, new = tmp_path / "ckpt", tmp_path / "tmp"
    dest.mkdir()
    (dest / "stale.bin").write_text("old")
    new.mkdir()
    (new / "model.bin").write_text("new")
    swap_in_dir(new, dest)
    assert [p.name for p in dest.iterdir()] == ["model.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
