"""Per-run caches (``RunFilesDataset``, DrivAerML): one memory-mapped cache per run, built once
(in several processes when asked), statistics merged from per-run moments, each cache's bytes
verified once per file version, damaged or replaced caches rebuilt alone, and host memory that
does not grow with the number of runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import content_hash, mesh_cache
from datamodules.checks import DataFormatError
from datamodules.drivaerml import DrivAerMLDataModule, DrivAerMLDataset
from flare_lightning.training.normalizer import channel_stats
from tests.helpers import REPO

TRAIN, TEST = [1, 2, 3, 4], [7, 8]


def run_arrays(run_id: int, n: int | None = None) -> dict[str, np.ndarray]:
    """A run in the presampled layout; N and values depend on the id."""
    rng = np.random.default_rng(run_id)
    n = n or 30 + 7 * run_id
    return {"surface_mesh_centers": rng.uniform(-1, 4, (n, 3)).astype(np.float32),
            "surface_fields": rng.normal(-50, 200, (n, 4)).astype(np.float32)}


@pytest.fixture
def root(tmp_path) -> Path:
    for split, ids in (("train", TRAIN), ("test", TEST)):
        (tmp_path / split).mkdir()
        for i in ids:
            np.savez(tmp_path / split / f"run_{i}.npz", **run_arrays(i))
    return tmp_path


def dataset(root: Path, ids=TRAIN, **kw) -> DrivAerMLDataset:
    return DrivAerMLDataset(root, [f"train/run_{i}.npz" for i in ids], list(ids), targets="pressure_wss", **kw)


def cache_files(ds: DrivAerMLDataset) -> list[str]:
    return sorted(p.name for p in ds.cache_dir.iterdir())


def mapped(path: Path) -> bool:
    return any(str(path) in line for line in Path("/proc/self/maps").read_text().splitlines())


def test_one_cache_per_run_read_through_a_memory_map(root):
    ds = dataset(root)
    assert cache_files(ds) == sorted([f"train__run_{i}.npz.pt" for i in TRAIN] + ["verified.json"])
    assert ds.sample_sizes == [len(run_arrays(i)["surface_mesh_centers"]) for i in TRAIN]
    for k, i in enumerate(TRAIN):
        sample = ds[k]
        np.testing.assert_array_equal(sample.pos.numpy(), run_arrays(i)["surface_mesh_centers"])
        np.testing.assert_array_equal(sample.y.numpy(), run_arrays(i)["surface_fields"])
        assert int(sample.sample_id) == k
        assert mapped(ds.cache_path(k))  # the sample's tensors are views of the mapped cache, not a copy
        del sample
    assert not any(mapped(ds.cache_path(k)) for k in range(len(ds)))  # nothing stays mapped once read


def test_statistics_from_per_run_moments_equal_those_of_all_points(root):
    dm = DrivAerMLDataModule(root=str(root), n_val=1, targets="pressure_wss")
    dm.setup("fit")
    runs = [run_arrays(i) for i in TRAIN[:-1]]
    # Bit for bit what the whole-dataset cache gave: the same float64 sums, in the same order.
    want = [channel_stats(torch.from_numpy(r[k]) for r in runs) for k in ("surface_mesh_centers", "surface_fields")]
    for got, ref in zip((dm.input_stats, dm.target_stats), want):
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    allrows = np.concatenate([r["surface_fields"] for r in runs]).astype(np.float64)  # and a float64 reference
    np.testing.assert_allclose(dm.target_stats[1].numpy(), allrows.std(0), rtol=1e-6)


def test_each_cache_is_verified_once_per_file_version(root, monkeypatch):
    dataset(root)
    reads = []
    real = mesh_cache.array_digest
    monkeypatch.setattr(mesh_cache, "array_digest", lambda a: reads.append(a.shape) or real(a))
    again = dataset(root)
    assert reads == []  # verified at these stamps before: options and raw content checked, bytes not re-read
    path = again.cache_path(1)
    path.write_bytes(path.read_bytes())  # the same bytes, a new file version
    dataset(root)
    n = len(run_arrays(2)["surface_mesh_centers"])
    assert sorted(reads) == sorted([(n, 3), (n, 4), (2,), (3, 3), (3, 4)])  # that run's fields and moments, once
    reads.clear()
    dataset(root)
    assert reads == []


@pytest.mark.parametrize("damage, why", [
    ("truncate", "unreadable or not a cache"),
    ("empty", "unreadable or not a cache"),
    ("bitflip", "corrupt: the checksum of field 'y'"),
    ("foreign", "made with other processing options"),
])
def test_a_damaged_run_cache_is_rebuilt_alone_with_a_warning(root, damage, why):
    ds = dataset(root)
    good = [ds[k].y.clone() for k in range(len(ds))]
    path = ds.cache_path(2)
    others = {k: ds.cache_path(k).stat().st_mtime_ns for k in (0, 1, 3)}
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "bitflip":
        at = raw.find(ds[2].y.numpy().tobytes()[:64])
        raw[at + 5] ^= 0x10
        path.write_bytes(bytes(raw))
    else:  # another run's cache under this run's name
        path.write_bytes(ds.cache_path(0).read_bytes())
    with pytest.warns(UserWarning, match=rf"cache .*train__run_3.npz.pt is {why}.*rebuilding it from the raw file"):
        ds = dataset(root)
    for k, y in enumerate(good):
        torch.testing.assert_close(ds[k].y, y)
    assert {k: ds.cache_path(k).stat().st_mtime_ns for k in others} == others  # the other runs were not rebuilt
    assert not [p for p in ds.cache_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_cache_replaced_after_the_dataset_was_made_is_refused_on_read(root):
    ds = dataset(root)
    np.savez(root / "train" / "run_2.npz", **run_arrays(5, n=44))  # new content: another process rebuilds
    dataset(root)
    with pytest.raises(DataFormatError, match=r"train__run_2.npz.pt: the cache of .*run_2.npz \(run 2\) is stale"):
        ds[1]


def test_a_bad_run_leaves_no_cache_and_names_the_file(root):
    np.savez(root / "train" / "run_3.npz", **{**run_arrays(3), "surface_fields": np.zeros((5, 4), np.float32)})
    with pytest.raises(DataFormatError, match=r"run_3.npz: key 'surface_fields' has shape \(5, 4\)"):
        dataset(root)
    folder = next((root / "processed").glob("drivaermldataset_*"))
    assert sorted(p.name for p in folder.iterdir()) == ["train__run_1.npz.pt", "train__run_2.npz.pt"]


@pytest.mark.slow
def test_caches_built_by_several_processes_equal_those_built_in_one(root, tmp_path):
    """Spawned processes (the loader's num_workers) each build whole runs: the same bytes."""
    alone = dataset(root, num_points=40)
    other = tmp_path / "copy"
    for split in ("train",):
        (other / split).mkdir(parents=True)
        for i in TRAIN:
            (other / split / f"run_{i}.npz").write_bytes((root / split / f"run_{i}.npz").read_bytes())
    together = dataset(other, num_points=40, processes=2)
    assert cache_files(together) == cache_files(alone)
    for k in range(len(TRAIN)):
        a, b = alone.read_cache(k), together.read_cache(k)
        assert a.keys() == b.keys() and all(torch.equal(a[f], b[f]) for f in a)
    assert together.sample_sizes == [min(40, n) for n in alone.sample_sizes]


def test_training_batches_do_not_depend_on_the_number_of_workers(root):
    """Point subsets are drawn in the workers, reproducibly from (seed, epoch, run)."""
    def epochs(workers: int) -> list[torch.Tensor]:
        extra = {"prefetch_factor": 2, "persistent_workers": True} if workers else {}
        dm = DrivAerMLDataModule(root=str(root), n_val=1, train_points=25, num_workers=workers, **extra)
        dm.setup("fit")
        loader, out = dm.train_dataloader(), []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            out += [torch.cat([b["x"].flatten(), b["y"].flatten(), b["sample_id"].float()]) for b in loader]
        return out

    serial, parallel = epochs(0), epochs(2)
    assert len(serial) == 6 and all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
    assert not torch.equal(serial[0], serial[3]) or not torch.equal(serial[1], serial[4])  # fresh subsets per epoch


RUN_MB = 3  # xyz + p of one run, float32


def _peak_growth_mb(root: Path, runs: int) -> float:
    """Peak resident memory added by setup("fit") (building every cache), one training epoch and
    one full-resolution validation pass over ``runs`` training runs, in a fresh process."""
    points = RUN_MB * 2**20 // 16
    for split, ids in (("train", range(1, runs + 1)), ("test", (900,))):
        (root / split).mkdir(parents=True)
        for i in ids:
            np.savez(root / split / f"run_{i}.npz", **run_arrays(i, n=points))
    script = textwrap.dedent(f"""
        import threading, time
        from datamodules.drivaerml import DrivAerMLDataModule

        def rss_mb():
            line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS:"))
            return int(line.split()[1]) / 1024

        peak, done = [0.0], threading.Event()

        def sample():  # the resident memory's high-water mark from here on, every 2 ms
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb())
                time.sleep(0.002)

        dm = DrivAerMLDataModule(root={str(root)!r}, n_val=1, train_points=4096)
        before = rss_mb()
        sampler = threading.Thread(target=sample)
        sampler.start()
        dm.setup("fit")
        batches = sum(1 for _ in dm.train_dataloader()) + sum(1 for _ in dm.val_dataloader())
        done.set()
        sampler.join()
        print(batches, peak[0] - before)
    """)
    # A fixed mmap threshold: glibc's adaptive one keeps freed buffers in the heap, a growth that
    # measures the allocator's caching (malloc_trim gives it back), not what the code holds.
    env = {**os.environ, "PYTHONPATH": str(REPO), "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    batches, grown_mb = out.stdout.split()
    assert int(batches) == runs
    return float(grown_mb)


@pytest.mark.slow
def test_host_memory_does_not_grow_with_the_number_of_runs(tmp_path):
    """Five times the runs (48 MB more points) must not raise the peak: every process holds the
    runs it reads, never the dataset (the whole-dataset cache held every point at once)."""
    few, many = _peak_growth_mb(tmp_path / "few", 4), _peak_growth_mb(tmp_path / "many", 20)
    print(f"peak resident memory grew by {few:.1f} MB (4 runs) and {many:.1f} MB (20 runs)")
    assert many - few < 8, f"16 more runs of {RUN_MB} MB raised the peak by {many - few:.0f} MB"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_trainer_gets_pinned_batches_from_the_workers(root):
    """pin_memory's default follows the trainer's device: page-locked batches, so that the
    host-to-GPU copy of a training batch is asynchronous."""
    import lightning as L

    dm = DrivAerMLDataModule(root=str(root), n_val=1, train_points=25, num_workers=2, prefetch_factor=2,
                             persistent_workers=True)
    dm.trainer = L.Trainer(accelerator="gpu", devices=1, logger=False)
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = next(iter(loader))
        assert batch["x"].is_pinned() and batch["y"].is_pinned()
        torch.testing.assert_close(batch["x"].to("cuda", non_blocking=True).cpu(), batch["x"])


@pytest.mark.slow
def test_two_ddp_ranks_share_the_run_caches_one_builds(root, tmp_path):
    """DDP (2 gloo processes) from an empty cache: the first rank builds each run's cache while
    the other waits at the barrier, then both read them; nothing is rebuilt or left half-written."""
    from tests.helpers import CONFIGS, tiny_trainer_args

    cmd = [sys.executable, "-m", "flare_lightning", "fit", f"--config={CONFIGS / 'drivaerml.yaml'}",
           f"--data.root={root}", "--data.proxy=false", "--data.n_val=2", "--data.train_points=20",
           "--model.model.init_args.channels=8", "--model.model.init_args.num_blocks=1",
           "--model.model.init_args.num_heads=2", "--model.model.init_args.num_latents=4",
           "--trainer.max_epochs=1", "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2",
           *tiny_trainer_args(tmp_path / "runs", "ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"DDP run failed:\n{proc.stderr[-6000:]}"
    assert "rebuilding" not in proc.stderr and "is corrupt" not in proc.stderr
    folder = next((root / "processed").glob("drivaermldataset_*"))
    runs = [f"{split}__run_{i}.npz.pt" for split, ids in (("train", TRAIN), ("test", TEST)) for i in ids]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*runs, "verified.json"])
    assert len(list((tmp_path / "runs" / "ddp").glob("version_*/test_metrics.json"))) == 1  # rank 0 wrote it
