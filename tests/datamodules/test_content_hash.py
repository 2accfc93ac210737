"""Raw-file digests: recorded with the file's stamp beside the cache, so a later process reuses
them without reading the file, and a rewritten file (same size and mtime) is hashed again."""

from __future__ import annotations

import json
import os

import pytest

from datamodules import content_hash
from datamodules.content_hash import ALGORITHM, file_digest, file_digests


def no_hashing(*args):
    raise AssertionError("a file was read again")


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setattr(content_hash, "_memo", {})  # each test starts as a new process would
    paths = []
    for i in range(3):
        path = tmp_path / "raw" / f"f{i}.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(1000 + i))
        paths.append(path)
    return paths


def test_digests_are_recorded_and_reused_by_a_later_process(files, tmp_path, monkeypatch):
    memo = tmp_path / "processed" / "raw_digests.json"
    first = file_digests(files, memo)
    assert first == {p: file_digest(p) for p in files}
    record = json.loads(memo.read_text())
    assert record["algorithm"] == ALGORITHM and len(record["files"]) == 3
    monkeypatch.setattr(content_hash, "_memo", {})
    monkeypatch.setattr(content_hash, "hasher", no_hashing)
    assert file_digests(files, memo) == first  # from the memo: no file read


def test_a_rewritten_file_is_hashed_again(files, tmp_path, monkeypatch):
    memo = tmp_path / "raw_digests.json"
    before = file_digests(files, memo)
    st = files[1].stat()
    data = bytearray(files[1].read_bytes())
    data[10] ^= 0xFF
    files[1].write_bytes(bytes(data))  # same size
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime; ctime moves
    monkeypatch.setattr(content_hash, "_memo", {})
    after = file_digests(files, memo)
    assert after[files[1]] != before[files[1]]
    assert after[files[0]] == before[files[0]] and after[files[2]] == before[files[2]]
    assert json.loads(memo.read_text())["files"][str(files[1].resolve())]["digest"] == after[files[1]]


@pytest.mark.parametrize("content", ["not json", '{"algorithm": "md5", "files": {}}', '["a list"]', '{"files": 3}',
                                     '{"algorithm": "ALG", "files": 3}', '{"algorithm": "ALG", "files": {"x": 1}}'])
def test_a_bad_or_foreign_memo_is_ignored_and_replaced(files, tmp_path, content):
    memo = tmp_path / "raw_digests.json"
    memo.write_text(content.replace("ALG", ALGORITHM))
    assert file_digests(files, memo) == {p: file_digest(p) for p in files}
    assert json.loads(memo.read_text())["algorithm"] == ALGORITHM


def test_an_unwritable_memo_only_costs_the_hashing(files, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(content_hash, "atomic_write_text", refuse)
    memo = tmp_path / "raw_digests.json"
    assert file_digests(files, memo) == {p: file_digest(p) for p in files}
    assert not memo.exists()


def test_a_dataset_loads_its_cache_in_a_new_process_without_reading_the_raw_files(tmp_path, monkeypatch):
    from tests.datamodules.tiny_data import tiny

    data = tiny("elasticity", tmp_path)
    data.datamodule().setup("fit")
    assert (tmp_path / "processed" / "raw_digests.json").is_file()
    monkeypatch.setattr(content_hash, "_memo", {})
    monkeypatch.setattr(content_hash, "file_digest", lambda path: no_hashing())  # the cache's own checksums still run
    dm = data.datamodule()
    dm.setup("fit")  # would raise if a raw file were hashed again
    assert len(dm.datasets["train"]) > 0
