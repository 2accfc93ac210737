"""LPBF loader: the real {train,test}/case*.npz layout, variable sizes, splits,
normalisation, bad input and the CLI on the proxy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.checks import DataFormatError
from datamodules.lpbf import LPBFDataModule
from tests.datamodules.batching import assert_batch_matches_singles
from tests.helpers import CONFIGS, run_cli, tiny_trainer_args

SIZES = {"train": [8, 13, 21, 5, 34], "test": [9, 17]}
SCALE = np.array([30.0, 30.0, 60.0], dtype=np.float32)


def real_case(n: int, seed: int) -> dict[str, np.ndarray]:
    """Arrays as in the released files: float32 fields, int32 elems, int64 edge_index."""
    rng = np.random.default_rng(seed)
    return {
        "pos": rng.uniform([-30, -30, 0], [30, 30, 60], (n, 3)).astype(np.float32),
        "elems": rng.integers(0, n, (max(1, n // 4), 8)).astype(np.int32),
        "edge_index": rng.integers(0, n, (2, 3 * n)).astype(np.int64),
        "disp": rng.normal(0, 0.3, (n, 3)).astype(np.float32),
        "vmstr": rng.uniform(0, 1500, (n, 1)).astype(np.float32),
        "temp": rng.uniform(25, 300, (n, 1)).astype(np.float32),
    }


def write_real_case(path: Path, arrays: dict[str, np.ndarray]) -> None:
    meta = np.array([json.dumps({"metadata": {"case_name": path.stem, "zmax": None, "time_steps": 1}})], dtype=object)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays, _metadata=meta)


@pytest.fixture
def lpbf_root(tmp_path) -> tuple[Path, dict[str, list[dict[str, np.ndarray]]]]:
    cases = {}
    for split, sizes in SIZES.items():
        cases[split] = [real_case(n, seed=100 * (split == "test") + i) for i, n in enumerate(sizes)]
        for i, arrays in enumerate(cases[split]):
            write_real_case(tmp_path / split / f"case{i:05d}_{1000 + i}_part.npz", arrays)
    return tmp_path, cases


def datamodule(root: Path, **kw) -> LPBFDataModule:
    return LPBFDataModule(root=str(root), **({"n_val": 2, "batch_size": 3} | kw))


def test_reads_real_layout_splits_and_train_only_stats(lpbf_root):
    root, cases = lpbf_root
    dm = datamodule(root)
    dm.prepare_data()  # generate is off by default: nothing is written
    assert sorted(p.name for p in root.iterdir()) == ["test", "train"]
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert [len(train), len(val)] == [3, 2]  # validation: the last training files
    for ds, source in ((train, cases["train"][:3]), (val, cases["train"][3:])):
        for sample, arrays in zip(ds, source):
            np.testing.assert_allclose(sample.pos.numpy(), arrays["pos"] / SCALE, rtol=1e-6)
            np.testing.assert_array_equal(sample.y.numpy()[:, 0], arrays["disp"][:, 2])
    z = np.concatenate([c["disp"][:, 2] for c in cases["train"][:3]])
    np.testing.assert_allclose(dm.target_stats[0].numpy(), [z.mean()], rtol=1e-5)
    np.testing.assert_allclose(dm.target_stats[1].numpy(), [z.std()], rtol=1e-5)
    pos = np.concatenate([c["pos"] for c in cases["train"][:3]]) / SCALE
    np.testing.assert_allclose(dm.input_stats[0].numpy(), pos.mean(0), rtol=1e-5, atol=1e-7)

    batch = next(iter(dm.val_dataloader()))
    assert batch["x"].shape == (2, 34, 3)  # padded to the larger case
    assert batch["mask"].sum(1).tolist() == [5, 34]
    dm.setup("test")
    assert [d.num_nodes for d in dm.datasets["test"]] == SIZES["test"]


def test_stress_target_and_flat_stress_arrays(lpbf_root):
    root, cases = lpbf_root
    arrays = cases["train"][0] | {"vmstr": cases["train"][0]["vmstr"][:, 0]}  # (N,) also accepted
    write_real_case(root / "train" / "case00000_1000_part.npz", arrays)
    dm = datamodule(root, targets=["disp_z", "vmstr"])
    assert dm.out_dim == 2
    dm.setup("fit")
    y = dm.datasets["train"][0].y.numpy()
    np.testing.assert_array_equal(y[:, 0], arrays["disp"][:, 2])
    np.testing.assert_array_equal(y[:, 1], arrays["vmstr"])


def test_variable_size_batch_matches_single_cases(lpbf_root):
    dm = datamodule(lpbf_root[0], n_val=0)
    dm.setup("test")
    assert_batch_matches_singles(dm.datasets["test"], in_dim=3, out_dim=1)
    dm.setup("fit")
    assert len({d.num_nodes for d in dm.datasets["train"]}) == 5
    assert_batch_matches_singles(dm.datasets["train"], in_dim=3, out_dim=1)


def _drop_disp(a):
    del a["disp"]


def _flat_pos(a):
    a["pos"] = a["pos"][:, :2]


def _nan_disp(a):
    a["disp"][2, 2] = np.nan


def _short_disp(a):
    a["disp"] = a["disp"][:-1]


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (_drop_disp, r"case00001_1001_part\.npz: missing key 'disp'"),
        (_flat_pos, r"case00001_1001_part\.npz: key 'pos' has shape \(13, 2\), expected \(\*, 3\)"),
        (_nan_disp, r"case00001_1001_part\.npz: key 'disp' has 1 NaN/Inf value\(s\), first at index \(2, 2\)"),
        (_short_disp, r"case00001_1001_part\.npz: key 'disp' has shape \(12, 3\), expected \(13, 3\)"),
    ],
)
def test_bad_case_fails_before_training_and_leaves_no_cache(lpbf_root, corrupt, match):
    root, cases = lpbf_root
    arrays = dict(cases["train"][1])
    corrupt(arrays)
    write_real_case(root / "train" / "case00001_1001_part.npz", arrays)
    with pytest.raises(DataFormatError, match=match):
        datamodule(root).setup("fit")
    # only the validation cache (built before the failing training split) may exist, complete
    for cache in (root / "processed").glob("lpbfdataset_*"):
        assert torch.load(cache, weights_only=True)["fields"]["ptr"].numel() - 1 == 2
    assert not list(root.rglob("*.tmp"))


def test_missing_and_empty_folders_are_named(lpbf_root):
    root, _ = lpbf_root
    with pytest.raises(FileNotFoundError, match=r"LPBF train folder not found: .*nowhere/train"):
        datamodule(root / "nowhere").setup("fit")
    for f in (root / "test").iterdir():
        f.unlink()
    with pytest.raises(DataFormatError, match=r"test: empty split, no case\*\.npz files"):
        datamodule(root).setup("fit")
    (root / "test").rmdir()
    with pytest.raises(FileNotFoundError, match=r"LPBF test folder not found"):
        datamodule(root).setup("test")


def test_unreadable_case_is_named(lpbf_root):
    root, _ = lpbf_root
    (root / "train" / "case00002_1002_part.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match=r"case00002_1002_part\.npz: not a readable \.npz"):
        datamodule(root).setup("fit")


def test_options_and_counts_are_checked(lpbf_root):
    root, _ = lpbf_root
    with pytest.raises(ValueError, match=r"targets must be a non-empty list from .*'vmstr'.*got \['pressure'\]"):
        datamodule(root, targets=["pressure"])
    with pytest.raises(DataFormatError, match=r"train: holds 5 cases; n_train = 4 and n_val = 2 need at least 6"):
        datamodule(root, n_train=4).setup("fit")
    with pytest.raises(DataFormatError, match=r"test: holds 2 cases; n_test = 3"):
        datamodule(root, n_test=3).setup("test")


def test_fit_fast_dev_run_on_generated_proxy(tmp_path):
    root = tmp_path / "lpbf"
    cli = run_cli(
        [
            "fit",
            f"--config={CONFIGS / 'lpbf.yaml'}",
            f"--data.init_args.root={root}",
            "--data.init_args.proxy_train=3",
            "--data.init_args.proxy_test=1",
            "--data.init_args.proxy_grid=[4, 4, 3]",
            "--data.init_args.proxy_workers=1",
            "--data.init_args.n_val=1",
            "--model.model.init_args.channels=16",
            "--model.model.init_args.num_blocks=1",
            "--model.model.init_args.num_heads=2",
            "--model.model.init_args.num_latents=8",
            "--trainer.fast_dev_run=1",
            *tiny_trainer_args(tmp_path, "lpbf_proxy"),
        ]
    )
    assert len(list((root / "train").glob("case*_lpbfproxy.npz"))) == 3
    assert len(list((root / "test").glob("case*_lpbfproxy.npz"))) == 1
    assert cli.model.hparams.weight_decay == 1e-4 and cli.model.model.in_dim == 3
    assert len(cli.datamodule.datasets["test"]) == 1
    assert torch.isfinite(cli.trainer.callback_metrics["test/rel_l2"])  # test ran after fit
