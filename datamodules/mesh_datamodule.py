"""Shared LightningDataModule: splits, training-split normalisation statistics and
padded loaders over ``MeshDataset``s (one cache per split) and ``RunFilesDataset``s (one per run)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.collate import EVAL_FIELDS, TRAIN_FIELDS, PaddedCollate
from datamodules.mesh_dataset import MeshDataset
from datamodules.point_sets import PointSetReader
from datamodules.predict_files import PredictCollate, PredictFileDataset, check_unique_names, resolve_predict_files
from datamodules.recipes import made_here
from datamodules.run_files import RunFilesDataset
from datamodules.subsample import EpochShuffleSampler, PointSubsample, ShardSampler
from datamodules.workers import loader_worker_init
from flare_lightning import compat
from flare_lightning.training.normalizer import stats_from_moments

# The splits each stage reads. Fit also reads and checks the test split, so that bad test
# data fails before the first training step; predict without predict_files runs on it.
STAGE_SPLITS = {"fit": ("val", "train", "test"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


class MeshDataModule(L.LightningDataModule):
    """Base for the dataset modules.

    Subclasses set ``in_dim``/``out_dim`` (known at construction, so the CLI can link
    them into the model), create missing data in ``prepare_data`` and build the datasets
    of the splits a stage needs in ``make_datasets(splits)`` (``STAGE_SPLITS`` says which:
    the stage-to-split rule lives here only). They take this class's arguments as keyword
    arguments (``**kwargs``, forwarded by name: LightningCLI still lists them under
    ``--data.init_args.*``), re-declaring one only to give it another default. This class
    fits normalisation statistics on ``train`` only and serves padded batches (see
    ``PaddedCollate``).

    Protocol: ``n_val: 0`` means no validation at all (``has_val`` is False and
    ``val_dataloader`` returns no loader), never validation on test data. ``setup("fit")``
    also reads and checks the test split, so bad test data fails before the first
    training step, and refuses splits that share a sample (same file content).

    Args:
        root: data folder.
        batch_size: samples per training batch.
        eval_batch_size: samples per validation/test/predict batch (default: batch_size).
        num_workers: loader worker processes (they read, subsample and collate samples).
        prefetch_factor: batches each worker prepares ahead (None: PyTorch's default, 2); without
            workers (``num_workers: 0``) it does not apply.
        persistent_workers: keep the workers alive between epochs (no re-start per epoch); without
            workers it does not apply.
        pin_memory: page-locked batches, so that host-to-GPU copies are asynchronous (None:
            on when the trainer runs on a GPU).
        train_points: if set, train on this many random points per sample, drawn anew
            each epoch without replacement; evaluation always uses every point.
        seed: seed of the shuffling and the point subsets.
        pad_to_buckets: pad each batch's point count up to a few bucket sizes (at most
            25% more points), so that meshes of varying sizes make few batch shapes: use
            it with ``model.fast_step``, which captures one CUDA graph per shape.
        predict_files: ``flare predict`` on these meshes instead of the test split: a folder,
            a glob or a file (the dataset's own formats, or plain ``.npz``/``.vtp``/``.vtu``
            point sets, see ``predict_reader``); read one at a time at full resolution.
    """

    in_dim: int
    out_dim: int
    pos_dim: int | None = None  # coordinates per point; the other in_dim columns are input fields
    n_val: int = 0
    generated_as = "generated"  # data_source of locally made data ("proxy" for labelled proxies)

    @property
    def data_source(self) -> str:
        """For run records: ``files`` (read from ``root``), or ``generated_as`` when this
        project made the data in ``root`` (``datamodules.recipes`` kept its recipe there)."""
        return self.generated_as if made_here(self.root) else "files"

    def __init__(
        self,
        *,
        root: str | Path,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory: bool | None = None,
        train_points: int | None = None,
        seed: int = 0,
        pad_to_buckets: bool = False,
        predict_files: str | list[str] | None = None,
    ) -> None:
        super().__init__()
        self.check_options(1, batch_size=batch_size)
        self.check_options(1, allow_none=True, eval_batch_size=eval_batch_size, train_points=train_points,
                           prefetch_factor=prefetch_factor)
        self.check_options(0, num_workers=num_workers)
        self.predict_files = predict_files
        self.root = Path(root)
        self.pad_to_buckets = pad_to_buckets
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.prefetch_factor, self.persistent_workers, self.pin_memory = prefetch_factor, persistent_workers, pin_memory
        self.train_points = train_points
        self.seed = seed
        self.subsample = PointSubsample(train_points, seed) if train_points is not None else None
        self.datasets: dict[str, Dataset] = {}
        self._train_sampler: EpochShuffleSampler | None = None
        self._resume_position: dict[str, int] | None = None
        self.input_stats: tuple[Tensor, Tensor] | None = None
        self.target_stats: tuple[Tensor, Tensor] | None = None

    def check_options(self, minimum: int, allow_none: bool = False, **options: int | None) -> None:
        """Raise a ``ValueError`` naming the first option below ``minimum`` (or None when
        not allowed): the shared check of counts and sizes at construction."""
        for name, value in options.items():
            if value is None and allow_none:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                extra = " or None" if allow_none else ""
                raise ValueError(f"{type(self).__name__}: {name} must be >= {minimum}{extra}, got {value!r}")

    @property
    def has_val(self) -> bool:
        """Whether there is a validation split (``n_val > 0``); without one, fit neither
        validates nor selects a checkpoint on validation data, and never uses test data."""
        return self.n_val > 0

    def build_datasets(self, stage: str) -> dict[str, Dataset]:
        """The datasets of ``stage`` (``STAGE_SPLITS``; validation only with ``n_val > 0``),
        the training one with the point subsampling attached."""
        splits = [s for s in STAGE_SPLITS[stage] if s != "val" or self.has_val]
        datasets = self.make_datasets(splits)
        if sorted(datasets) != sorted(splits):
            raise RuntimeError(f"{type(self).__name__}.make_datasets({splits}) returned the splits {sorted(datasets)}")
        if "train" in datasets:
            self.with_subsample(datasets["train"])
        return datasets

    def make_datasets(self, splits: list[str]) -> dict[str, Dataset]:
        """One dataset for each of ``splits`` (from ``train``, ``val``, ``test``)."""
        raise NotImplementedError

    def predict_reader(self):
        """Reads one ``predict_files`` mesh (a picklable ``reader(path) -> sample dict`` with
        ``output_name(path)``); datasets with their own formats override this."""
        return PointSetReader(self.in_dim, self.out_dim, self.pos_dim)

    def predicting_files(self) -> bool:
        """True while ``flare predict`` runs on ``predict_files`` (no training data is needed)."""
        trainer = self.trainer
        return self.predict_files is not None and trainer is not None and trainer.state.fn == "predict"

    def setup(self, stage: str) -> None:
        if stage == "predict" and self.predict_files is not None:
            dataset = PredictFileDataset(resolve_predict_files(self.predict_files), self.predict_reader())
            check_unique_names(dataset)
            self.datasets = {"predict": dataset}
            return
        # Building a dataset processes raw files into its cache on first use. Under DDP one
        # process (per node, like prepare_data) does that while the others wait, then they
        # read the finished cache: concurrent writers would corrupt it.
        if stage == "validate" and not self.has_val:
            raise ValueError(f"{type(self).__name__}: n_val=0, so there is no validation split to evaluate")
        first = self._processes_first()
        if not first:
            self._barrier()
        self.datasets = self.build_datasets(stage)
        if first:
            self._barrier()
        for name, ds in self.datasets.items():
            if len(ds) == 0:
                raise ValueError(f"{type(self).__name__}: the {name} split is empty (root={self.root})")
        check_disjoint(type(self).__name__, self.datasets)
        if "train" in self.datasets:
            self.input_stats, self.target_stats = self.fit_stats(self.datasets["train"])
        # Hand the statistics to the module now, before callbacks' setup copies it (EMA).
        module = self.trainer.lightning_module if self.trainer is not None else None
        if hasattr(module, "use_data_stats"):
            module.use_data_stats(self, stage)

    def fit_stats(self, train: Dataset) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Per-channel (mean, std) of model inputs and of targets over the training split, merged
        from per-sample moments (one sample at a time: memory does not grow with the split)."""
        base, indices = _unwrap(train)
        moments = [base.sample_moments(i) for i in indices]
        return stats_from_moments(m[0] for m in moments), stats_from_moments(m[1] for m in moments)

    def _loader(self, split: str, batch_size: int, train: bool = False) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"{type(self).__name__}: no {split} split; was setup() run for this stage?")
        ds = self.datasets[split]
        replicas, rank = self._ranks()
        if isinstance(ds, PredictFileDataset):
            collate = PredictCollate()
        else:
            collate = PaddedCollate(pad_to_buckets=self.pad_to_buckets, fields=TRAIN_FIELDS if train else EVAL_FIELDS)
        kwargs = dict(batch_size=batch_size, collate_fn=collate, num_workers=self.num_workers,
                      pin_memory=self._pin_memory())
        if self.num_workers > 0:  # options of worker processes: DataLoader refuses them without any
            kwargs.update(prefetch_factor=self.prefetch_factor, persistent_workers=self.persistent_workers,
                          worker_init_fn=loader_worker_init)  # datamodules/workers.py
        if not train:
            return DataLoader(ds, sampler=ShardSampler(len(ds), replicas, rank), **kwargs)
        self._train_sampler = EpochShuffleSampler(len(ds), self.seed, self.subsample, replicas, rank)
        if self._resume_position is not None:
            self._train_sampler.load_state_dict(self._resume_position)
            self._resume_position = None
        return DataLoader(ds, sampler=self._train_sampler, **kwargs)

    def _processes_first(self) -> bool:
        trainer = self.trainer
        if trainer is None:
            return True
        return (trainer.local_rank if self.prepare_data_per_node else trainer.global_rank) == 0

    def _barrier(self) -> None:
        if self.trainer is not None and self.trainer.world_size > 1:
            self.trainer.strategy.barrier("datasets")

    def _pin_memory(self) -> bool:
        """Page-locked batches (``pin_memory``, by default when the trainer runs on a GPU), so
        that their copies are asynchronous (a pageable copy waits for the GPU's stream). At
        Darcy's 230 kB batches it made no measured difference (benchmarks/RESULTS.md); it is
        for large batches."""
        if self.pin_memory is not None:
            return self.pin_memory
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def _ranks(self) -> tuple[int, int]:
        """(number of sample shards, this rank's shard) of the attached trainer; (1, 0) outside
        one. The strategy decides: the world for DDP, data-parallel groups under context
        parallelism (the ranks of a group share samples)."""
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        shards = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}
        return shards.get("num_replicas", trainer.world_size), shards.get("rank", trainer.global_rank)

    # --- resuming: the position in the training data travels in checkpoints -------------
    def state_dict(self) -> dict[str, Any]:
        """The training data position (epoch, samples of this rank's share done), saved by
        Lightning in every checkpoint. A batch counts once the trainer has processed it
        (its optimiser step done), which is what Lightning itself replays from."""
        trainer, sampler = self.trainer, self._train_sampler
        if trainer is None or sampler is None:
            return {}
        done = compat.batches_processed(trainer)
        finished = done >= trainer.num_training_batches
        return {"train_position": sampler.state_at(len(sampler) if finished else done * self.batch_size)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the training order where a checkpoint left it: Lightning calls this before
        the training loader first iterates (the loader may not exist yet)."""
        position = state.get("train_position")
        if position is None:
            return
        # Lightning warns that a mid-epoch resume replays data unless the *loader* is
        # stateful; here the datamodule carries the position, so the warning is moot.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        if self._train_sampler is not None:
            self._train_sampler.load_state_dict(position)
        else:
            self._resume_position = position

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.has_val:
            return self._loader("val", self.eval_batch_size)
        # No loader at all without a validation split: Lightning then skips validation (and
        # would warn that the empty list has length zero, which is the intention here).
        warnings.filterwarnings("ignore", message="Total length of `list` across ranks is zero")
        return []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict" if "predict" in self.datasets else "test", self.eval_batch_size)

    def with_subsample(self, dataset: MeshDataset | RunFilesDataset) -> MeshDataset | RunFilesDataset:
        """Attach the training point subsampling (if configured) to a dataset."""
        if self.subsample is not None:
            dataset.transform = self.subsample
        return dataset


def check_disjoint(owner: str, datasets: dict[str, Dataset]) -> None:
    """Refuse splits that share a sample (the same file content read into two splits)."""
    seen: dict[Any, tuple[str, str]] = {}
    for split, ds in datasets.items():
        base, indices = _unwrap(ds)
        keys = base.sample_keys()
        for i in indices:
            other = seen.setdefault(keys[i], (split, base.sample_name(i)))
            if other[0] != split:
                raise ValueError(
                    f"{owner}: the {split} and {other[0]} splits overlap: {base.sample_name(i)} is the same data as "
                    f"{other[1]}; training, validation and test data must be disjoint"
                )


def _unwrap(ds: Dataset) -> tuple[MeshDataset | RunFilesDataset, list[int]]:
    """The underlying ``MeshDataset`` or ``RunFilesDataset`` and the sample indices a (possibly
    nested) Subset selects."""
    indices = None
    while isinstance(ds, Subset):
        idx = list(ds.indices)
        indices = idx if indices is None else [idx[i] for i in indices]
        ds = ds.dataset
    if not isinstance(ds, (MeshDataset, RunFilesDataset)):
        raise TypeError(f"expected a MeshDataset or RunFilesDataset (or Subset of one), got {type(ds).__name__}")
    return ds, list(range(len(ds))) if indices is None else indices
