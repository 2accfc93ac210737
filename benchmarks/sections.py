"""What benchmarks/RESULTS.md shows of each benchmark's records: one ``Section`` per benchmark
(its title, what it measures, the row fields that name a figure, its table's columns, and
optionally a summary of its rows, such as means over seeds), in page order. A new benchmark adds
its ``Section`` here; interpretation goes in ``benchmarks/notes/<benchmark>.md``, which the
renderer puts under the section's tables."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Value = Callable[[dict[str, Any]], Any]


def field(row: dict[str, Any], name: str) -> Any:
    """``row[name]``, following dots into nested objects (``"step.ms"``); None when absent."""
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def size(n: int) -> str:
    """Point counts as the mixer tables write them: 16k, 1M (powers of two), else with commas."""
    for unit, name in ((2**20, "M"), (2**10, "k")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{name}"
    return f"{n:,}"


def duration(seconds: float) -> str:
    """``3m37`` under an hour, ``1.1 h`` above."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{int(seconds // 60)}m{int(round(seconds % 60)):02d}"


def tries(points: list) -> str:
    """A largest-N search's tries, ``N: peak GB`` in order (``OOM``: out of memory)."""
    return ", ".join(f"{size(n)}: {'OOM' if gb is None else f'{gb:.1f}'}" for n, gb in points)


@dataclass(frozen=True)
class Column:
    """A table column: the row field it shows (a dotted name, or a function of the row), its
    header, and how a value is written (a format spec, or a function; None is written ``-``)."""

    value: str | Value
    header: str
    fmt: str | Callable[[Any], str] = ""

    def cell(self, row: dict[str, Any]) -> str:
        value = self.value(row) if callable(self.value) else field(row, self.value)
        if value is None:
            return "-"
        text = self.fmt(value) if callable(self.fmt) else format(value, self.fmt)
        return text.replace("|", "\\|")


Summary = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Section:
    """A benchmark's part of RESULTS.md. ``key``: the fields that name one figure (row fields, or
    record fields such as ``card``): a row leaves the page when a newer record has a row with the
    same key. ``summary``: what a record's rows still on the page become in its table (e.g. one
    row of means per group of runs; the columns then read the summary's fields); None: the rows."""

    benchmark: str
    title: str
    what: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    summary: Summary | None = None

    def table_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.summary(rows) if self.summary is not None else rows


def _range(pair: tuple[float, float]) -> str:
    """``lo-hi`` with the precision the values need (1.2-3.1, 0.02-0.31)."""
    lo, hi = pair
    digits = 1 if min(abs(lo), abs(hi)) >= 1 else 2
    return f"{lo:.{digits}f}-{hi:.{digits}f}"


def _times(x: float) -> str:
    return f"{x:.2f}x"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _run(row: dict[str, Any]) -> str:
    return row["run"] + (f" ({row['note']})" if row.get("note") else "")


def peak_gb(row: dict[str, Any]) -> float | None:
    """A ``train_step_small`` row's peak GB; None for a captured (``-fast``) row measured before the
    peak counted the CUDA graphs' pools (f9824f5): those showed the inputs and weights alone."""
    if "-fast" in row.get("row", "") and not row.get("peak_counts_graph_pools"):
        return None
    return row.get("peak_gb")


def _epoch(row: dict[str, Any]) -> str:
    return f"{row['epoch_s']:.2f}" + ("" if row.get("epoch_measured", True) else "*")


def _spread(stats: tuple[float, float]) -> str:
    return f"{stats[0]:.4f} ± {stats[1]:.4f}"


