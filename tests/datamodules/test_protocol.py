"""The split protocol every datamodule follows: ``n_val: 0`` means no validation (never
the test split), splits never share a sample, and the test split is read and checked in
``setup("fit")``, before the first training step."""

from __future__ import annotations

import shutil

import lightning as L
import numpy as np
import pytest

from datamodules.checks import DataFormatError
from flare_lightning.models import FLARE
from flare_lightning.training.module import SurrogateModule
from tests.datamodules.tiny_data import KINDS, drivaerml_run, lpbf_case, tiny, write_lpbf_case


@pytest.mark.parametrize("kind", KINDS)
def test_n_val_zero_means_no_validation_at_all(tmp_path, kind):
    data = tiny(kind, tmp_path)
    dm = data.datamodule(n_val=0)
    dm.prepare_data()
    dm.setup("fit")
    assert not dm.has_val and "val" not in dm.datasets
    assert dm.val_dataloader() == []  # Lightning skips validation; nothing falls back to the test split
    with pytest.raises(ValueError, match="n_val=0, so there is no validation split"):
        data.datamodule(n_val=0).setup("validate")
    assert data.datamodule(n_val=1).has_val


@pytest.mark.parametrize("kind", KINDS)
def test_bad_test_file_fails_setup_fit(tmp_path, kind):
    data = tiny(kind, tmp_path)
    data.set_test_value(np.nan)
    dm = data.datamodule()
    dm.prepare_data()
    with pytest.raises(DataFormatError, match=rf"{data.test_file.name}.*NaN/Inf"):
        dm.setup("fit")


class _CountSteps(L.Callback):
    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_start(self, *args) -> None:
        self.steps += 1


def _fit(dm, counter: _CountSteps) -> None:
    model = FLARE(in_dim=dm.in_dim, out_dim=dm.out_dim, channels=8, num_blocks=1, num_heads=2, num_latents=4)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[counter], accelerator="cpu", devices=1)
    trainer.fit(SurrogateModule(model, in_dim=dm.in_dim, out_dim=dm.out_dim), datamodule=dm)


def test_nan_in_test_file_fails_fit_before_any_step_and_n_val_zero_fits(tmp_path):
    data = tiny("darcy", tmp_path)
    counter = _CountSteps()
    _fit(data.datamodule(n_val=0), counter)  # trains with no validation loader at all
    assert counter.steps == 2
    data.set_test_value(np.nan)
    counter = _CountSteps()
    with pytest.raises(DataFormatError, match=r"test.mat: key 'sol' has 1 NaN/Inf"):
        _fit(data.datamodule(n_val=0), counter)
    assert counter.steps == 0


def test_darcy_refuses_the_training_file_as_test_file(tmp_path):
    data = tiny("darcy", tmp_path)
    with pytest.raises(ValueError, match="train_file and test_file are the same file"):
        data.datamodule(test_file="train.mat")
    with pytest.raises(ValueError, match="train_file and test_file are the same file"):
        data.datamodule(test_file="./sub/../train.mat")
    shutil.copy(tmp_path / "train.mat", tmp_path / "copy.mat")  # another name, the same content
    with pytest.raises(ValueError, match=r"the test and train splits overlap: .*copy.mat: sample 0 is the same data as .*train.mat: sample 0"):
        data.datamodule(test_file="copy.mat").setup("fit")


def test_drivaerml_refuses_runs_shared_between_splits(tmp_path):
    data = tiny("drivaerml", tmp_path)
    np.savez(tmp_path / "test" / "run_2.npz", **drivaerml_run(2, n=9))  # run 2 is a training run
    with pytest.raises(DataFormatError, match=r"run 2 is in both the train split .* and the test split"):
        data.datamodule().setup("fit")
    (tmp_path / "test" / "run_2.npz").unlink()
    shutil.copy(tmp_path / "train" / "run_1.npz", tmp_path / "test" / "run_99.npz")  # a copy under another id
    with pytest.raises(ValueError, match=r"the test and train splits overlap: .*run_99.npz \(run 99\)"):
        data.datamodule().setup("fit")
    shutil.copy(tmp_path / "train" / "run_3.npz", tmp_path / "test" / "run_99.npz")  # run 3 is validation
    with pytest.raises(ValueError, match=r"the test and val splits overlap"):
        data.datamodule().setup("fit")


def test_lpbf_refuses_a_case_in_both_folders(tmp_path):
    data = tiny("lpbf", tmp_path)
    shutil.copy(tmp_path / "train" / "case00000.npz", tmp_path / "test" / "case00099.npz")
    with pytest.raises(ValueError, match=r"the test and train splits overlap: .*test/case00099.npz is the same data as .*train/case00000.npz"):
        data.datamodule().setup("fit")
    write_lpbf_case(tmp_path / "test" / "case00099.npz", lpbf_case(99))
    data.datamodule().setup("fit")  # distinct cases are fine, whatever their names


def test_elasticity_splits_never_overlap(tmp_path):
    data = tiny("elasticity", tmp_path)
    with pytest.raises(DataFormatError, match="would overlap the last n_test"):
        data.datamodule(n_train=6, n_val=2).setup("fit")
