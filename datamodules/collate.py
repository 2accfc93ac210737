"""Collate a list of ``Data(pos, x, y)`` into one padded dense batch with a mask."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_dense_batch


def model_inputs(data: Data | Batch) -> Tensor:
    """Per-point model input: coordinates, then input fields if any -> [N, d + f]."""
    x = getattr(data, "x", None)
    return data.pos if x is None else torch.cat([data.pos, x], dim=-1)


def bucket_size(n: int) -> int:
    """The smallest size >= n of the form 2^k x {1, 1.25, 1.5, 1.75} (at least 16).

    Padding every batch to these sizes bounds the number of distinct shapes (four per
    doubling of N, so a CUDA graph each) at a cost of at most 25% extra points (12.5% for
    sizes spread evenly on a log scale).
    """
    if n <= 16:
        return 16
    base = 1 << (n.bit_length() - 1)  # largest power of two <= n
    for step in (0, 1, 2, 3, 4):
        size = base + step * base // 4
        if size >= n:
            return size
    raise AssertionError("unreachable: base * 2 >= n")


def has_padding(data_list: list[Data], n_max: int) -> bool:
    """Whether a batch padded to ``n_max`` points holds padding (a sample with fewer points):
    a host-side answer, so a network can skip masking without a device sync."""
    return any(d.num_nodes != n_max for d in data_list)


def dense_batch(data_list: list[Data], fields: Iterable[str], n_max: int | None = None) -> dict[str, Any]:
    """The samples as one padded batch: ``x`` (model inputs) [B, n_max, d + f], ``mask``,
    ``padded``, ``sample_id`` and each of ``fields`` the batch holds, as [B, n_max, ·].
    ``n_max`` (default: the largest sample) is passed to ``to_dense_batch``: no device sync."""
    size, n_max = len(data_list), n_max or max(d.num_nodes for d in data_list)
    if not has_padding(data_list, n_max):
        return _stacked(data_list, fields)
    batch = Batch.from_data_list(data_list)

    def dense(t: Tensor) -> tuple[Tensor, Tensor]:
        return to_dense_batch(t, batch.batch, batch_size=size, max_num_nodes=n_max)

    x, mask = dense(model_inputs(batch))
    out: dict[str, Any] = {"x": x, "mask": mask, "padded": has_padding(data_list, n_max),
                           "sample_id": batch.sample_id.view(-1)}
    out.update({k: dense(batch[k])[0] for k in fields if k in batch})
    return out


def _stacked(data_list: list[Data], fields: Iterable[str]) -> dict[str, Any]:
    """``dense_batch`` of samples that all have the batch's point count: stacked, the same
    values without the scatter of ``to_dense_batch`` (a 2^20-point DrivAerML batch in a
    fraction of the time)."""
    x = torch.stack([model_inputs(d) for d in data_list])
    out: dict[str, Any] = {"x": x, "mask": torch.ones(x.shape[:2], dtype=torch.bool), "padded": False,
                           "sample_id": torch.cat([d.sample_id.view(-1) for d in data_list])}
    out.update({k: torch.stack([d[k] for d in data_list]) for k in fields if k in data_list[0]})
    return out


EVAL_FIELDS = ("y", "pos", "normals", "areas")  # normals, areas: surfaces that keep them (forces, predictions)
TRAIN_FIELDS = ("y",)  # what a training step reads besides x and mask: the rest would only cross to the GPU


class PaddedCollate:
    """PyG batch -> dict of dense tensors.

    Returns ``x`` [B, N_max, d + f] (model inputs), ``y`` [B, N_max, o], ``pos``
    [B, N_max, d], ``mask`` [B, N_max] bool (True on real points), ``sample_id`` [B],
    ``padded`` (a Python bool: some sample is padded, i.e. ``mask`` is not all True; known
    here on the host, so a network can skip masking without a device sync), and
    ``normals`` [B, N_max, 3] / ``areas`` [B, N_max, 1] when the samples carry them.
    Batch size and maximum node count are passed to ``to_dense_batch`` so that no
    device synchronisation is needed.

    Args:
        pad_to_buckets: pad N_max up to ``bucket_size(N_max)`` so that meshes of varying
            sizes make few distinct batch shapes (for ``fast_step``'s CUDA graphs).
        fields: the per-point fields besides ``x`` and ``mask`` a batch keeps (those the
            samples carry): ``EVAL_FIELDS`` by default, ``TRAIN_FIELDS`` for training batches
            (at 2^20 surface points, pos, normals and areas are 29 MB a step to the GPU unread).
    """

    def __init__(self, pad_to_buckets: bool = False, fields: tuple[str, ...] = EVAL_FIELDS) -> None:
        self.pad_to_buckets = pad_to_buckets
        self.fields = tuple(fields)

    def __call__(self, data_list: list[Data]) -> dict[str, Any]:
        missing = [int(d.sample_id) for d in data_list if getattr(d, "y", None) is None]
        if missing:
            raise ValueError(f"PaddedCollate: samples {missing} carry no targets `y`; fit, validate and test batches "
                             "need them (files without targets go through `flare predict`)")
        n_max = max(d.num_nodes for d in data_list)
        if self.pad_to_buckets:
            n_max = bucket_size(n_max)
        return dense_batch(data_list, self.fields, n_max)
