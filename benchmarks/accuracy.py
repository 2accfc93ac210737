"""Accuracy runs (issue 11): train FLARE and the baselines on the same data, and record the test
relative L2 of every run (benchmarks/records/accuracy/), from which benchmarks/ACCURACY.md is rendered.

Each run is ``flare fit --config <configs>`` (FLARE: configs/<dataset>.yaml; baselines: that,
then configs/baselines/<model>_<dataset>.yaml) with a seed and optionally a reduced epoch budget,
in its own folder ``<out>/<model>_<dataset>/seed<S>_<full|epN>/``. ``launch`` makes the data
once (in the foreground), then starts one background worker per entry of ``--devices``
(``CUDA_VISIBLE_DEVICES`` set; repeat an id to run several models side by side on one GPU);
each worker runs its queue one run after another, logs to ``<out>/logs/``, and records
start, end, card and commit in ``launch.json`` beside the run. Launching again skips runs
with a finished ``test_metrics.json`` and resumes interrupted ones from ``last.ckpt``, with the
same options only: a run folder made with others (another precision, say) stops the launch
before it starts, naming the folder (use another ``--out`` for the new settings).

    python benchmarks/accuracy.py launch --devices 0 1 --epochs 50 --dry-run   # print the plan
    python benchmarks/accuracy.py launch --devices 0 0 1 1 --epochs 50 [--fast-step] [-- --trainer.precision bf16-mixed]
    python benchmarks/accuracy.py launch --devices 0 1 --fast-step -- --trainer.precision bf16-mixed   # full protocol
    python benchmarks/accuracy.py launch --devices 0,1 --models transformer --datasets darcy --fast-step   # DDP on 2 GPUs

A DDP run (``--devices 0,1``) splits the config's batch over its GPUs: the same global batch,
steps per epoch and schedule as one GPU, only the order of the samples differs.
Launch every run of a machine from one ``launch`` (workers get their share of the CPU cores as
OpenMP threads; separate launches each assume the whole machine). In float32 the fast step is
4x slower on Darcy (the fp32 mixer): full-protocol runs use bf16-mixed, as the step benchmarks do.
    python benchmarks/accuracy.py collect       # a record per finished run -> benchmarks/records/accuracy/, pages re-rendered

A precision ablation runs each arm in its own folder (a run folder keeps its settings): ``--arms`` names
them (``ARMS``: 32-true, 32-tf32, bf16, bf16-fp32<part>, ...), one launch runs them all, side by side on
the workers of ``--devices``, and ``collect`` finds each arm's folder; records are keyed by precision too,
so the arms sit side by side in ACCURACY.md:
    python benchmarks/accuracy.py launch --models flare --datasets elasticity --seeds 0 --fast-step \
        --devices 0 0 0 --arms bf16 bf16-fp32mixer bf16-fp32kv --out runs/acc_ablation
    python benchmarks/accuracy.py collect --out runs/acc_ablation

``collect`` writes one record (``benchmarks/records.py``) per finished run, replacing an earlier
record of the same run and precision, prints the failed and unfinished runs, and re-renders the pages
(``benchmarks/render.py``: ACCURACY.md with the notes in ``benchmarks/notes/accuracy.md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: `benchmarks.` imports resolve

from benchmarks.accuracy_collect import collect, failures, in_progress, run_roots, status, write_run_records  # noqa: E402
from benchmarks.accuracy_launch import launch, worker  # noqa: E402
from benchmarks.accuracy_runs import ARMS, DATASETS, MODELS  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    lp = sub.add_parser("launch", help="start the runs in the background (or print them with --dry-run)")
    lp.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    lp.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    lp.add_argument("--seeds", nargs="+", type=int, default=[0])
    lp.add_argument("--epochs", type=int, default=None, help="reduced epoch budget for every run (default: the configs')")
    lp.add_argument("--devices", nargs="+", default=["0"],
                    help="GPU id per worker; repeat an id for several workers on it; ids joined by commas (0,1) "
                         "make each run a DDP run on those GPUs at the protocol's global batch")
    lp.add_argument("--fast-step", action="store_true", help="pass --model.fast_step=true (issue 15)")
    lp.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                    help=f"precision arms, each run once per arm in <out>/<arm>/ (choices: {', '.join(ARMS)})")
    lp.add_argument("--dry-run", action="store_true", help="print the plan and the commands, start nothing")
    lp.add_argument("--wait", action="store_true", help="wait for the workers to finish, then collect")
    lp.add_argument("extra", nargs="*", help="more `flare fit` overrides for every run, after --")
    cp = sub.add_parser("collect", help="record the finished runs and re-render the pages")
    for sp in (lp, cp):  # where the runs are, where their records go, and the pages rendered from them
        sp.add_argument("--out", type=Path, default=ROOT / "runs" / "accuracy", help="folder of the runs")
        sp.add_argument("--records", type=Path, default=ROOT / "benchmarks" / "records",
                        help="records folder (the runs' go to its accuracy/)")
        sp.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "ACCURACY.md", help="the accuracy page")
        sp.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md", help="the results page")
        sp.add_argument("--readme", type=lambda v: Path(v) if v else None, default=ROOT / "README.md",
                        help="the README whose headline table is re-rendered ('' for none)")
        sp.add_argument("--docs", type=lambda v: Path(v) if v else None, default=ROOT / "docs",
                        help="the folder of the docs pages whose tables are re-rendered ('' for none)")
    wp = sub.add_parser("worker", help=argparse.SUPPRESS)
    wp.add_argument("queue", type=Path)
    args = p.parse_args(argv)
    if args.command == "worker":
        worker(args.queue)
        return
    if args.command == "launch":
        procs = launch(args)
        if not (args.wait and procs):
            return
        for proc in procs:
            proc.wait()
    from benchmarks.render import Pages, render_pages, write_pages

    results, failed, running = [], [], []
    for out in run_roots(args.out.resolve()):
        found, lost, going = collect(out), failures(out), in_progress(out)
        for path in write_run_records(found, out, args.records):
            print(f"record: {path}")
        if lost or going:
            print(status(out, lost, going))
        results, failed, running = results + found, failed + lost, running + going
    pages = Pages(results=args.results, accuracy=args.output, readme=args.readme, docs=args.docs)
    for path in write_pages(render_pages(pages, records=args.records)):
        print(f"wrote {path}")
    print(f"{len(results)} finished runs, {len(failed)} failed, {len(running)} in progress")


if __name__ == "__main__":
    main()
