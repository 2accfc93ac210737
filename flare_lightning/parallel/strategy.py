"""DDP over data-parallel x context-parallel groups: ``--trainer.strategy`` for meshes
larger than one GPU."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.strategies import DDPStrategy

from flare_lightning.parallel.context import ContextGroup
from flare_lightning.parallel.hooks import attach_context, detach_context
from flare_lightning.parallel.nccl import use_small_nccl_buffers
from flare_lightning.parallel.staging import host_staged_allreduce_hook


class ContextParallelStrategy(DDPStrategy):
    """Each group of ``context_parallel`` consecutive ranks trains on the same samples, each
    rank on a contiguous share of every sample's points (8 GPUs with ``context_parallel=2``:
    4 data-parallel groups of 2). Select with
    ``--trainer.strategy=flare_lightning.parallel.ContextParallelStrategy
    --trainer.strategy.context_parallel=2``.

    The loaders deal samples to data-parallel groups (``distributed_sampler_kwargs``); the
    module's ``model`` shards its inputs and gathers its outputs (``attach_context``), so
    the loss, the metrics and predictions see whole samples on every rank. Gradients: every
    rank of a group minimises the same whole-sample loss, so the sum of the group's
    gradients is ``context_parallel`` times the sample's, and DDP's mean over all ranks
    gives the mean over data-parallel groups of the samples' gradients, as plain DDP.
    Metrics synchronise over the world: the ranks of a group add the same per-sample
    values, so sums and counts both grow G-fold and every mean is unchanged.

    Args:
        context_parallel: ranks per context group; must divide the world size (keep a group
            within one node: its collectives run once per block, forward and backward).
        small_nccl_buffers: ask NCCL for 1 MiB buffers on at most 4 channels (where
            ``NCCL_BUFFSIZE`` / ``NCCL_MAX_NCHANNELS`` are unset): the group's collectives are
            tiny, and the default buffers take memory a huge sample could use (``parallel.nccl``).
            With ``process_group_backend="gloo"`` on GPUs no communicator lives on the GPUs at
            all: the group's collectives and DDP's gradient buckets go through host copies
            (``parallel.staging``), at some cost per collective.
        **kwargs: passed to ``DDPStrategy`` (e.g. ``find_unused_parameters``).
    """

    strategy_name = "context_parallel"

    def __init__(self, context_parallel: int = 2, small_nccl_buffers: bool = True, **kwargs: Any) -> None:
        if int(context_parallel) != context_parallel or context_parallel < 1:
            raise ValueError(f"trainer.strategy.context_parallel must be a positive integer, got {context_parallel!r}")
        if kwargs.get("process_group_backend") == "gloo" and kwargs.get("ddp_comm_hook") is None:
            kwargs["ddp_comm_hook"] = host_staged_allreduce_hook  # used on CUDA only (DDPStrategy)
        super().__init__(**kwargs)
        self.context_parallel = int(context_parallel)
        self.small_nccl_buffers = small_nccl_buffers
        self.context: ContextGroup | None = None
        self.data_parallel_size = 1
        self.data_parallel_rank = 0

    def setup_distributed(self) -> None:
        if self.small_nccl_buffers:  # each process, before its NCCL communicator exists
            use_small_nccl_buffers()
        super().setup_distributed()
        world = self.world_size
        if world % self.context_parallel != 0:
            raise ValueError(
                f"trainer.strategy.context_parallel={self.context_parallel} must divide the number of "
                f"processes ({world} = devices x nodes)"
            )
        self.context, self.data_parallel_size, self.data_parallel_rank = ContextGroup.split_world(self.context_parallel)

    @property
    def context_rank(self) -> int:
        """This rank's position in its context group (0 writes the group's outputs)."""
        return self.global_rank % self.context_parallel

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": self.world_size // self.context_parallel, "rank": self.global_rank // self.context_parallel}

    def setup(self, trainer: L.Trainer) -> None:
        model = getattr(self.lightning_module, "model", None)
        if model is None:
            raise ValueError(
                f"ContextParallelStrategy: {type(self.lightning_module).__name__} has no `model` attribute "
                "(the network run on x [B, N, C] and mask [B, N]) to split over points"
            )
        if getattr(self.lightning_module, "hparams", {}).get("fast_step"):
            raise ValueError(
                "model.fast_step does not combine with ContextParallelStrategy: its CUDA graph would "
                "capture the context group's collectives (untested); drop one of them"
            )
        attach_context(model, self.context)
        super().setup(trainer)

    def teardown(self) -> None:
        model = getattr(self.lightning_module, "model", None)
        if model is not None:
            detach_context(model)
        super().teardown()
