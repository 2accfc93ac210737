"""Nothing read from a data folder may unpickle arbitrary objects: a malicious pickle
placed where PyG, the cache or a reader might look is never executed."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from datamodules.checks import DataFormatError
from tests.datamodules.tiny_data import KINDS, tiny, write_lpbf_case


class Evil:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _evil_npy(path, marker) -> None:
    np.save(path, np.array([Evil(marker)], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("kind", KINDS)
def test_malicious_pickles_under_the_data_root_never_run(tmp_path, kind):
    root, marker = tmp_path / "data", tmp_path / "PWNED"
    data = tiny(kind, root)
    processed = root / "processed"
    processed.mkdir()
    for name in ("pre_transform.pt", "pre_filter.pt"):  # PyG unpickles these with weights_only=False
        torch.save(Evil(marker), processed / name)
    for folder in (root, processed, data.test_file.parent):
        torch.save(Evil(marker), folder / "evil.pt")
        _evil_npy(folder / "evil.npy", marker)
        np.savez(folder / "evil.npz", payload=np.array([Evil(marker)], dtype=object))
    dm = data.datamodule()
    dm.prepare_data()
    dm.setup("fit")
    assert not marker.exists()

    train = dm.datasets["train"]  # the cache itself (DrivAerML: a run's), replaced
    cache = train.cache_path(0) if hasattr(train, "cache_path") else processed / train.processed_file_names[0]
    torch.save({"meta": Evil(marker), "fields": {"pos": torch.zeros(1)}}, cache)
    with pytest.warns(UserWarning, match="unreadable or not a cache.*rebuilding"):
        data.datamodule().setup("fit")
    assert not marker.exists()
    assert torch.load(cache, weights_only=True)["meta"]["format"] == 2  # rebuilt


@pytest.mark.parametrize("kind", KINDS)
def test_a_pickled_raw_file_is_refused_without_running(tmp_path, kind):
    marker = tmp_path / "PWNED"
    data = tiny(kind, tmp_path / "data")
    if data.test_file.suffix == ".mat":
        torch.save(Evil(marker), data.test_file)  # a pickle named .mat
    elif data.test_file.suffix == ".npy":
        _evil_npy(data.test_file, marker)
    else:  # the expected keys, as object arrays
        keys = np.load(data.test_file).files
        np.savez(data.test_file, **{k: np.array([Evil(marker)], dtype=object) for k in keys})
    with pytest.raises(DataFormatError, match=data.test_file.name):
        data.datamodule().setup("fit")
    assert not marker.exists()


def test_lpbf_metadata_is_never_unpickled(tmp_path):
    """Real LPBF cases hold a pickled ``_metadata`` object array; it is never read."""
    marker = tmp_path / "PWNED"
    data = tiny("lpbf", tmp_path / "data")
    for path in sorted((data.root / "train").glob("*.npz")) + sorted((data.root / "test").glob("*.npz")):
        with np.load(path) as npz:
            case = {k: npz[k] for k in npz.files if k != "_metadata"}
        write_lpbf_case(path, case, metadata=np.array([Evil(marker)], dtype=object))
    dm = data.datamodule()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 3 and not marker.exists()
