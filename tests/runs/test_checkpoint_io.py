"""Checkpoint files: written in their destination folder and renamed, so a kill during a
save leaves the previous checkpoint whole; read weights-only with errors naming the file."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from flare_lightning.runs import checkpoint_io
from flare_lightning.runs.checkpoint_io import SafeCheckpointIO, load_checkpoint
from tests.helpers import REPO


def lightning_ckpt(w: torch.Tensor) -> dict:
    """The smallest dict that loads as a Lightning checkpoint: weight ``w``."""
    return {"state_dict": {"w": w}, "pytorch-lightning_version": "2.6.6", "epoch": 0, "global_step": 0}


def test_checkpoint_bytes_go_to_a_temp_file_in_the_destination_folder(tmp_path, monkeypatch):
    where = []
    real_save = torch.save

    def spy(obj, f, *args, **kwargs):
        where.append(Path(getattr(f, "name", "<memory>")))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", spy)
    path = tmp_path / "checkpoints" / "last.ckpt"
    SafeCheckpointIO().save_checkpoint(lightning_ckpt(torch.arange(3)), path)
    assert len(where) == 1 and where[0].parent == path.parent and where[0] != path, where
    assert torch.equal(SafeCheckpointIO().load_checkpoint(path)["state_dict"]["w"], torch.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_failed_save_keeps_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint(lightning_ckpt(torch.zeros(4)), path)

    def broken(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # Ctrl-C or a signal in the middle of the write

    monkeypatch.setattr(checkpoint_io.torch, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        SafeCheckpointIO().save_checkpoint(lightning_ckpt(torch.ones(4)), path)
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.zeros(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.slow
def test_kill_during_save_leaves_old_checkpoint_intact(tmp_path):
    path = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint(lightning_ckpt(torch.zeros(4)), path)
    script = textwrap.dedent(f"""
        import os, signal, torch
        from flare_lightning.runs import checkpoint_io
        def killed(obj, f, *a, **k):
            f.write(b"x" * 4096); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint_io.torch.save = killed
        checkpoint_io.SafeCheckpointIO().save_checkpoint({{"w": torch.ones(4)}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.zeros(4)), "the old checkpoint was damaged"
    orphans = [p for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert len(orphans) == 1 and orphans[0].name.startswith(".last.ckpt.")  # cleaned at the next fit's start


def test_checkpoint_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        SafeCheckpointIO().save_checkpoint(lightning_ckpt(torch.zeros(1)), tmp_path / "a.ckpt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.ckpt").stat().st_mode) == 0o640


@pytest.mark.parametrize("content, match", [(b"", "is empty"), (b"PK\x03\x04 truncated", "damaged or not a torch checkpoint")])
def test_damaged_checkpoint_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "last.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def _damaged(tmp_path: Path) -> dict[str, object]:
    """Checkpoints a careless user or a failed job leaves around, by what is wrong with them."""
    good = lightning_ckpt(torch.zeros(3))
    nan = lightning_ckpt(torch.tensor([0.0, float("nan")]))
    stats = {**good, "state_dict": {"input_norm.std": torch.tensor([1.0, 0.0]), "input_norm.fitted": torch.tensor(True)}}
    foreign = {**good, "hyper_parameters": {"_instantiator": "os.system"}}
    return {"plain state dict": {"w": torch.zeros(3)}, "NaN weights": nan, "zero std": stats, "instantiator": foreign}


@pytest.mark.parametrize("what, match", [
    ("plain state dict", "not a Lightning checkpoint written by flare fit"),
    ("NaN weights", "weight 'w' holds NaN or Inf"),
    ("zero std", "zero or negative standard deviation"),
    ("instantiator", "_instantiator 'os.system'"),
])
def test_unusable_checkpoints_are_refused_naming_the_file(tmp_path, what, match):
    path = tmp_path / "x.ckpt"
    torch.save(_damaged(tmp_path)[what], path)
    with pytest.raises(checkpoint_io.CheckpointError, match=match) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save(lightning_ckpt(torch.zeros(1000)), path)
    path.write_bytes(path.read_bytes()[:900])
    with pytest.raises(checkpoint_io.CheckpointError, match="damaged or not a torch checkpoint") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_full_disk_during_a_save_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint(lightning_ckpt(torch.zeros(4)), path)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):  # what a full disk does to torch.save's writes
        write = f.write
        f.write = lambda b: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")) if f.tell() > 64 else write(b)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write .*last.ckpt: No space left on device \(the disk is full\)") as err:
        SafeCheckpointIO().save_checkpoint(lightning_ckpt(torch.ones(1000)), path)
    assert "unexpected pos" not in str(err.value) and err.value.errno == errno.ENOSPC
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.zeros(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
