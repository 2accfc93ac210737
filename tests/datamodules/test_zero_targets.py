"""A sample whose target is zero everywhere has no relative error: refused when the data is
read, naming the sample, instead of training to a relative L2 of 5e4 without a word."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.checks import DataFormatError
from datamodules.darcy import DarcyDataModule
from datamodules.darcy_generate import generate_darcy, write_darcy_mat


def test_all_zero_targets_are_refused(tmp_path):
    coeff, sol = generate_darcy(6, 9, seed=0)
    sol[3] = 0.0
    write_darcy_mat(tmp_path / "train.mat", coeff, sol)
    write_darcy_mat(tmp_path / "test.mat", *generate_darcy(2, 9, seed=1))
    dm = DarcyDataModule(root=str(tmp_path), train_file="train.mat", test_file="test.mat", n_train=4, n_val=2,
                         n_test=2, stride=1, generate=False)
    with pytest.raises(DataFormatError, match=r"train.mat: sample 3: the target y is zero everywhere"):
        dm.setup("fit")
    assert np.any(sol[:3])  # the other samples were fine
