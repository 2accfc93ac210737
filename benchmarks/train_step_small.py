"""Training step and epoch time at the paper's own sizes, through the real ``flare fit`` path.

(``--datasets drivaerml_1m`` times the 1M-point config the same way, on proxy surfaces.)

Darcy (85x85 = 7,225 points, H16, M256) and elasticity (972 points, H8, M64), 8 blocks,
C=64, batch 2, each with the paper's 1000 training samples (500 steps an epoch), in
bf16-mixed and 32-true (and ``32-tf32``: fp32 with ``--float32_matmul_precision high``, TF32
matmuls and Triton dots; ``bf16-fp32mixer[-tf32]``: bf16 autocast with the mixer in fp32, for FLARE
rows), one run on one card, rows side by side:

| row | what runs |
|---|---|
| ``reference-compiled`` | the authors' formulation (two SDPA calls), ``torch.compile``d as their trainer does |
| ``reference-m128-compiled`` | ``reference-compiled`` at M = 128 (beside ``ours-m128`` at 1M points) |
| ``ours-eager`` | ``flare fit`` with the paper config, its step not captured (``--model.fast_step false``) |
| ``ours-m128`` | ``ours-eager`` with M = 128 latents (the DrivAerML-1M table's second size) |
| ``ours-recompute``, ``ours-m128-recompute`` | those with ``mlp_store_hidden: false`` (the fused MLPs' backward recomputes their layer inputs; drivaerml_1m ships it on) |
| ``ours-fast`` | the same with ``--model.fast_step true`` (compiled model, whole step as a CUDA graph; as ``drivaerml_1m`` ships) |
| ``ours-m128-fast`` | ``ours-fast`` at M = 128 |
| ``ours-fast-grouped``, ``ours-m128-fast-enc128`` | mixer tiles not yet the default (latent groups; one 128-latent encode tile) |
| ``-kvpair``, ``-fused``, ``-proj``, ``-h0``, ``-all`` rows | opt-in kernels not yet the default: the key/value MLP pair; with the folded feed-forward residual; the output projection folded into the feed-forward (``triton_mlp_proj``); LN(x) recomputed in the MLP backward, not written (``RECOMPUTE_H0``); all four |
| ``ours-fast-max-autotune`` | ``ours-fast`` with Inductor's GEMM autotuning (Triton GEMMs, fused epilogues) |
| ``ours-fast-unpinned`` | ``ours-fast`` with pageable batches (as before 2026-11-30's third session) |
| ``ours-fast-coordesc`` | ``ours-fast`` with Inductor's coordinate-descent tuning of its Triton kernels |
| ``ours-fast-masked`` | ``ours-fast`` with the batch's all-True mask handed to the network (the path before the collate's ``padded`` flag) |
| ``transformer-fast`` | the Transformer baseline's config (``configs/baselines/transformer_<dataset>.yaml``), fast step |
| ``transformer-fast-masked`` | ``transformer-fast`` with the all-True mask (masked SDPA instead of flash) |
| ``transolver-fast``, ``perceiverio-fast`` | the other baselines' configs, fast step |

Each row is a real ``flare fit`` (CLI, datamodule, Lightning loop, logging, checkpoints):
epoch 0 warms up (compilation, graph capture) and epoch 1 is timed. Rows slower than
``--full-below-ms`` per step train ``--steps`` batches an epoch and their epoch time is
``(training samples / batch) x step + validation``; fast rows train full epochs.

``--devices 1 2`` times every row on one GPU and under DDP on two (a ``flare fit`` subprocess with
``--trainer.strategy ddp``, each GPU its own batches: ``samples / s`` compares them), in one run.

The rows are written as a record (``benchmarks/records.py``) into ``--out`` (default ``$OUT``,
else ``benchmarks/records/train_step_small/``); with ``--profile``, the captured step's kernels
too (``train_step_kernels``), and for every row where the loop's time goes besides its kernels
(``benchmarks/loop_profile.py``: GPU idle time, host waits and their callers, profiled in the
warm-up epoch; a captured row's on replays, after its warm-up and capture steps).

    python benchmarks/train_step_small.py                       # the whole table
    python benchmarks/train_step_small.py --datasets darcy --precisions bf16-mixed --rows ours-fast
    python benchmarks/train_step_small.py --datasets drivaerml_1m --precisions bf16-mixed --rows ours-fast --devices 1 2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path
from unittest import mock

import lightning as L
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: `benchmarks.` imports and class paths resolve

from benchmarks.accuracy_runs import ELASTICITY_PAPER_COUNTS, FIT_PATHS, config_paths  # noqa: E402
from benchmarks.inductor_sources import kernel_sources  # noqa: E402
from benchmarks.loop_profile import LoopProfile  # noqa: E402
from benchmarks.records import add_out_argument, write_record  # noqa: E402
from flare_lightning.training.device_memory import peak_memory_bytes  # noqa: E402

DATASETS = ("darcy", "elasticity", "drivaerml_1m")  # FLARE rows train configs/<dataset>.yaml (row_configs)
DATA_ARGS = {
    "elasticity": list(ELASTICITY_PAPER_COUNTS),  # 1000 training cells: 500 steps an epoch
    # 1.1M-point proxy surfaces (no download): 41 runs, 40 of them training runs of 2^20 sampled points.
    # An epoch times 39 steps after its first: the sync of that first mark (and a logger read every 10
    # steps) leave the GPU idle while the host catches up, a cost the shipped 400-run epoch spreads over
    # 399 steps. Records before 2026-12-08T03 timed 9 steps of 10 (before 2026-12-07T11, 4 of 5).
    "drivaerml_1m": ["--data.init_args.proxy=true", "--data.init_args.root=data/drivaerml_proxy_1m_41",
                     "--data.init_args.proxy_points=1100000", "--data.init_args.proxy_train_runs=41",
                     "--data.init_args.proxy_test_runs=2", "--data.init_args.n_val=1"],
}
UNCAPTURED = "--model.fast_step=false"  # drivaerml_1m ships the captured step: its rows without it
ROWS = {
    "reference-compiled": [
        "--model.model.class_path=benchmarks.reference_flare.ReferenceSurrogate",
    ],
    "reference-m128-compiled": [  # the authors' formulation at M = 128 (drivaerml_1m's second size)
        "--model.model.class_path=benchmarks.reference_flare.ReferenceSurrogate",
        "--model.model.init_args.num_latents=128",
    ],
    "ours-eager": [UNCAPTURED],
    "ours-m128": ["--model.model.init_args.num_latents=128", UNCAPTURED],
    # the fused MLPs recompute their layers' inputs in backward instead of reading the kept ones
    # (drivaerml_1m ships mlp_store_hidden: true; this is its less memory, slower variant)
    "ours-recompute": ["--model.model.init_args.mlp_store_hidden=false", UNCAPTURED],
    "ours-m128-recompute": ["--model.model.init_args.num_latents=128", "--model.model.init_args.mlp_store_hidden=false",
                            UNCAPTURED],
    "ours-fast": ["--model.fast_step=true"],
    "ours-m128-fast": ["--model.model.init_args.num_latents=128", "--model.fast_step=true"],
    "ours-fast-max-autotune": ["--model.fast_step=true"],
    "ours-fast-unpinned": ["--model.fast_step=true"],
    "ours-fast-coordesc": ["--model.fast_step=true"],
    "ours-fast-masked": ["--model.fast_step=true"],
    # mixer tiles not yet the default (mixtune rounds 7-8), timed in the step they would ship in
    "ours-fast-grouped": ["--model.fast_step=true"],
    "ours-m128-fast-enc128": ["--model.model.init_args.num_latents=128", "--model.fast_step=true"],
    # the key and value MLPs as one fused op (kernels/triton_mlp_pair.py), not yet the default
    "ours-fast-kvpair": ["--model.fast_step=true"],
    "ours-m128-fast-kvpair": ["--model.model.init_args.num_latents=128", "--model.fast_step=true"],
    # ... and with the feed-forward's residual gradient folded into its backward kernel (FOLD_RESIDUAL) too
    "ours-fast-fused": ["--model.fast_step=true"],
    "ours-m128-fast-fused": ["--model.model.init_args.num_latents=128", "--model.fast_step=true"],
    # the attention's out_proj and residual add inside the feed-forward's kernels (kernels/triton_mlp_proj.py);
    # -h0: the MLPs' backward recomputing LN(x) instead of writing it; -all: those, the pair and the folded residual
    "ours-fast-proj": ["--model.fast_step=true"],
    "ours-fast-h0": ["--model.fast_step=true"],
    "ours-m128-fast-proj": ["--model.model.init_args.num_latents=128", "--model.fast_step=true"],
    "ours-fast-all": ["--model.fast_step=true"],
    "ours-m128-fast-all": ["--model.model.init_args.num_latents=128", "--model.fast_step=true"],
    "transformer-fast": ["--model.fast_step=true"],
    "transformer-fast-masked": ["--model.fast_step=true"],
    "transolver-fast": ["--model.fast_step=true"],
    "perceiverio-fast": ["--model.fast_step=true"],
}
PRECISIONS = {  # a --precisions label -> its flare fit arguments (32-tf32: fp32 with TF32 matmuls and dots)
    "32-tf32": ["--trainer.precision=32-true", "--float32_matmul_precision=high"],
    # bf16 autocast with the mixer in fp32 (issue 28's candidate mode; FLARE rows only): exact or TF32 dots
    "bf16-fp32mixer": ["--trainer.precision=bf16-mixed", "--model.model.init_args.fp32_parts=[mixer]"],
    "bf16-fp32mixer-tf32": ["--trainer.precision=bf16-mixed", "--model.model.init_args.fp32_parts=[mixer]",
                            "--float32_matmul_precision=high"],
}
BASELINE_ROWS = {"transformer-fast": "transformer", "transformer-fast-masked": "transformer",
                 "transolver-fast": "transolver", "perceiverio-fast": "perceiverio"}  # row -> configs/baselines/<model>_
ALWAYS_MASKED = staticmethod(lambda batch: batch["mask"])  # the network sees the mask even without padding
INDUCTOR = {"ours-fast-max-autotune": {"max_autotune_gemm": True},
            "ours-fast-coordesc": {"coordinate_descent_tuning": True}}
def grouped_decode_config(m: int, d: int, dtype: torch.dtype = torch.bfloat16):
    """``default_config`` with the backward decode over 128-latent groups, one program each (M > 128:
    two groups at M = 256, their sums in registers, no atomics): the row ``ours-fast-grouped``."""
    from flare_lightning.kernels import triton_mixer as tm

    cfg = tm.default_config(m, d, dtype)
    if m <= 128:
        return cfg
    return dataclasses.replace(cfg, bwd_decode=tm.KernelConfig(64, 128, 4, 2, programs_per_sm=4, latent_groups=-(-m // 128)))


def encode128_config(m: int, d: int, dtype: torch.dtype = torch.bfloat16):
    """``default_config`` with the backward encode over one 128-latent tile at M = 128 (no atomics into
    its dq partials; 8 warps hold its registers unspilled on sm_90): the row ``ours-m128-fast-enc128``."""
    from flare_lightning.kernels import triton_mixer as tm

    cfg = tm.default_config(m, d, dtype)
    if m != 128:
        return cfg
    return dataclasses.replace(cfg, bwd_encode=tm.KernelConfig(64, 128, 8, 2, programs_per_sm=2))


MIXER_TILES = "flare_lightning.kernels.triton_mixer.CONFIG_OVERRIDE"
KV_PAIR = {"flare_lightning.kernels.triton_mlp_pair.KV_PAIR": True}
FUSED = KV_PAIR | {"flare_lightning.kernels.triton_mlp.FOLD_RESIDUAL": True}
PROJ = {"flare_lightning.kernels.triton_mlp_proj.FOLD_PROJECTION": True}
H0 = {"flare_lightning.kernels.triton_mlp.RECOMPUTE_H0": True}
PATCHES = {  # module constants a row sets for its run
    "ours-fast-grouped": {MIXER_TILES: grouped_decode_config},
    "ours-m128-fast-enc128": {MIXER_TILES: encode128_config},
    "ours-fast-kvpair": KV_PAIR, "ours-m128-fast-kvpair": KV_PAIR,
    "ours-fast-fused": FUSED, "ours-m128-fast-fused": FUSED,
    "ours-fast-proj": PROJ, "ours-m128-fast-proj": PROJ, "ours-fast-h0": H0,
    "ours-fast-all": FUSED | PROJ | H0, "ours-m128-fast-all": FUSED | PROJ | H0,
    "ours-fast-unpinned": {"datamodules.mesh_datamodule.MeshDataModule._pin_memory": lambda self: False},
    "ours-fast-masked": {"flare_lightning.training.module.SurrogateModule.network_mask": ALWAYS_MASKED},
    "transformer-fast-masked": {"flare_lightning.training.module.SurrogateModule.network_mask": ALWAYS_MASKED},
}


def row_configs(dataset: str, row: str) -> list[Path]:
    """The configs a row trains: the dataset's FLARE config, then a baseline's fragment for its rows."""
    return config_paths(BASELINE_ROWS.get(row, "flare"), dataset)


def is_fast(row: str) -> bool:
    return "-fast" in row


class EpochTimer(L.Callback):
    """Wall-clock marks (after a device sync) at epoch and validation boundaries. With ``path``
    (a fit in another process, such as DDP's), rank 0 writes them at the end of training as JSON,
    with the batches per epoch of one rank, the batch size and rank 0's peak memory."""

    def __init__(self, path: str | None = None) -> None:
        self.marks: dict[tuple[int, str], tuple[float, int]] = {}
        self.path = path

    def _mark(self, trainer, what: str) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.marks[(trainer.current_epoch, what)] = (time.perf_counter(), trainer.global_step)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._mark(trainer, "start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == 0:  # the epoch's first step also waits for the loader workers' first batch
            self._mark(trainer, "first")

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._mark(trainer, "val_start")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._mark(trainer, "val_end")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._mark(trainer, "end")

    def on_train_end(self, trainer, pl_module) -> None:
        if self.path is None or not trainer.is_global_zero:
            return
        from flare_lightning.atomic import atomic_write_text

        peak = peak_memory_bytes(pl_module.device) / 1e9 if torch.cuda.is_available() else None
        atomic_write_text(self.path, json.dumps({
            "marks": [[epoch, what, t, step] for (epoch, what), (t, step) in self.marks.items()],
            "batches_per_epoch": len(trainer.train_dataloader), "batch_size": trainer.datamodule.batch_size,
            "devices": trainer.world_size, "peak_gb": peak}))


def read_marks(path: Path) -> tuple[dict[tuple[int, str], tuple[float, int]], dict]:
    """An ``EpochTimer`` file: its marks, and the rest of what it holds."""
    saved = json.loads(Path(path).read_text())
    return {(epoch, what): (t, step) for epoch, what, t, step in saved.pop("marks")}, saved


class FastStepProfile(L.Callback):
    """Kernel table of a few replays of the captured step, at the end of training (the
    graphs are dropped when Lightning tears the run down); keeps what ``profile_fast_step`` found."""

    def __init__(self) -> None:
        self.found: tuple[dict, list[dict]] = ({}, [])
        self.since = time.time()  # Inductor code written from here on is this row's

    def on_train_end(self, trainer, pl_module) -> None:
        self.found = profile_fast_step(pl_module, next(iter(trainer.train_dataloader)), since=self.since)


def epoch_figures(marks: dict[tuple[int, str], tuple[float, int]], batches: int) -> dict[str, float]:
    """Epoch 1's figures from ``EpochTimer`` marks: the steady step (the steps after the first, which
    also waits for the loader workers' first batch: an epoch pays that once), the first step,
    validation, and the epoch of ``batches`` steps they add up to."""
    (s0, g0), (f0, gf), (v0, g1), (v1, _) = (marks[(1, k)] for k in ("start", "first", "val_start", "val_end"))
    step_ms = 1e3 * (v0 - f0) / (g1 - gf) if g1 > gf else 1e3 * (v0 - s0) / (g1 - g0)
    first_ms = 1e3 * (f0 - s0)
    epoch_s = (first_ms + (batches - 1) * step_ms) / 1e3 + (v1 - v0)
    return {"steps_timed": g1 - gf, "step_ms": step_ms, "first_step_ms": first_ms, "val_s": v1 - v0,
            "epoch_s": epoch_s, "batches_per_epoch": batches, "500_epochs_min": 500 * epoch_s / 60}


def run_row(dataset: str, precision: str, row: str, steps: int | None, root: Path,
            profile: bool = False) -> tuple[dict, list[dict]]:
    """One ``flare fit`` of two epochs; returns the timed second epoch's figures (with the
    profile's summary when asked) and the captured step's kernels (``--profile`` on a fast row)."""
    from flare_lightning.cli import make_cli

    # a captured row's loop is profiled on replays only: its first 3 steps warm up, the 4th captures
    timer, profiler, loop = EpochTimer(), FastStepProfile(), LoopProfile(first=5 if is_fast(row) else 3)
    args = fit_args(dataset, precision, row, steps, root)
    if torch.cuda.is_available():  # earlier rows' graph pools go back first: they would count in this row's peak
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cli = make_cli(args, run=False)
    cli.trainer.callbacks.append(timer)
    if profile:  # where the loop's time goes besides its kernels; a captured step's kernels too
        cli.trainer.callbacks.extend([loop, profiler] if is_fast(row) else [loop])
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(inductor_config.patch(INDUCTOR.get(row, {})))
        for target, value in PATCHES.get(row, {}).items():
            stack.enter_context(mock.patch(target, value))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    total = time.perf_counter() - t0
    figures = epoch_figures(timer.marks, len(cli.datamodule.train_dataloader()))
    summary, kernels = profiler.found
    names = {"dataset": dataset, "precision": precision, "row": row}
    return {
        **names, **figures, "fit_wall_s": total, **throughput(1, cli.datamodule.batch_size, figures["step_ms"]),
        # the last epoch's peak, graph pools included: the epoch summary line resets the counter at each epoch start
        "peak_gb": gpu_peak_gb(),
        "peak_counts_graph_pools": True,  # captured rows' peaks before f9824f5 left their graphs' pools out
        "epoch_measured": steps is None, **loop.found, **summary,  # a captured row: its replays' kernel figures
    }, [{**names, **kernel} for kernel in kernels]


def gpu_peak_gb() -> float | None:
    """Peak memory of the current CUDA device, graph pools included (None without CUDA). The device
    is named, not taken from the model: after a fit Lightning has moved the model back to the CPU."""
    if not torch.cuda.is_available():
        return None
    return peak_memory_bytes(torch.device("cuda", torch.cuda.current_device())) / 1e9


def throughput(devices: int, batch_size: int, step_ms: float) -> dict[str, float]:
    """Devices, and training samples per second over all of them (each trains its own batches)."""
    return {"devices": devices, "samples_per_s": devices * batch_size * 1e3 / step_ms}


def run_row_ddp(dataset: str, precision: str, row: str, steps: int | None, root: Path, devices: int) -> dict:
    """The row as a ``flare fit`` subprocess under DDP on ``devices`` GPUs (Lightning starts one process per
    GPU); epoch 1 timed on rank 0 as ``run_row`` times it, each rank training its share of the batches."""
    if row in INDUCTOR or row in PATCHES:
        raise ValueError(f"row {row!r} patches the process it runs in: it cannot run under DDP (--devices)")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # this process's cached blocks from earlier rows would crowd rank 0's GPU
    with tempfile.TemporaryDirectory() as tmp:
        marks_file = Path(tmp) / "marks.json"
        cmd = [sys.executable, "-m", "flare_lightning", "fit", *fit_args(dataset, precision, row, steps, root, devices),
               f"--trainer.devices={devices}", "--trainer.strategy=ddp",
               "--trainer.callbacks+=benchmarks.train_step_small.EpochTimer",
               f"--trainer.callbacks.init_args.path={marks_file}"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, env=env, check=True)
        total = time.perf_counter() - t0
        marks, saved = read_marks(marks_file)
    figures = epoch_figures(marks, saved["batches_per_epoch"])
    return {"dataset": dataset, "precision": precision, "row": row, **figures, "fit_wall_s": total,
            **throughput(saved["devices"], saved["batch_size"], figures["step_ms"]), "peak_gb": saved["peak_gb"],
            "peak_counts_graph_pools": True,
            "epoch_measured": steps is None}


def fit_args(dataset: str, precision: str, row: str, steps: int | None, root: Path, devices: int = 1) -> list[str]:
    """The ``flare fit`` options of a row: two epochs of its configs, quiet, in its own run folder."""
    name = f"{dataset}_{row}_{precision}" + (f"_{devices}gpus" if devices > 1 else "")
    args = [
        *(f"--config={path}" for path in row_configs(dataset, row)), *ROWS[row],
        *PRECISIONS.get(precision, [f"--trainer.precision={precision}"]), "--trainer.max_epochs=2", "--trainer.num_sanity_val_steps=0",
        f"--trainer.default_root_dir={root}", f"--trainer.logger.init_args.save_dir={root}",
        f"--trainer.logger.init_args.name={name}", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", "--test_after_fit=false",
    ]
    if dataset == "elasticity":
        args.append(f"--data.init_args.gen_workers={min(16, os.cpu_count() or 1)}")
    args += DATA_ARGS.get(dataset, [])
    validation = n_val(args)
    if devices > 1 and validation is not None and validation < devices:  # every rank validates a sample
        args.append(f"--data.init_args.n_val={devices}")  # (the 1M proxy validates one run on one GPU)
    if steps is not None:
        args.append(f"--trainer.limit_train_batches={steps}")
    return args


def n_val(args: list[str]) -> int | None:
    """The validation samples a row's options ask for (the last ``--data.init_args.n_val``, else the last
    config's), None where neither says."""
    given = [a.split("=", 1)[1] for a in args if a.startswith("--data.init_args.n_val=")]
    if given:
        return int(given[-1])
    for path in reversed([Path(a.split("=", 1)[1]) for a in args if a.startswith("--config=")]):
        value = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("init_args", {}).get("n_val")
        if value is not None:
            return int(value)
    return None


def profile_fast_step(module, batch: dict, steps: int = 5, top: int = 20,
                      since: float | None = None) -> tuple[dict, list[dict]]:
    """Kernel table of a few replays of the captured step (they update the weights): returns the
    summary (kernels and kernel ms per step, ms per step replayed back to back) and the ``top``
    kernels by time (calls per step, us per call, and for Inductor's kernels the model operations
    they fused, from its code written since ``since``)."""
    if module._fast is None or not module._fast._captured:
        print("profile: no captured step")
        return {}, []
    batch = module.transfer_batch_to_device(batch, module.device, 0)  # as Lightning moves it (flags stay)
    for _ in range(5):
        module._fast(batch)
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            module._fast(batch)
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_us = sum(e.device_time for e in events) / steps
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(50):  # back to back, no Lightning loop between: the graph's own time
        module._fast(batch)
    end.record()
    end.synchronize()
    summary = {"kernels_per_step": len(events) / steps, "kernel_ms_per_step": gpu_us / 1e3,
               "back_to_back_ms": start.elapsed_time(end) / 50}
    print(f"profile: {summary['kernels_per_step']:.0f} kernels per step, {summary['kernel_ms_per_step']:.2f} ms of "
          f"kernel time per step, {summary['back_to_back_ms']:.2f} ms per step replayed back to back")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=top))
    by_name: dict[str, list[float]] = defaultdict(list)
    for e in events:
        by_name[e.name].append(e.device_time)
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    fused = kernel_sources([name for name, _ in ranked], since) if since is not None else {}
    return summary, [{"kernel": name, "calls_per_step": len(us) / steps, "us_per_call": sum(us) / len(us),
                      **({"fused": fused[name]} if name in fused else {})} for name, us in ranked]


