"""Generated data and caches respect the umask: colleagues on shared storage can read them."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from datamodules import DarcyDataModule
from datamodules.drivaerml_proxy import generate_proxy_runs
from datamodules.elasticity_generate import write_elasticity
from datamodules.lpbf_generate import generate_lpbf_proxy
from tests.datamodules.tiny_data import tiny


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(root) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


def test_generated_darcy_and_its_caches_are_world_readable(tmp_path, umask_022):
    dm = DarcyDataModule(root=str(tmp_path), n_train=2, n_val=1, n_test=1, stride=1, gen_resolution=5)
    dm.prepare_data()
    dm.setup("fit")
    modes = _modes(tmp_path)
    assert {"piececonst_r421_N1024_smooth1.mat", "piececonst_r421_N1024_smooth2.mat"} <= set(modes)
    assert sum(name.endswith(".pt") for name in modes) == 3
    assert {m for name, m in modes.items() if name != "processed"} == {0o644}, modes


def test_every_generator_and_cache_writes_umask_modes(tmp_path, umask_022):
    generate_proxy_runs(tmp_path / "drivaerml", [1], panels=60, points=20, seed=0)
    generate_lpbf_proxy(tmp_path / "lpbf", 1, grid=(3, 3, 3), voxel_size=2.5)
    rng = np.random.default_rng(0)
    write_elasticity(tmp_path / "elasticity", {"XY": rng.uniform(size=(5, 2, 3)), "sigma": rng.uniform(size=(5, 3)),
                                               "rr": rng.uniform(size=(42, 3)), "theta": rng.uniform(size=(3, 10))})
    tiny("lpbf", tmp_path / "lpbf_real").datamodule().setup("fit")  # caches
    modes = _modes(tmp_path)
    files = {name: m for name, m in modes.items() if (tmp_path / name).is_file()}
    folders = {name: m for name, m in modes.items() if (tmp_path / name).is_dir()}
    assert len(files) >= 12 and set(files.values()) == {0o644}, files
    assert set(folders.values()) == {0o755}, folders
