"""LightningDataModules, one per dataset, over torch_geometric datasets.

Names are imported on first use (PEP 562), so a process that needs one generator, such
as a spawned data-generation worker, does not import torch, Lightning and every dataset.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DarcyDataModule": "darcy",
    "DarcyDataset": "darcy",
    "DrivAerMLDataModule": "drivaerml",
    "DrivAerMLDataset": "drivaerml",
    "ElasticityDataModule": "elasticity",
    "ElasticityDataset": "elasticity",
    "LPBFDataModule": "lpbf",
    "LPBFDataset": "lpbf",
    "MeshDataModule": "mesh_datamodule",
    "MeshDataset": "mesh_dataset",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"datamodules.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