def _mean_sd(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def recipe_summary(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-(recipe, variant, seed) runs -> per recipe, one row per variant and one over all its runs
    (``variant: all``, naming the ``variants`` and seeds it spans, and the whole ``ranking`` as
    (recipe, mean validation error) pairs): ``val`` and ``test``, (mean, sample standard deviation;
    0 for one run) of ``val_rel_l2`` and ``test_rel_l2``, mean ``wall_s``. Recipes come in the order
    of their mean validation error over all runs, which is what ranks them (``rank``, on the ``all``
    rows)."""
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        if row.get("val_rel_l2") is not None:
            groups.setdefault(row["recipe"], {}).setdefault(row["variant"], []).append(row)
    everything = {recipe: [r for runs in by_variant.values() for r in runs] for recipe, by_variant in groups.items()}
    means = {recipe: statistics.mean(r["val_rel_l2"] for r in runs) for recipe, runs in everything.items()}
    ranked = sorted(groups, key=means.__getitem__)
    out = []
    for rank, recipe in enumerate(ranked, 1):
        for variant, runs in [*groups[recipe].items(), ("all", everything[recipe])]:
            walls = [r["wall_s"] for r in runs if r.get("wall_s") is not None]
            seeds = sorted({r.get("seed") for r in runs if r.get("seed") is not None})
            spans = f"{' / '.join(groups[recipe])}; seeds {', '.join(map(str, seeds))}" if variant == "all" else None
            out.append({"recipe": recipe, "variant": variant, "runs": len(runs), "variants": spans,
                        "ranking": [(name, means[name]) for name in ranked] if variant == "all" else None,
                        "val": _mean_sd([r["val_rel_l2"] for r in runs]),
                        "test": _mean_sd([r["test_rel_l2"] for r in runs if r.get("test_rel_l2") is not None]),
                        "wall_s": statistics.mean(walls) if walls else None,
                        "rank": rank if variant == "all" else None})
    return out


SHAPE = (Column("H", "H"), Column("D", "D"), Column("M", "M"))
SHAPE_N = (*SHAPE, Column("n", "N", size))  # a shape at one N
TIMES = (Column("fwd", "fwd ms", ".3f"), Column("fwd_bwd", "fwd+bwd ms", ".3f"), Column("peak_mib", "peak MiB", ".0f"))
SECTIONS = (
    Section(
        "mixer", "The mixer alone",
        "forward and forward+backward time (median of CUDA events, L2 flushed) and peak memory of one mixer call "
        "per (H, D, M) and N, bf16, B = 1; `x`: speed-up over `sdpa` (the paper's two-SDPA formulation) in the "
        "same run; `rel. diff`: largest relative L2 difference of y, dq, dk, dv from `sdpa`'s",
        ("card", "H", "D", "M", "N", "method"),
        (*SHAPE, Column("N", "N", size), Column("method", "method"), *TIMES, Column("x_fwd", "x fwd", ".1f"),
         Column("x_fwd_bwd", "x fwd+bwd", ".1f"), Column("err", "rel. diff", ".1e")),
    ),
    Section(
        "exp2_floor", "The exp2 floor of the mixer",
        "the card's exp2 rate (a Triton kernel doing little else) and, per (H, D, M) at N = 2^20, the time two "
        "exp2 per logit take forward and four forward+backward, against the times a 5x forward and a 10x "
        "forward+backward over the two-SDPA reference (timed in the same run) would need",
        ("card", "H", "D", "M", "n"),
        (*SHAPE_N, Column("grid", "N·M·H", ".2e"), Column("sdpa_fwd_ms", "sdpa fwd ms", ".2f"),
         Column("sdpa_fwd_bwd_ms", "sdpa fwd+bwd ms", ".2f"), Column("fwd_5x_needs_ms", "5x fwd needs ms", ".2f"),
         Column("floor_fwd_ms", "exp2 floor fwd ms", ".2f"), Column("fwd_bwd_10x_needs_ms", "10x fwd+bwd needs ms", ".2f"),
         Column("floor_fwd_bwd_ms", "exp2 floor fwd+bwd ms", ".2f"), Column("exp2_per_s", "card exp2/s", ".2e")),
    ),
    Section(
        "mixer_in_model", "The Triton mixer with the model's inputs",
        "the Triton mixer's forward and forward+backward at one N with its inputs laid out and typed as the model "
        "passes them, one difference at a time, and a whole FlareAttention layer under bf16 autocast",
        ("card", "H", "D", "M", "n", "case"),
        (*SHAPE_N, Column("case", "case"), Column("fwd_ms", "fwd ms", ".2f"), Column("fwd_bwd_ms", "fwd+bwd ms", ".2f")),
    ),
    Section(
        "mixer_tune", "Mixer tile sweep",
        "per (H, D, M) at N = 2^20, the two-SDPA reference, the default tiles and the sweep's best tiles, each "
        "timed end to end (fwd and fwd+bwd, median of CUDA events, L2 flushed)",
        ("card", "H", "D", "M", "n", "dtype", "config"),
        (*SHAPE_N, Column(lambda r: r.get("dtype", "bf16"), "operands"), Column("config", "tiles"), *TIMES,
         Column("err", "rel. diff", ".1e"), Column("tiles", "tile configs")),
    ),
    Section(
        "quickstart_backends", "Training the quickstart with each mixer backend",
        "test relative L2 of `configs/quickstart.yaml` fitted with each mixer backend and precision (the best "
        "checkpoint, tested after the fit)",
        ("card", "backend", "precision", "seed"),
        (Column("backend", "backend"), Column("precision", "precision"), Column("seed", "seed"),
         Column("rel_l2", "test rel. L2", ".4f")),
    ),
    Section(
        "train_step_small", "Paper-size training steps through `flare fit`",
        "a real `flare fit` of the shipped config per row (CLI, datamodule, Lightning loop, checkpoints): epoch 0 "
        "warms up, epoch 1 is timed after a device sync at its ends; `ms / step`: its steps after the first (records "
        "before 2026-12-07T08: all its steps), `first step`: the first, which also waits for the loader workers' "
        "first batch; rows marked * trained fewer batches and their epoch is first step + the other batches x step + "
        "validation; `back to back`: the captured step replayed with nothing between; `kernel ms`, `GPU idle ms` and "
        "`host waits` of a row that does not capture its step: a few warm-up steps under torch.profiler (the GPU's busy "
        "time, the rest of the step, and the host calls per step that wait for the GPU; `benchmarks/loop_profile.py`); "
        "`GPUs` > 1: DDP, each GPU its "
        "own batches (`samples / s` over all of them; its epoch is each GPU's share of the batches); `vs reference-compiled`: "
        "speed-up over the authors' compiled formulation at the row's M in the same run (`reference-m128-compiled` for "
        "the M = 128 rows); `peak GB`: the timed epoch's, CUDA graph pools included (`-` for captured rows measured "
        "before f9824f5, whose peak left the graph's pool out)",
        ("card", "dataset", "precision", "row", "devices"),
        (Column("dataset", "dataset"), Column("precision", "precision"), Column("row", "row"),
         Column("devices", "GPUs"), Column("step_ms", "ms / step", ".2f"), Column("samples_per_s", "samples / s", ".1f"),
         Column("first_step_ms", "first step ms", ".0f"),
         Column("back_to_back_ms", "back to back ms", ".2f"),
         Column("kernels_per_step", "kernels / step", ",.0f"), Column("kernel_ms_per_step", "kernel ms / step", ".2f"),
         Column("gpu_idle_ms_per_step", "GPU idle ms / step (profiled)", ".1f"),
         Column("host_waits_per_step", "host waits / step", ".1f"),
         Column("val_s", "validation s", ".2f"), Column(_epoch, "epoch s"), Column("batches_per_epoch", "batches"),
         Column("500_epochs_min", "500 epochs, min", ".1f"), Column(peak_gb, "peak GB", ".2f"),
         Column("speedup_vs_reference_compiled", "vs reference-compiled", _times)),
    ),
    Section(
        "train_step_kernels", "Where a captured step's kernel time goes",
        "CUDA kernels of a few replays of the captured training step (torch.profiler): calls per step and time per "
        "call; for Inductor's kernels, the model operations they fused (source nodes <- ATen ops, from the code it wrote)",
        ("card", "dataset", "precision", "row", "kernel"),
        (Column("dataset", "dataset"), Column("row", "row"), Column("kernel", "kernel"),
         Column("calls_per_step", "calls / step", ",.0f"), Column("us_per_call", "us / call", ".1f"),
         Column("fused", "fused from")),
    ),
    Section(
        "step", "Training step at N = 2^20",
        "one `SurrogateModule` training step as `flare fit` runs it (normalisation, masked relative-L2 loss, bf16 "
        "autocast, grad-clip 1.0, AdamW), 8 blocks C = 64 H = 8, M latents (64 where the record does not say), "
        "batch 1: median of CUDA-event timings after warm-up, peak `max_memory_allocated` of one step; "
        "`reference` is the paper's formulation (benchmarks/reference_flare.py)",
        ("card", "config", "n", "latents"),
        (Column("config", "config"), Column("options", "options"), Column("n", "N", size),
         Column(lambda r: r.get("latents", 64), "M"), Column("ms", "step ms", ".1f"),
         Column("speedup_vs_reference", "vs reference", _times),
         Column("speedup_vs_reference_compiled", "vs reference-compiled", _times), Column("peak_gb", "peak GB", ".2f"),
         Column("memory_vs_reference", "memory / reference", ".3f"),
         Column("memory_vs_reference_compiled", "memory / reference-compiled", ".3f"),
         Column("rel_diff_vs_reference", "output rel. diff", ".1e")),
    ),
    Section(
        "step_grid", "The paper's Figure 4: blocks and latents at 2^20 points",
        "the step benchmark's training step per (blocks, latents) at 2^20 points, each config rebuilt per cell "
        "from the same seed; `epoch s`: 400 steps (one DrivAerML training run each), data and validation not included; "
        "the same records drawn as [docs/figures/figure4_grid.png](../docs/figures/figure4_grid.png) by `benchmarks/figure4.py`",
        ("card", "config", "n", "blocks", "latents"),
        (Column("config", "config"), Column("blocks", "blocks"), Column("latents", "M"),
         Column("ms", "step ms", ".1f"), Column("epoch_s", "epoch s", ".0f"), Column("peak_gb", "peak GB", ".1f"),
         Column("error", "error")),
    ),
    Section(
        "step_kernels", "Where the 2^20-point step's GPU time goes",
        "the step benchmark's training step, CUDA kernels of 3 steps after warm-up (torch.profiler), grouped by kind "
        "(`benchmarks/step_kernels.py`'s GROUPS): per config the groups' ms per step and share of kernel time, largest "
        "first, then the largest kernels by name",
        ("card", "config", "n", "latents", "group", "kernel"),
        (Column("config", "config"), Column("latents", "M"), Column("group", "group"), Column("kernel", "kernel"),
         Column("ms_per_step", "ms / step", ".2f"), Column("share", "share", ".1%"),
         Column("calls_per_step", "calls / step", ".0f")),
    ),
    Section(
        "step_eval", "Full-resolution evaluation of one surface",
        "one sample of N points through the model without autograd, in chunks of `chunk` points (the exact chunked "
        "evaluation of validation, test and predict), bf16 autocast, 8 blocks C = 64 H = 8: median seconds of 3 and "
        "the peak memory above the model and the input (the model only: no data loading, no metrics)",
        ("card", "config", "n", "latents"),
        (Column("config", "config"), Column("n", "N", ",d"), Column("latents", "M"), Column("chunk", "chunk", ",d"),
         Column("seconds", "seconds", ".2f"), Column("peak_gb", "peak GB", ".2f"), Column("error", "error")),
    ),
    Section(
        "eval_surface", "`flare test` on full-resolution surfaces",
        "`flare test --config configs/drivaerml_1m.yaml` on synthetic surfaces of N points in the presampled layout "
        "with normals and areas (benchmarks/eval_surface.py): each run read from disk, every point evaluated in chunks "
        "of `chunk` by the shipped model (compiled, fused kernels), field errors and Cd/Cl computed; `s / run`: the "
        "median over the runs after the first (which also compiles), from the batch's start to its end after a "
        "device sync; peak memory of the test",
        ("card", "points"),
        (Column("points", "N", ",d"), Column("runs", "runs"), Column("chunk", "chunk", ",d"),
         Column("s_per_run", "s / run", ".2f"), Column("first_run_s", "first run s", ".1f"),
         Column("peak_gb", "peak GB", ".2f"), Column("cd_cl_runs", "runs with Cd/Cl")),
    ),
    Section(
        "mlp", "The fused residual MLP",
        "one `x + mlp(layer_norm(x))` (C = 64, 3 hidden layers, GELU-tanh) at 2^20 points, bf16 autocast, fp32 "
        "residual stream: forward and forward+backward (median of CUDA events), peak memory of one forward+backward "
        "above its inputs; the plain layers eager and compiled, and the fused Triton kernels per launch "
        "configuration (`triton_mlp.MLPConfig`); `diff`: relative L2 difference from the eager row's output and dx",
        ("card", "row"),
        (Column("row", "row"), Column("fwd_ms", "fwd ms", ".3f"), Column("fwd_bwd_ms", "fwd+bwd ms", ".3f"),
         Column("peak_gb", "peak GB", ".2f"), Column("diff_out", "diff out", ".1e"), Column("diff_dx", "diff dx", ".1e")),
    ),
    Section(
        "drivaerml_memory", "Host memory of DrivAerML training at scale",
        "peak resident memory of the main process and its loader workers, summed (PSS: a page shared by several "
        "processes divided among them; RSS counts it in each), per phase of a DrivAerML fit on a synthetic set in "
        "the presampled layout (the data and options are in the record's environment)",
        ("card", "commit", "command", "source", "phase"),
        (Column("phase", "phase"), Column("source", "data"), Column("pss_gb", "PSS GB", ".2f"), Column("pss_anon_gb", "of it private GB", ".2f"),
         Column("pss_file_gb", "of it mapped files GB", ".2f"), Column("rss_gb", "RSS GB", ".2f"),
         Column("processes", "processes"), Column("seconds", "seconds", ".1f")),
    ),
    Section(
        "max_points", "Largest N per sample that trains",
        "for each config of the step benchmark, a full training step tried at doubling N until out of memory, "
        "then bisected while the time budget lasts",
        ("card", "config", "latents"),
        (Column("config", "config"), Column(lambda r: r.get("latents", 64), "M"),
         Column("max_n", "largest N that trained", ",d"),
         Column("peak_gb_at_max", "peak GB there", ".1f"), Column("first_failure", "first N out of memory", ",d"),
         Column("resolved", "bisection closed", _yes_no), Column("tries", "peak GB by N", tries)),
    ),
    Section(
        "context_parallel", "One sample across GPUs: context parallelism",
        "8 blocks C = 64 H = 8 M = 64, batch 1, bf16, Triton mixer, each rank holding its share of one sample's "
        "points: the step at N = 2^22 with `checkpoint_blocks`, the largest N with `checkpoint_blocks` and "
        "`mlp_chunk_size` 2^18 (predicted from two peaks, then proved by a step), and an fp32 check against one GPU",
        ("card", "gpus", "backend"),
        (Column("gpus", "GPUs"), Column("backend", "backend"), Column("transport", "collectives"),
         Column("step.ms", "step ms (median)", ".1f"), Column("step.ms_min", "min", ".1f"),
         Column("speedup", "speed-up", _times), Column("largest.max_n", "largest N that trained", ",d"),
         Column("points_vs_one_gpu", "x one GPU", ".3f"), Column("largest.peak_gb", "peak GB there", ".1f"),
         Column("check.output_rel_diff", "fp32 check: output", ".1e"),
         Column("check.max_grad_rel_diff", "worst gradient", ".1e")),
    ),
    Section(
        "nccl_memory", "Device memory of an NCCL communicator",
        "free-memory drop per GPU once a two-rank NCCL communicator has run a context-parallel step's collectives, "
        "per NCCL setting (the worse rank)",
        ("card", "setting"),
        (Column("setting", "setting"), Column("drop_gb", "GB per GPU", ".3f")),
    ),
    Section(
        "step_ddp", "DDP throughput",
        "`ours-fast` (no memory options) under `DistributedDataParallel` over NCCL as Lightning uses it, 2^20 points "
        "per GPU and step, 3 warm-up and 15 timed steps",
        ("card", "world_size", "n_per_gpu"),
        (Column("world_size", "GPUs"), Column("step_ms", "step ms", ".1f"), Column("samples_per_s", "samples / s", ".2f"),
         Column("points_per_s", "points / s", ".3g")),
    ),
    Section(
        "accuracy_pace", "The pace of the accuracy runs",
        "per-epoch wall time of the paper-protocol runs of benchmarks/ACCURACY.md (validation, checkpoints and "
        "logging included), from each run's `EpochSummary` lines, and the full epoch budget at that pace",
        ("card", "model", "dataset", "precision", "run"),
        (Column("model", "model"), Column("dataset", "dataset"), Column(_run, "run"), Column("precision", "precision"),
         Column("epochs_timed", "epochs timed"), Column("first_epoch_s", "first epoch s", ".1f"),
         Column("median_epoch_s", "median epoch s", ".1f"), Column("epoch_range_s", "range s"),
         Column("budget_min", "full budget at this pace, min", ".1f")),
    ),
    Section(
        "quickstart", "The quickstart on 2 CPU cores",
        "`flare fit` of quickstart recipes end to end (data generated on first use, the best checkpoint tested), "
        "one run each",
        ("card", "recipe"),
        (Column("recipe", "recipe"), Column("steps", "training steps", ",d"), Column("wall_s", "wall", duration),
         Column("rel_l2", "test rel. L2", ".4g")),
    ),
    Section(
        "quickstart_recipes", "Choosing the quickstart recipe on data it was not tuned on",
        "`flare fit` of `configs/quickstart.yaml` with each candidate recipe's training samples, epochs, peak lr "
        "and weight decay, on generated Darcy variants no recipe was chosen on (grids, permeability contrast, "
        "seeds: `benchmarks/quickstart_recipes.py`); per recipe and variant the mean ± sample standard deviation "
        "over seeds of the best checkpoint's validation rel. L2 (what chooses: `rank`, by the mean over all of a "
        "recipe's runs, the `all` rows, whose spread is mostly the variants' differences) and its test rel. L2 "
        "(reported, never used to choose), and the mean wall time of a run",
        ("card", "recipe", "variant", "seed"),
        (Column("recipe", "recipe"), Column("variant", "variant"), Column("runs", "runs"),
         Column("val", "val rel. L2", _spread), Column("test", "test rel. L2", _spread),
         Column("wall_s", "wall per run", duration), Column("rank", "rank by val")),
        summary=recipe_summary,
    ),
    Section(
        "quickstart_cpu_costs", "What the quickstart's time goes to on 2 CPU cores",
        "single costs of the quickstart's parts on the 2-core CPU machine (torch.profiler and wall clock)",
        ("card", "item"),
        (Column("item", "what"), Column("value", "cost")),
    ),
    Section(
        "gpu_tests", "GPU test runs",
        "`scripts/gpu_tests.sh` on a lent GPU (CI has none): every test marked `gpu` or `kernels` (the fast step's CUDA "
        "graphs against eager steps, mixed precision on the GPU, the Triton kernels compiled instead of interpreted), "
        "per test file: passed, failed, skipped, seconds, and the failing tests; `not run` (the all row): tests "
        "selected but never reported, where pytest aborted the session; `wall s` (the all row): the session's wall "
        "time with `workers` pytest-xdist processes sharing the GPU (records before 2026-12-07T10: one process)",
        ("card", "file"),
        (Column("file", "test file"), Column("passed", "passed"), Column("failed", "failed"), Column("skipped", "skipped"),
         Column("not_run", "not run"), Column("seconds", "s", ".0f"), Column("wall_s", "wall s", ".0f"),
         Column("workers", "workers"),
         Column("failures", "failing", lambda v: ", ".join(v) if v else "-")),
    ),
    Section(
        "spectra", "Spectra of the quickstart model's token mixing",
        "the shipped quickstart fit's test-time `SpectralAnalysis` (best checkpoint, 4 test samples, float64; "
        "docs/spectral.md): per block the effective rank and |λ₂| of `W_dec W_enc`, lowest and highest over heads "
        "(each a mean over samples: |λ₂| near 0 is plain averaging, near 1 a slowly mixing head), and how much the "
        "heads' spectra and mixing differ (diversity, mean over samples)",
        ("block",),
        (Column("block", "block"), Column(lambda r: (r["eff_rank_min"], r["eff_rank_max"]), "effective rank", _range),
         Column(lambda r: (r["lambda2_min"], r["lambda2_max"]), "\\|λ₂\\|", _range),
         Column("diversity_spectra", "spectra diversity", ".2f"), Column("diversity_mixing", "mixing diversity", ".2f")),
    ),
)
BY_BENCHMARK = {s.benchmark: s for s in SECTIONS}
