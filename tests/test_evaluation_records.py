"""Later commands on a run's checkpoints: each writes into its own folder, saying what it
evaluated (the checkpoint's own model, on the dataset it was trained on), never over the
fit's records; every checkpoint given by path gets the project's checks and messages."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from flare_lightning.runs.checkpoint_io import CheckpointError, UnsafeCheckpointError
from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args

QUICK = f"--config={CONFIGS / 'quickstart.yaml'}"
SMALL = ["--model.model.init_args.channels=8", "--model.model.init_args.num_blocks=1",
         "--model.model.init_args.num_heads=2", "--model.model.init_args.num_latents=4"]
QUIET = ["--trainer.callbacks=[]", "--trainer.accelerator=cpu"]
RECORDS = ("config.yaml", "hparams.yaml", "run_info.json", "metrics.csv", "test_metrics.json")


@pytest.fixture(scope="module")
def fitted(tiny_darcy_root, tmp_path_factory):
    """A finished run of a small model (8 channels; the quickstart config says 48)."""
    out = tmp_path_factory.mktemp("evaluated")
    run_cli(["fit", QUICK, *SMALL, *QUIET, *tiny_darcy_args(tiny_darcy_root, n_test=3), "--trainer.max_epochs=1",
             *tiny_trainer_args(out, "r")])
    run = out / "r" / "version_0"
    return out, run, {name: (run / name).read_bytes() for name in RECORDS}


def evaluate(sub: str, out: Path, root: Path, *extra: str, n_test: int = 3):
    return run_cli([sub, QUICK, *QUIET, *tiny_darcy_args(root, n_test=n_test), *tiny_trainer_args(out, "r"), *extra])


def test_later_test_on_other_data_writes_its_own_record(fitted, tiny_darcy_root):
    out, run, before = fitted
    evaluate("test", out, tiny_darcy_root, f"--ckpt_path={run / 'checkpoints' / 'best.ckpt'}", n_test=1)
    assert {name: (run / name).read_bytes() for name in RECORDS} == before, "a later test replaced the fit's records"
    record = json.loads((run / "test" / "version_0" / "test_metrics.json").read_text())
    assert record["data"]["split_sizes"]["test"] == 1
    assert record["checkpoint"]["path"] == str((run / "checkpoints" / "best.ckpt").resolve())


def test_testing_a_checkpoint_builds_its_own_model_and_says_so(fitted, tiny_darcy_root, caplog):
    """The config says 48 channels, the checkpoint 8: the checkpoint's model is tested (as for
    --ckpt_path best), and the record names it; an explicit run-time option is kept."""
    out, run, before = fitted
    cli = evaluate("test", out, tiny_darcy_root, "--ckpt_path=last", "--model.model.init_args.eval_chunk_size=50")
    assert cli.model.model.norm_out.normalized_shape == (8,) and cli.model.model.eval_chunk_size == 50
    folder = sorted((run / "test").glob("version_*"))[-1]
    record = json.loads((folder / "test_metrics.json").read_text())
    assert record["model"]["init_args"]["channels"] == 8
    assert "model.model.init_args.channels 8 (config: 48)" in caplog.text
    assert {name: (run / name).read_bytes() for name in RECORDS} == before


def test_an_explicit_model_option_is_not_silently_replaced(fitted, tiny_darcy_root):
    """--model options given on the command line win over the checkpoint's (given by path, whose
    hyperparameters Lightning used to put in their place): a size that does not fit the weights
    fails, leaving nothing that describes an evaluation that did not happen."""
    out, run, _ = fitted
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(RuntimeError, match="size mismatch"):
        evaluate("test", out, tiny_darcy_root, f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                 "--model.model.init_args.channels=16")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_a_checkpoint_of_another_dataset_is_refused(fitted, tiny_darcy_root, tmp_path):
    """An LPBF model (3 inputs, 1 output, like Darcy's) predicting Darcy meshes."""
    out, run, _ = fitted
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["flare_config"]["data"]["class_path"] = "datamodules.LPBFDataModule"
    torch.save(ckpt, tmp_path / "lpbf.ckpt")
    for sub in ("predict", "test"):
        with pytest.raises(CheckpointError, match="was trained on datamodules.LPBFDataModule, but this config's data is"):
            evaluate(sub, out, tiny_darcy_root, f"--ckpt_path={tmp_path / 'lpbf.ckpt'}")


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def bad_checkpoint(kind: str, path: Path, good: Path) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:2000])
    elif kind == "state dict":
        torch.save(torch.load(good, weights_only=True)["state_dict"], path)
    else:
        torch.save({"state_dict": {}, "evil": _Payload()}, path)


