"""``flare export`` in both formats: the exported file reproduces ``flare predict`` on a
test mesh to 1e-5, for any number of points and batch size, without this package."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from flare_lightning.cli import cli_main
from flare_lightning.export import ExportedSurrogate, example_inputs, run_exported
from flare_lightning.training.module import SurrogateModule
from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args

TINY = ["--model.model.init_args.channels=16", "--model.model.init_args.num_blocks=2",
        "--model.model.init_args.num_heads=2", "--model.model.init_args.num_latents=4"]


@pytest.fixture(scope="module")
def checkpoint(tiny_darcy_root, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("export_runs")
    run_cli(["fit", f"--config={CONFIGS / 'quickstart.yaml'}", *TINY, *tiny_darcy_args(tiny_darcy_root),
             "--data.init_args.stride=1", "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
             "--test_after_fit=false", "--trainer.callbacks=[]", *tiny_trainer_args(runs, "e")])
    return runs / "e" / "version_0" / "checkpoints" / "last.ckpt"


def test_wrapper_folds_normalisation_and_matches_the_module_on_every_backend(checkpoint):
    module = SurrogateModule.load_from_checkpoint(checkpoint).eval()
    x = example_inputs(module, points=41, seed=3)
    with torch.no_grad():
        want = module(x)
        for backend in ("sdpa", "explicit"):
            torch.testing.assert_close(ExportedSurrogate(module, backend)(x), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mixer_backend must be one of"):
        ExportedSurrogate(module, "triton")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torch_export", "onnx"])
def test_export_reproduces_predict_on_a_mesh(fmt, checkpoint, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    pytest.importorskip("vtk")
    from tests.mesh_files import read_arrays

    rng = np.random.default_rng(0)
    mesh = {"pos": rng.uniform(0, 1, (53, 2)), "x": rng.uniform(3, 12, (53, 1))}
    (tmp_path / "new").mkdir()
    np.savez(tmp_path / "new" / "m.npz", **mesh)
    run_cli(["predict", f"--config={CONFIGS / 'quickstart.yaml'}", f"--ckpt_path={checkpoint}", *TINY,
             "--data.init_args.root=/nonexistent", f"--data.init_args.predict_files={tmp_path / 'new'}",
             f"--prediction_writer.output_dir={tmp_path / 'out'}", *tiny_trainer_args(tmp_path, "p")])
    predicted = read_arrays(tmp_path / "out" / "m.vtu")[1]["prediction"]

    out = tmp_path / f"model.{'pt2' if fmt == 'torch_export' else 'onnx'}"
    cli_main(["export", f"--ckpt_path={checkpoint}", f"--format={fmt}", f"--output={out}"])
    x = torch.as_tensor(np.concatenate([mesh["pos"], mesh["x"]], 1), dtype=torch.float32)[None]
    np.testing.assert_allclose(run_exported(out, x)[0, :, 0].numpy(), predicted, rtol=1e-5, atol=1e-5)
    # dynamic points and batch: three meshes of 7 points, each as predicted on its own
    three = x[:, :21].reshape(3, 7, 3)
    module = SurrogateModule.load_from_checkpoint(checkpoint).eval()
    with torch.no_grad():
        torch.testing.assert_close(run_exported(out, three), module(three), rtol=1e-5, atol=1e-5)

    # The loading example of docs/predict_export.md, in a fresh interpreter that never imports this package.
    np.save(tmp_path / "x.npy", x.numpy())
    load = {
        "torch_export": "import torch; m = torch.export.load(PATH).module(); y = m(torch.from_numpy(X)).detach().numpy()",
        "onnx": "import onnxruntime as ort; s = ort.InferenceSession(PATH); y = s.run(None, {'x': X})[0]",
    }[fmt]
    script = textwrap.dedent(f"""
        import sys, numpy as np
        PATH, X = {str(out)!r}, np.load({str(tmp_path / 'x.npy')!r})
        {load}
        assert not any(m.startswith(("flare_lightning", "datamodules")) for m in sys.modules)
        np.save({str(tmp_path / 'y.npy')!r}, y)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    np.testing.assert_allclose(np.load(tmp_path / "y.npy")[0, :, 0], predicted, rtol=1e-5, atol=1e-5)


def test_export_names_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="--ckpt_path .*nope.ckpt is not a file"):
        cli_main(["export", f"--ckpt_path={tmp_path / 'nope.ckpt'}"])


def _edited(checkpoint: Path, path: Path, edit) -> Path:
    ckpt = torch.load(checkpoint, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("what, edit, match", [
    ("nan", lambda c: c["state_dict"]["model.head.fc_out.weight"].fill_(float("nan")), "holds NaN or Inf values"),
    ("zero_std", lambda c: c["state_dict"]["target_norm.std"].zero_(), "zero or negative standard deviation"),
    ("state_dict", lambda c: [c.pop(k) for k in list(c) if k != "state_dict"], "not a Lightning checkpoint"),
])
def test_export_refuses_unusable_checkpoints_and_writes_nothing(checkpoint, tmp_path, what, edit, match):
    from flare_lightning.runs.checkpoint_io import CheckpointError

    bad = _edited(checkpoint, tmp_path / f"{what}.ckpt", edit)
    with pytest.raises(CheckpointError, match=match) as err:
        cli_main(["export", f"--ckpt_path={bad}", f"--output={tmp_path / 'model.pt2'}"])
    assert str(bad) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [bad.name]


def test_export_that_does_not_reproduce_the_checkpoint_is_not_written(checkpoint, tmp_path, monkeypatch):
    from flare_lightning import export

    monkeypatch.setattr(export, "run_exported", lambda path, x: torch.full((x.shape[0], x.shape[1], 1), float("nan")))
    with pytest.raises(ValueError, match="the exported model differs from the checkpoint by nan .* was not written"):
        cli_main(["export", f"--ckpt_path={checkpoint}", f"--output={tmp_path / 'model.pt2'}"])
    assert list(tmp_path.iterdir()) == []
