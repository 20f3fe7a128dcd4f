"""tasks.atomic: a failed write leaves the previous file and no temporary behind."""

from __future__ import annotations

import pytest

from tasks.atomic import atomic_write


def test_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "sub" / "a.bin"
    atomic_write(path, lambda p: p.write_bytes(b"one"))
    atomic_write(path, lambda p: p.write_bytes(b"two"))
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["a.bin"]


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def half_then_crash(p):
        p.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_crash)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]
