"""Crash-safe writes: complete or absent, never half-written, and readable by others as
the umask says (mkstemp alone makes 0600 files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flare_lightning.atomic import atomic_directory, atomic_write, atomic_write_files


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_files_get_the_umask_mode_and_replace_atomically(tmp_path, umask):
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, lambda f: f.write(b"one"))
    assert path.read_bytes() == b"one" and path.stat().st_mode & 0o777 == 0o666 & ~umask
    atomic_write(path, lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]  # no temp files
    with atomic_directory(tmp_path / "dir") as tmp:
        (tmp / "x").write_bytes(b"x")
    assert (tmp_path / "dir").stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_failed_write_leaves_the_old_files_and_no_temp(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write_files({a: lambda f: f.write(b"new"), b: boom})
    assert a.read_bytes() == b"old" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_atomic_path_renames_with_the_umask_and_leaves_nothing_on_failure(tmp_path):
    import os
    import stat

    from flare_lightning.atomic import atomic_path

    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "out.vtu", suffix=".vtu") as tmp:
            Path(tmp).write_text("data")
    finally:
        os.umask(old)
    assert (tmp_path / "out.vtu").read_text() == "data"
    assert stat.S_IMODE((tmp_path / "out.vtu").stat().st_mode) == 0o640
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.vtu") as tmp:
        Path(tmp).write_text("half")
        raise RuntimeError("writer failed")
    assert (tmp_path / "out.vtu").read_text() == "data"  # the old file stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.vtu"]  # no temporary left
