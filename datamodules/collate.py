"""Collate a list of ``Data(pos, x, y)`` into one padded dense batch with a mask."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_dense_batch


def model_inputs(data: Data | Batch) -> Tensor:
    """Per-point model input: coordinates, then input fields if any -> [N, d + f]."""
    x = getattr(data, "x", None)
    return data.pos if x is None else torch.cat([data.pos, x], dim=-1)


class PaddedCollate:
    """PyG batch -> dict of dense tensors.

    Returns ``x`` [B, N_max, d + f] (model inputs), ``y`` [B, N_max, o], ``pos``
    [B, N_max, d], ``mask`` [B, N_max] bool (True on real points) and ``sample_id`` [B].
    Batch size and maximum node count are passed to ``to_dense_batch`` so that no
    device synchronisation is needed.
    """

    def __call__(self, data_list: list[Data]) -> dict[str, Tensor]:
        batch = Batch.from_data_list(data_list)
        size, n_max = len(data_list), max(d.num_nodes for d in data_list)

        def dense(t: Tensor) -> tuple[Tensor, Tensor]:
            return to_dense_batch(t, batch.batch, batch_size=size, max_num_nodes=n_max)

        x, mask = dense(model_inputs(batch))
        return {
            "x": x,
            "y": dense(batch.y)[0],
            "pos": dense(batch.pos)[0],
            "mask": mask,
            "sample_id": batch.sample_id.view(-1),
        }
