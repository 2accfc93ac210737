"""Damaged and unexpected .npy/.npz files: every error names the file, the key and what
was expected; big-endian arrays are read (converted to native order)."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from datamodules.checks import DataFormatError
from datamodules.numpy_files import load_npy, npz_array, open_npz
from tests.datamodules.tiny_data import KINDS, tiny


def _npy_bytes(arr, **kw) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, **kw)
    return buf.getvalue()


def _npz_bytes(compressed: bool = False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


A = np.arange(200, dtype=np.float64).reshape(20, 10)
NPY_CASES = {
    "empty": (b"", r"the file is empty \(0 bytes\)"),
    "truncated": (_npy_bytes(A)[:300], r"not a readable .npy array for 'k': truncated or damaged"),
    "header only": (_npy_bytes(A)[:30], r"not a readable .npy array for 'k': truncated or damaged"),
    "npz instead": (_npz_bytes(k=A), r"is an .npz archive \(zip\); expected a single .npy array for 'k'"),
    "junk": (b"hello world", r"not a readable .npy array for 'k' \(bad magic bytes"),
    "object array": (_npy_bytes(np.array([{"a": 1}], dtype=object), allow_pickle=True), r"not a readable .npy array for 'k'"),
    "strings": (_npy_bytes(np.array(["ab", "cd"])), r"key 'k' has dtype <U2, expected a numeric"),
}


@pytest.mark.parametrize("case", NPY_CASES)
def test_bad_npy_names_file_key_and_expectation(tmp_path, case):
    data, match = NPY_CASES[case]
    path = tmp_path / "a.npy"
    path.write_bytes(data)
    with pytest.raises(DataFormatError, match=rf"a.npy: .*{match}"):
        load_npy(path, "k")


def test_big_endian_npy_and_npz_are_converted(tmp_path):
    (tmp_path / "be.npy").write_bytes(_npy_bytes(A.astype(">f8")))
    arr = load_npy(tmp_path / "be.npy", "k")
    assert arr.dtype == np.float64 and arr.dtype.isnative
    np.testing.assert_array_equal(arr, A)
    (tmp_path / "be.npz").write_bytes(_npz_bytes(k=A.astype(">i4")))
    with open_npz(tmp_path / "be.npz") as npz:
        got = npz_array(npz, "k", tmp_path / "be.npz")
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, A.astype(np.int32))


def _crc_damaged() -> bytes:
    data = _npz_bytes(k=A)
    return _flip(data, data.find(A.tobytes()[:16]) + 3)  # a byte of the stored member


def _deflate_damaged() -> bytes:
    data = _npz_bytes(compressed=True, k=np.random.default_rng(0).normal(size=(50, 50)))
    return _flip(data, len(data) // 2)


NPZ_CASES = {
    "empty": (b"", r"the file is empty"),
    "truncated": (_npz_bytes(k=A)[:500], r"not a readable .npz archive: truncated or damaged"),
    "npy instead": (_npy_bytes(A), r"holds a single array \(.npy\), expected an .npz archive"),
    "crc": (_crc_damaged(), r"key 'k' is damaged \(bad CRC or truncated"),
    "deflate": (_deflate_damaged(), r"key 'k' is damaged"),
    "object member": (_npz_bytes(k=np.array([1, "a"], dtype=object)), r"key 'k' is an object \(pickled\) array, which is never unpickled"),
    "missing key": (_npz_bytes(other=A), r"missing key 'k' \(found keys: \['other'\]\)"),
}


@pytest.mark.parametrize("case", NPZ_CASES)
def test_bad_npz_names_file_key_and_expectation(tmp_path, case):
    data, match = NPZ_CASES[case]
    path = tmp_path / "a.npz"
    path.write_bytes(data)
    with pytest.raises(DataFormatError, match=rf"a.npz: .*{match}"):
        with open_npz(path) as npz:
            npz_array(npz, "k", path)


@pytest.mark.parametrize("damage", ["truncate", "empty", "junk"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_datamodule_names_a_damaged_test_file(tmp_path, kind, damage):
    data = tiny(kind, tmp_path)
    raw = data.test_file.read_bytes()
    data.test_file.write_bytes({"truncate": raw[: len(raw) // 2], "empty": b"", "junk": pickle.dumps([1, 2])}[damage])
    with pytest.raises(DataFormatError, match=rf"{data.test_file.name}: "):
        data.datamodule().setup("fit")
