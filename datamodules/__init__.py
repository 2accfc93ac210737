"""LightningDataModules, one per dataset, over torch_geometric datasets."""

from datamodules.darcy import DarcyDataModule, DarcyDataset
from datamodules.drivaerml import DrivAerMLDataModule, DrivAerMLDataset
from datamodules.elasticity import ElasticityDataModule, ElasticityDataset
from datamodules.lpbf import LPBFDataModule, LPBFDataset
from datamodules.mesh_datamodule import MeshDataModule
from datamodules.mesh_dataset import MeshDataset

__all__ = [
    "DarcyDataModule",
    "DarcyDataset",
    "DrivAerMLDataModule",
    "DrivAerMLDataset",
    "ElasticityDataModule",
    "ElasticityDataset",
    "LPBFDataModule",
    "LPBFDataset",
    "MeshDataModule",
    "MeshDataset",
]
