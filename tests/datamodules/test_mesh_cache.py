"""The processed cache: keyed on the raw files' content, verified on load (a damaged
cache is rebuilt and the user told), replaced in place, and memory-mapped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.io
import torch

from datamodules.elasticity_generate import FILES
from tests.datamodules.tiny_data import KINDS, drivaerml_run, lpbf_case, tiny, write_big, write_lpbf_case
from tests.helpers import REPO


def _rewrite_train(data) -> None:
    """Change the first training sample's target content; keep the file's size and mtime."""
    st = data.train_file.stat()
    if data.kind == "darcy":
        arrays = scipy.io.loadmat(data.train_file)
        scipy.io.savemat(data.train_file, {"coeff": arrays["coeff"], "sol": arrays["sol"] + 1.0})
    elif data.kind == "elasticity":
        sigma = np.load(data.root / FILES["sigma"])
        st = (data.root / FILES["sigma"]).stat()
        np.save(data.root / FILES["sigma"], sigma + 1.0)
        data.train_file = data.root / FILES["sigma"]
    elif data.kind == "drivaerml":
        run = drivaerml_run(1)
        np.savez(data.train_file, surface_mesh_centers=run["surface_mesh_centers"], surface_fields=run["surface_fields"] + 1)
    else:
        case = lpbf_case(1)
        case["disp"] = case["disp"] + 1.0
        write_lpbf_case(data.train_file, case)
    os.utime(data.train_file, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("kind", KINDS)
def test_cache_follows_content_not_mtime_and_replaces_the_stale_one(tmp_path, kind):
    data = tiny(kind, tmp_path)
    dm = data.datamodule()
    dm.setup("fit")
    before = dm.datasets["train"][0].y.clone()
    caches = sorted((tmp_path / "processed").iterdir())
    _rewrite_train(data)
    dm = data.datamodule()
    with pytest.warns(UserWarning, match=r"is stale: the content of .* changed since it was made; rebuilding"):
        dm.setup("fit")
    torch.testing.assert_close(dm.datasets["train"][0].y, before + 1.0)
    assert sorted((tmp_path / "processed").iterdir()) == caches  # replaced in place: no pile-up, no temp files


def _flip_in_tensor_data(path, tensor) -> None:
    raw = bytearray(path.read_bytes())
    at = raw.find(tensor.numpy().tobytes()[:64])
    assert at > 0
    raw[at + 5] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "empty"])
@pytest.mark.parametrize("kind", ["darcy", "lpbf"])
def test_damaged_cache_is_detected_rebuilt_and_reported(tmp_path, kind, damage):
    data = tiny(kind, tmp_path)
    dm = data.datamodule()
    dm.setup("fit")
    good = [s.y.clone() for s in dm.datasets["train"]]
    cache = next(p for p in (tmp_path / "processed").iterdir() if p.name == dm.datasets["train"].processed_file_names[0])
    if damage == "truncate":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    elif damage == "empty":
        cache.write_bytes(b"")
    else:
        _flip_in_tensor_data(cache, dm.datasets["train"].field("y"))
    why = "corrupt: the checksum of field 'y'" if damage == "bitflip" else "unreadable or not a cache"
    dm = data.datamodule()
    with pytest.warns(UserWarning, match=rf"{cache.name} is {why}.*rebuilding it"):
        dm.setup("fit")
    for sample, y in zip(dm.datasets["train"], good, strict=True):
        torch.testing.assert_close(sample.y, y)
    dm = data.datamodule()
    dm.setup("fit")  # the rebuilt cache verifies: no warning, no rebuild
    assert cache.stat().st_size > 0


BUDGET_MB, DATA_MB = 16, 64


@pytest.mark.slow
def test_iterating_a_dataset_larger_than_the_budget_keeps_private_memory_flat(tmp_path):
    """Private (anonymous) resident memory must not grow with the dataset: the cache is
    memory-mapped, so its pages are file-backed page cache, shared by all DDP ranks of a
    node and reclaimable, not a copy per process."""
    samples, points = 64, DATA_MB * 2**20 // (64 * 16)
    write_big(tmp_path, samples, points)
    from tests.datamodules.tiny_data import BigDataset

    BigDataset(tmp_path, samples, points)  # build the cache here; measure loading it in a fresh process
    script = textwrap.dedent(f"""
        import torch
        from tests.datamodules.tiny_data import BigDataset
        from datamodules.mesh_datamodule import MeshDataModule

        def anon_kb():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])

        before = anon_kb()
        ds = BigDataset({str(tmp_path)!r}, {samples}, {points})
        total = 0.0
        for i in range(len(ds)):
            sample = ds[i]
            total += float(sample.pos.sum()) + float(sample.y.sum())
        MeshDataModule.fit_stats(None, ds)
        print(total, (anon_kb() - before) / 1024)
    """)
    # A fixed mmap threshold: glibc's adaptive one keeps buffers the code has freed in the heap
    # (tens of MB on a 2-core machine, flaky), which is the allocator's caching, not a copy of the data.
    env = {**os.environ, "PYTHONPATH": str(REPO), "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    total, grown_mb = map(float, out.stdout.split())
    assert total == pytest.approx(sum(4.0 * (i + 1) * points for i in range(samples)))
    print(f"private memory grew by {grown_mb:.1f} MB")
    assert grown_mb < BUDGET_MB, f"private memory grew by {grown_mb:.0f} MB iterating {DATA_MB} MB of data"
