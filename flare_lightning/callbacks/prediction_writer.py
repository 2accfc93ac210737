"""Write ``flare predict`` outputs as they come: one VTK file per mesh, with the prediction
and, where the input has targets, the target and the error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from flare_lightning.atomic import remove_stale_temps
from flare_lightning.forces.metrics import sample_force_coefficients
from flare_lightning.io.mesh_geometry import MeshGeometry
from flare_lightning.runs.records import run_dir
from flare_lightning.io.vtk_writer import write_fields


class PredictionWriter(BasePredictionWriter):
    """After each predict batch, writes every sample to ``<output_dir>/<name>.vtp|.vtu``:
    ``.vtp`` when the input was a VTK surface, ``.vtu`` for volumes and point clouds, with
    the input's points and cells when it had them. Arrays (de-normalised, on the points or
    cells the values belong to): ``prediction``, and ``target``, ``error`` (prediction -
    target) plus the field-data scalar ``rel_l2`` when targets are known. Names come from
    the source (DrivAerML run id, LPBF case, file stem; ``sample_<id>`` for test-split
    samples without one; each name gives its own file, ``<name>.vtu``). Nothing is kept in
    memory between batches; under DDP every rank writes the files of its own meshes (each
    mesh is predicted by exactly one rank; under context parallelism the first rank of each
    context group writes its group's meshes). A prediction that is not finite stops the
    command, naming the mesh, instead of writing it; temporary files that a killed predict
    left in the output folder are removed when the next one starts.

    Args:
        output_dir: folder for the files (default: the run's log folder, ``<run>/predict/``
            for ``flare predict --ckpt_path ...``).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.written: list[Path] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning would otherwise keep every batch's outputs until predict ends.
        trainer.predict_loop.return_predictions = False
        self.written = []
        if trainer.is_global_zero and not trainer.fast_dev_run:
            for pattern in (".*.vtu", ".*.vtp"):  # output names never start with a dot: these are temporaries
                for tmp in remove_stale_temps(self.folder(trainer), pattern):
                    rank_zero_info(f"removed {tmp}, left by an interrupted predict")
        trainer.strategy.barrier("prediction_writer")  # no rank writes before the folder is clean

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.written:
            count = len(set(self.written))
            rank_zero_info(f"predictions written to {self.folder(trainer)} ({count} files from rank 0)")

    def folder(self, trainer: L.Trainer) -> Path:
        return Path(self.output_dir) if self.output_dir else run_dir(trainer)

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        if trainer.fast_dev_run:  # a debug run leaves no files
            return
        if getattr(trainer.strategy, "context_rank", 0) != 0:
            return  # context parallelism: the group's first rank writes its whole samples
        dm = getattr(trainer, "datamodule", None)
        components = getattr(dm, "target_names", None)
        folder = self.folder(trainer)
        for i, sample_id in enumerate(batch["sample_id"].tolist()):
            keep = batch["mask"][i]
            pred = _numpy(prediction["pred"][i][keep])
            geometry = batch["meshes"][i] if "meshes" in batch else _test_geometry(dm, batch, i, int(sample_id))
            if not np.isfinite(pred).all():
                raise FloatingPointError(
                    f"the prediction for {geometry.name} holds {int((~np.isfinite(pred)).sum())} NaN/Inf values: "
                    f"not written (check the checkpoint and this input); files written so far are in {folder}"
                )
            arrays, scalars = {"prediction": pred}, {}
            if "y" in batch and bool(batch.get("has_target", batch["mask"].new_ones(len(batch["mask"])))[i]):
                target = _numpy(batch["y"][i][keep])
                arrays.update(target=target, error=pred - target)
                scalars["rel_l2"] = float(np.linalg.norm(pred - target) / max(np.linalg.norm(target), 1e-12))
            reference = getattr(dm, "force_reference", None)  # surfaces with forces: DrivAerML drag and lift
            if reference is not None:
                per_point = {k: _numpy(v[i][keep]) for k, v in batch.items() if _per_point(v, batch)}
                scalars.update(sample_force_coefficients(per_point | arrays, **reference))
            arrays = {k: v[:, 0] if v.shape[1] == 1 else v for k, v in arrays.items()}
            self.written.append(write_fields(folder / geometry.name, geometry, arrays, components, scalars))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _per_point(value: Any, batch: dict[str, Any]) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 3 and value.shape[:2] == batch["mask"].shape


def _test_geometry(dm: Any, batch: dict[str, Any], i: int, sample_id: int) -> MeshGeometry:
    """A test-split sample as a point cloud at its model coordinates, named by its dataset."""
    dataset = getattr(dm, "datasets", {}).get("test")
    name_of = getattr(dataset, "output_name", None)
    name = name_of(sample_id) if name_of is not None else f"sample_{sample_id:05d}"
    return MeshGeometry(name, "points", points=_numpy(batch["pos"][i][batch["mask"][i]]))