def reference_row(row: str) -> str:
    """The authors' formulation at a row's size: ``reference-m128-compiled`` for the M = 128 rows."""
    return "reference-m128-compiled" if "m128" in row else "reference-compiled"


def add_speedups(rows: list[dict]) -> list[dict]:
    """Each FLARE row's speed-up over the reference row of its size (``reference_row``), dataset,
    precision and GPUs."""
    for r in rows:
        ref = next((x for x in rows if x["row"] == reference_row(r["row"]) and x["dataset"] == r["dataset"]
                    and x["precision"] == r["precision"] and x.get("devices", 1) == r.get("devices", 1)), None)
        if ref is not None and r["row"] not in BASELINE_ROWS:
            r["speedup_vs_reference_compiled"] = ref["step_ms"] / r["step_ms"]
    return rows


def measured_paths(datasets: list[str], rows: list[str]) -> list[str]:
    """What a row's numbers depend on: the package, the data code and the configs it trains."""
    configs = {path.relative_to(REPO).as_posix() for d in datasets for r in rows for path in row_configs(d, r)}
    reference = ["benchmarks/reference_flare.py"] if any(r.startswith("reference") for r in rows) else []
    return [*FIT_PATHS, *sorted(configs), *reference]


def print_table(rows: list[dict]) -> None:
    def same(r: dict, row: str) -> dict | None:
        return next((x for x in rows if x["row"] == row and x["dataset"] == r["dataset"]
                     and x["precision"] == r["precision"]), None)

    print(f"\n{'dataset':<13}{'precision':<12}{'row':<25}{'GPUs':>5}{'ms/step':>9}{'samples/s':>10}{'val s':>8}"
          f"{'epoch s':>9}{'500 ep min':>11}{'peak GB':>9}{'vs ref':>8}")
    for r in rows:
        speed = f"{r['speedup_vs_reference_compiled']:.1f}x" if "speedup_vs_reference_compiled" in r else "-"
        mark = "" if r["epoch_measured"] else "*"
        peak = f"{r['peak_gb']:.2f}" if r["peak_gb"] is not None else "-"
        print(f"{r['dataset']:<13}{r['precision']:<12}{r['row']:<25}{r['devices']:>5}{r['step_ms']:>9.2f}"
              f"{r['samples_per_s']:>10.1f}{r['val_s']:>8.2f}{r['epoch_s']:>8.1f}{mark:1}{r['500_epochs_min']:>11.1f}"
              f"{peak:>9}{speed:>8}")
    for r in rows:  # DDP against one GPU, same row
        one = next((x for x in rows if x["devices"] == 1 and all(x[k] == r[k] for k in ("dataset", "precision", "row"))), None)
        if r["devices"] > 1 and one:
            print(f"{r['dataset']} {r['precision']} {r['row']}: {r['devices']} GPUs train "
                  f"{r['samples_per_s'] / one['samples_per_s']:.2f}x the samples per second of one")
    print("* epoch = batches x step + validation (the row trained fewer batches per epoch)")
    for r in rows:  # the network without the all-True mask against with it, same run
        masked = same(r, r["row"] + "-masked")
        if masked:
            print(f"{r['dataset']} {r['precision']} {r['row']}: {r['step_ms']:.2f} ms/step without the mask, "
                  f"{masked['step_ms']:.2f} with it ({masked['step_ms'] / r['step_ms']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["darcy", "elasticity"], choices=list(DATASETS))
    parser.add_argument("--precisions", nargs="+", default=["bf16-mixed", "32-true"])
    parser.add_argument("--rows", nargs="+", default=["reference-compiled", "ours-eager", "ours-fast"], choices=list(ROWS))
    parser.add_argument("--steps", type=int, default=100, help="training batches per epoch of the slow rows")
    parser.add_argument("--root", default="runs/bench_small", help="run folder of the fits")
    parser.add_argument("--profile", action="store_true",
                        help="kernel table of the captured step; for the other rows, the loop's GPU idle time and host waits")
    parser.add_argument("--devices", nargs="+", type=int, default=[1],
                        help="GPUs per fit: 1 in this process, more under DDP in a subprocess (e.g. 1 2: both)")
    add_out_argument(parser)
    args = parser.parse_args()
    rows, kernels = [], []
    for dataset, precision, row, devices in itertools.product(args.datasets, args.precisions, args.rows, args.devices):
        steps = None if is_fast(row) else args.steps
        try:
            if devices == 1:
                result, found = run_row(dataset, precision, row, steps, Path(args.root), args.profile)
            else:
                result, found = run_row_ddp(dataset, precision, row, steps, Path(args.root), devices), []
        except Exception as err:  # one failed row must not lose the others
            traceback.print_exc()
            print(json.dumps({"dataset": dataset, "precision": precision, "row": row, "devices": devices,
                              "error": repr(err)}))
            continue
        print(json.dumps(result), flush=True)
        rows.append(result)
        kernels += found
    print_table(add_speedups(rows))
    paths = measured_paths(args.datasets, args.rows)
    write_record("train_step_small", rows, paths=paths, out=args.out)
    if kernels:
        write_record("train_step_kernels", kernels, paths=paths, out=args.out)


if __name__ == "__main__":
    main()
