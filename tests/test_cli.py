"""The ``flare`` CLI end to end on tiny generated Darcy data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from flare_lightning.training.metrics import RelativeL2Error
from flare_lightning.training.module import SurrogateModule
from tests.helpers import CONFIGS, run_cli, tiny_darcy_args, tiny_trainer_args

TINY_MODEL = [
    "--model.model.init_args.channels=16",
    "--model.model.init_args.num_blocks=2",
    "--model.model.init_args.num_heads=2",
    "--model.model.init_args.num_latents=8",
]


def tiny_data(root: Path) -> list[str]:
    return [
        *tiny_darcy_args(root),
        "--data.init_args.stride=1",
        "--data.init_args.batch_size=4",
    ]


@pytest.mark.parametrize("config", ["quickstart.yaml", "darcy.yaml"])
def test_fast_dev_run(config, tiny_darcy_root, tmp_path):
    cli = run_cli(
        ["fit", f"--config={CONFIGS / config}", "--trainer.fast_dev_run=1", *TINY_MODEL,
         *tiny_data(tiny_darcy_root), *tiny_trainer_args(tmp_path)]
    )
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["test/rel_l2"])  # fit is followed by a test
    assert cli.model.model.in_dim == 3 and cli.model.model.out_dim == 1  # linked from the data


def test_darcy_config_is_the_paper_protocol():
    import yaml

    cfg = yaml.safe_load((CONFIGS / "darcy.yaml").read_text())
    model = cfg["model"]["model"]["init_args"]
    assert (model["num_heads"], model["num_latents"], model["channels"], model["num_blocks"]) == (16, 256, 64, 8)
    assert cfg["data"]["init_args"]["batch_size"] == 2
    assert cfg["trainer"]["max_epochs"] == 500 and cfg["trainer"]["gradient_clip_val"] == 1.0
    assert cfg["model"]["loss"] == "darcy_grad"  # the reference's Darcy objective


@pytest.fixture(scope="module")
def trained_run(tiny_darcy_root, tmp_path_factory):
    """One short real training run (fit, then test on the best checkpoint)."""
    out = tmp_path_factory.mktemp("runs")
    cli = run_cli(
        ["fit", f"--config={CONFIGS / 'quickstart.yaml'}", "--trainer.max_epochs=60", "--model.lr=5e-3",
         *TINY_MODEL, *tiny_data(tiny_darcy_root), "--data.init_args.batch_size=2",
         *tiny_trainer_args(out, name="tiny")]
    )
    return cli, out / "tiny" / "version_0"


def test_run_folder_layout(trained_run):
    _, run = trained_run
    for name in ("config.yaml", "metrics.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "test_metrics.json"):
        assert (run / name).is_file(), name


def test_training_beats_the_untrained_model(trained_run):
    cli, run = trained_run
    trained = json.loads((run / "test_metrics.json").read_text())["test/rel_l2"]
    dm = cli.datamodule
    dm.setup("fit")
    torch.manual_seed(0)
    fresh = SurrogateModule(type(cli.model.model)(**cli.model.hparams["model"]["init_args"]), in_dim=3, out_dim=1)
    fresh.input_norm.set_stats(*dm.input_stats)
    fresh.target_norm.set_stats(*dm.target_stats)
    dm.setup("test")
    metric = RelativeL2Error()
    with torch.no_grad():
        for batch in dm.test_dataloader():
            metric.update(fresh(batch["x"], batch["mask"]), batch["y"], batch["mask"])
    untrained = metric.compute().item()
    assert trained < 0.5 * untrained, (trained, untrained)


def test_checkpoint_reload_reproduces_test_metrics(trained_run, tiny_darcy_root, tmp_path):
    _, run = trained_run
    fit_record = (run / "test_metrics.json").read_bytes()
    before = json.loads(fit_record)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli(
            ["test", f"--config={CONFIGS / 'quickstart.yaml'}", "--ckpt_path=best", *TINY_MODEL,
             *tiny_data(tiny_darcy_root), "--data.init_args.batch_size=2",  # the fit's batches: the same sums
             *tiny_trainer_args(run.parent.parent, name="tiny")]
        )
    # the fit's checkpoint selection is not restored into the evaluation (nor warned about)
    assert not [w for w in caught if "dirpath has changed" in str(w.message) or "callbacks used to create" in str(w.message)]
    assert (run / "test_metrics.json").read_bytes() == fit_record, "a later test replaced the fit's record"
    later = run / "test" / "version_0"  # the later evaluation's own folder, inside the run
    after = json.loads((later / "test_metrics.json").read_text())
    assert {k: v for k, v in after.items() if k.startswith("test/")} == {k: v for k, v in before.items() if k.startswith("test/")}
    assert after["checkpoint"]["path"] == before["checkpoint"]["path"] == str((run / "checkpoints" / "best.ckpt").resolve())
    assert after["checkpoint"]["selection"] == "--ckpt_path best: best.ckpt of the newest run"
    assert before["checkpoint"]["selection"] == "best.ckpt: lowest val/rel_l2 on the validation data"
    assert after["model"] == before["model"] and after["model"]["init_args"]["channels"] == 16  # what was tested
    assert (later / "metrics.csv").is_file() and (later / "config.yaml").is_file()


def test_load_from_checkpoint_rebuilds_model_and_statistics(trained_run):
    cli, run = trained_run
    module = SurrogateModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    assert bool(module.input_norm.fitted)
    dm = cli.datamodule
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    cli.model.load_state_dict(best["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(module.eval()(batch["x"], batch["mask"]), cli.model.eval()(batch["x"], batch["mask"]))
        out = module.predict_step(batch, 0)
    assert out["pred"].shape == batch["y"].shape
    # predictions are in physical units: their scale matches the targets', not unit variance
    assert out["pred"].std().item() == pytest.approx(batch["y"].std().item(), rel=0.5)


def test_missing_best_checkpoint_is_reported(tmp_path, tiny_darcy_root):
    with pytest.raises(FileNotFoundError, match="no run folder version_N under"):
        run_cli(["test", f"--config={CONFIGS / 'quickstart.yaml'}", "--ckpt_path=best", *TINY_MODEL,
                 *tiny_data(tiny_darcy_root), *tiny_trainer_args(tmp_path, name="none")])


def test_module_entry_point_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "flare_lightning", "--help"], capture_output=True, text=True, check=True)
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out.stdout


def test_predict_writes_denormalised_fields_per_sample(trained_run, tiny_darcy_root):
    pytest.importorskip("vtk")
    from tests.mesh_files import read_arrays

    cli, run = trained_run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_cli(
            ["predict", f"--config={CONFIGS / 'quickstart.yaml'}", "--ckpt_path=best", *TINY_MODEL,
             *tiny_data(tiny_darcy_root), *tiny_trainer_args(run.parent.parent, name="tiny")]
        )
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    out = run / "predict" / "version_0"
    files = sorted(p.name for p in out.glob("*.vtu"))
    assert files == [f"sample_{i:05d}.vtu" for i in range(4)]  # every test sample once
    dm = cli.datamodule
    dm.setup("test")
    module = SurrogateModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt").eval()
    sample = dm.datasets["test"][2]
    with torch.no_grad():
        want = module(torch.cat([sample.pos, sample.x], -1)[None])[0]
    data, arrays = read_arrays(out / "sample_00002.vtu")
    torch.testing.assert_close(torch.as_tensor(arrays["prediction"])[:, None], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.as_tensor(arrays["target"])[:, None], sample.y)


def test_refusals_print_one_line_and_exit_2(tmp_path):
    """A refused config value reaches the user as one line naming the option, exit status 2,
    no traceback (FLARE_TRACEBACK=1 brings it back)."""
    cmd = [sys.executable, "-m", "flare_lightning", "fit", f"--config={CONFIGS / 'quickstart.yaml'}", "--model.lr=0"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "flare: error (ConfigError): " in proc.stderr and "model.lr=0.0" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(cmd, cwd=tmp_path, env={**env, "FLARE_TRACEBACK": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