@pytest.mark.parametrize("sub", ["test", "fit"])
@pytest.mark.parametrize("kind, error, match", [
    ("empty", CheckpointError, "is empty"),
    ("truncated", CheckpointError, "is damaged or not a torch checkpoint"),
    ("state dict", CheckpointError, "is not a Lightning checkpoint written by flare fit"),
    ("pickle", UnsafeCheckpointError, "weights-only loading refuses"),
])
def test_checkpoints_given_by_path_get_the_projects_checks(fitted, tiny_darcy_root, tmp_path, sub, kind, error, match):
    out, run, _ = fitted
    path = tmp_path / f"{kind}.ckpt"
    bad_checkpoint(kind, path, run / "checkpoints" / "last.ckpt")
    with pytest.raises(error, match=match) as err:
        evaluate(sub, out, tiny_darcy_root, f"--ckpt_path={path}")
    assert str(path) in str(err.value) and "weights_only=False will likely succeed" not in str(err.value)
    assert not isinstance(err.value, (EOFError, KeyError, pickle.UnpicklingError)) or error is UnsafeCheckpointError


def test_predict_writes_one_file_per_mesh_and_cleans_an_interrupted_ones_temporaries(fitted, tiny_darcy_root, tmp_path, caplog):
    out, run, _ = fitted
    meshes, written = tmp_path / "meshes", tmp_path / "written"
    meshes.mkdir()
    rng = np.random.default_rng(0)
    for name in ("mesh.v1", "mesh.v2"):
        np.savez(meshes / f"{name}.npz", pos=rng.uniform(size=(7, 2)), x=rng.uniform(3, 12, (7, 1)))
    written.mkdir()
    (written / ".mesh.v1.vtu.k1ll3d.vtu").write_bytes(b"half a file")  # what a killed predict leaves
    evaluate("predict", out, tiny_darcy_root, "--ckpt_path=last", f"--data.init_args.predict_files={meshes}",
             f"--prediction_writer.output_dir={written}")
    assert sorted(p.name for p in written.iterdir()) == ["mesh.v1.vtu", "mesh.v2.vtu"]
    assert f"written to {written} (2 files" in caplog.text


def test_predictions_that_are_not_finite_are_not_written(fitted, tiny_darcy_root, tmp_path):
    out, run, _ = fitted
    meshes, written = tmp_path / "meshes", tmp_path / "written"
    meshes.mkdir()
    np.savez(meshes / "far.npz", pos=np.full((5, 2), 3e38), x=np.ones((5, 1)))
    with pytest.raises(FloatingPointError, match="the prediction for far holds 5 NaN/Inf values: not written"):
        evaluate("predict", out, tiny_darcy_root, "--ckpt_path=last", f"--data.init_args.predict_files={meshes}",
                 f"--prediction_writer.output_dir={written}")
    assert not written.exists() or list(written.iterdir()) == []
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    name = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], float("nan"))
    torch.save(ckpt, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointError, match=f"weight '{name}' holds NaN or Inf values"):
        evaluate("predict", out, tiny_darcy_root, f"--ckpt_path={tmp_path / 'nan.ckpt'}",
                 f"--data.init_args.predict_files={meshes}", f"--prediction_writer.output_dir={written}")
