"""The processed-data cache: one file of concatenated float32 fields and sample offsets,
memory-mapped on load, keyed on the raw files' content and the processing options, and
verified against stored checksums.

Layout (``torch.save`` of plain tensors, strings and dicts only, so it loads with
``weights_only=True``)::

    {"meta": {"format": 2, "config": <options JSON>, "raw": {file: digest},
              "checksums": {field: digest}},
     "fields": {"pos": [sum N, d], "y": [sum N, o], "x"?: [sum N, f], "ptr": [S + 1], ...}}

(``run_files`` writes one such cache per run, adding the run's ``input_moments`` and
``target_moments``.)

``torch.load(mmap=True)`` maps the tensors instead of reading them: host memory does not
grow with the dataset, and DDP ranks on one node share the pages through the page cache.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from datamodules.content_hash import array_digest
from flare_lightning.atomic import atomic_write

FORMAT = 2


def write_cache(path: str | Path, fields: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Save ``fields`` with ``meta`` and their checksums, atomically (temp file + rename)."""
    checksums = {name: array_digest(t.numpy()) for name, t in fields.items()}
    obj = {"meta": {**meta, "format": FORMAT, "checksums": checksums}, "fields": dict(fields)}
    atomic_write(path, lambda f: torch.save(obj, f))


def load_cache(path: str | Path, meta: dict[str, Any], verify: bool = True) -> tuple[dict[str, Tensor] | None, str]:
    """``(fields, "")`` if ``path`` is a complete cache made from the same raw content and
    options, else ``(None, why not)``. Nothing is unpickled beyond tensors and plain types.
    ``verify=False`` skips reading every byte against the checksums (for a cache already
    verified at this stamp): format, options, raw content and completeness are still checked."""
    path = Path(path)
    if not path.exists():
        return None, "absent"
    try:
        obj = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        return None, "unreadable or not a cache (it holds objects other than tensors and plain types: never unpickled)"
    except Exception as err:  # noqa: BLE001 - truncated or damaged zip, ...: all mean "rebuild"
        first_line = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        return None, f"unreadable or not a cache ({type(err).__name__}: {first_line})"
    stored = obj.get("meta") if isinstance(obj, dict) else None
    fields = obj.get("fields") if isinstance(obj, dict) else None
    if not isinstance(stored, dict) or not isinstance(fields, dict) or stored.get("format") != FORMAT:
        return None, "written in another format"
    if stored.get("config") != meta["config"]:
        return None, "made with other processing options"
    if stored.get("raw") != meta["raw"]:
        changed = sorted(k for k in meta["raw"] if stored.get("raw", {}).get(k) != meta["raw"][k])
        return None, f"stale: the content of {changed[:5]} changed since it was made"
    checksums = stored.get("checksums", {})
    if set(checksums) != set(fields) or not {"pos", "y", "ptr"} <= set(fields):
        return None, "corrupt: fields and checksums do not match"
    for name, tensor in fields.items():
        if not isinstance(tensor, Tensor):
            return None, f"corrupt: field {name!r} is not a tensor"
        if verify and array_digest(tensor.numpy()) != checksums[name]:
            return None, f"corrupt: the checksum of field {name!r} does not match (truncated or bit-flipped)"
    return fields, ""
