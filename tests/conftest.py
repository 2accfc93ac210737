"""Shared fixtures: tiny generated data and a helper that runs the CLI in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
# Without CUDA the Triton kernels run in Triton's interpreter. It is chosen when @triton.jit
# decorates a kernel, so it must be set before any test module imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))



@pytest.fixture(scope="session")
def tiny_darcy_root(tmp_path_factory) -> Path:
    """Generated FNO-layout Darcy files on a 13x13 grid: 12 train+val samples, 4 test."""
    from datamodules.darcy_generate import generate_darcy, write_darcy_mat

    root = tmp_path_factory.mktemp("darcy")
    write_darcy_mat(root / "train.mat", *generate_darcy(12, 13, seed=0))
    write_darcy_mat(root / "test.mat", *generate_darcy(4, 13, seed=1))
    return root
