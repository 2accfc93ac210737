"""``flare test`` on DrivAerML surfaces: per-channel relative L2 and per-run Cd/Cl with their
errors and R² land in test_metrics.json, equal to a float64 reference from the predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datamodules.drivaerml_io import Q_INF
from flare_lightning.forces.metrics import r2_score
from flare_lightning.forces.coefficients import force_coefficients, surface_force
from flare_lightning.training.module import SurrogateModule
from tests.helpers import CONFIGS, run_cli, tiny_trainer_args
from tests.mesh_files import subdivided_box, write_vtp

TINY = ["--model.model.init_args.channels=16", "--model.model.init_args.num_blocks=1",
        "--model.model.init_args.num_heads=2", "--model.model.init_args.num_latents=4"]


@pytest.mark.slow
def test_drivaerml_test_metrics_hold_channels_and_force_coefficients(tmp_path):
    pytest.importorskip("vtk")
    rng = np.random.default_rng(0)
    for i in range(1, 7):  # boxes of different sizes with smooth-ish fields
        points, polys = subdivided_box((0, 0, 0), (1.0 + 0.3 * i, 1.0, 0.6 + 0.1 * i), n=2)
        centres = np.stack([points[p].mean(0) for p in polys])
        p = 200 * centres @ rng.normal(size=3) + rng.normal(0, 5, len(polys))
        wss = rng.normal(0, 2, (len(polys), 3))
        write_vtp(tmp_path / f"run_{i}" / f"boundary_{i}.vtp", points, polys,
                  {"pMeanTrim": p, "wallShearStressMeanTrim": wss})
    (tmp_path / "split.json").write_text(json.dumps({"train": [1, 2, 3], "test": [4, 5, 6]}))
    runs = tmp_path / "runs"
    cli = run_cli(["fit", f"--config={CONFIGS / 'drivaerml.yaml'}", *TINY, f"--data.init_args.root={tmp_path}",
                   "--data.init_args.proxy=false", "--data.init_args.source=vtp", "--data.init_args.split_file=split.json",
                   "--data.init_args.targets=pressure_wss", "--data.init_args.n_val=1", "--trainer.max_steps=2",
                   "--trainer.limit_val_batches=1", "--trainer.callbacks=[]", *tiny_trainer_args(runs, "d")])
    run = runs / "d" / "version_0"
    metrics = json.loads((run / "test_metrics.json").read_text())

    module = SurrogateModule.load_from_checkpoint(run / "checkpoints" / "best.ckpt").eval()
    dataset = cli.datamodule.datasets["test"]
    per_channel, coeffs = [], {}
    for i in range(len(dataset)):
        s = dataset[i]
        with torch.no_grad():
            pred = module(s.pos[None])[0].double()
        y = s.y.double()
        per_channel.append(((pred - y).norm(dim=0) / y.norm(dim=0)).numpy())
        for tag, f in (("pred", pred), ("true", y)):
            force = surface_force(f[None, :, 0], s.normals[None].double(), s.areas[None].double(), f[None, :, 1:])
            cd, cl = force_coefficients(force, Q_INF, cli.datamodule.reference_area)
            coeffs.setdefault(dataset.output_name(i), {})[tag] = (cd.item(), cl.item())
    per_channel = np.mean(per_channel, axis=0)
    for c, name in enumerate(["p", "tau_x", "tau_y", "tau_z"]):
        assert metrics[f"test/rel_l2_{name}"] == pytest.approx(per_channel[c], rel=1e-4)
    table = metrics["test/forces"]
    assert table["reference_area"] == cli.datamodule.reference_area and table["dynamic_pressure"] == Q_INF
    assert sorted(table["runs"]) == ["run_4", "run_5", "run_6"]
    for name, ref in coeffs.items():
        row = table["runs"][name]
        assert row["cd_true"] == pytest.approx(ref["true"][0], rel=1e-4, abs=1e-7)
        assert row["cl_pred"] == pytest.approx(ref["pred"][1], rel=1e-4, abs=1e-7)
    cd = np.array([[coeffs[n]["pred"][0], coeffs[n]["true"][0]] for n in sorted(coeffs)])
    assert metrics["test/cd_mae"] == pytest.approx(np.abs(cd[:, 0] - cd[:, 1]).mean(), rel=1e-4)
    assert metrics["test/cd_r2"] == pytest.approx(r2_score(torch.tensor(cd[:, 0]), torch.tensor(cd[:, 1])), rel=1e-4)
