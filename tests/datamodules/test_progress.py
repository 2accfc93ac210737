"""Data generation and cache building show progress (counts, ETA) on rank 0 only."""

from __future__ import annotations

import sys

import pytest

from datamodules import progress as progress_mod
from datamodules.darcy_generate import generate_darcy
from datamodules.progress import is_rank_zero
from tests.datamodules.tiny_data import tiny


def test_generation_and_processing_show_counts_on_rank_zero(tmp_path, capfd):
    generate_darcy(3, 5, seed=0)
    err = capfd.readouterr().err
    assert "Darcy samples (5x5)" in err and "3/3" in err
    tiny("lpbf", tmp_path).datamodule().setup("fit")
    err = capfd.readouterr().err
    assert "LPBFDataset: processing into lpbfdataset_" in err and "3/3" in err and "2/2" in err


def test_other_ranks_are_silent(tmp_path, capfd, monkeypatch):
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)  # as Lightning sets it on rank 1
    assert not is_rank_zero()
    generate_darcy(2, 5, seed=0)
    tiny("darcy", tmp_path).datamodule().setup("fit")
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("var", ["RANK", "LOCAL_RANK", "SLURM_PROCID"])
def test_launcher_rank_before_lightning_sets_it(monkeypatch, var):
    monkeypatch.delitem(sys.modules, "lightning.fabric.utilities.rank_zero", raising=False)
    for v in progress_mod._RANK_VARS:
        monkeypatch.delenv(v, raising=False)
    assert is_rank_zero()
    monkeypatch.setenv(var, "2")
    assert not is_rank_zero()
