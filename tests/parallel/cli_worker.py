"""One rank of a multi-process ``flare`` run on CPU: Lightning finds LOCAL_RANK and
friends in the environment, so it joins the (already initialised) gloo group instead of
launching processes itself."""

from __future__ import annotations

import os

import lightning as L

from tests.helpers import run_cli


def run_commands(rank: int, world: int, commands: list[list[str]]) -> None:
    """Run each ``flare`` command line in turn on this rank; a run stopped by
    ``tests.test_resume.Kill`` (a simulated pre-emption) counts as done."""
    from tests.test_resume import KilledForTest

    os.environ.update(
        LOCAL_RANK=str(rank), RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT="29500",  # unused: the group exists already
    )
    for args in commands:
        try:
            run_cli(args)
        except KilledForTest:
            pass


class AssertSharded(L.Callback):
    """Fails the run unless every training step's FLARE blocks see ``points`` points per
    sample (this rank's share) while the loss sees whole samples; appends each step's loss
    on this rank to ``<default_root_dir>/losses_rank<r>.txt`` (kept across a resume).

    Args:
        points: expected points per sample inside the model.
    """

    def __init__(self, points: int) -> None:
        self.points = points
        self.seen: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.model.blocks[0].register_forward_pre_hook(lambda m, args: self.seen.append(args[0].shape[1]))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.clear()  # analysis callbacks run the whole model on rank 0 between steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        assert self.seen and set(self.seen) == {self.points}, f"blocks saw {set(self.seen)} points, not {self.points}"
        assert batch["x"].shape[1] == 169, "the loss must see whole samples"
        path = os.path.join(trainer.default_root_dir, f"losses_rank{trainer.global_rank}.txt")
        with open(path, "a") as f:
            f.write(f"{trainer.global_step - 1} {float(outputs['loss']):.9e}\n")
