"""Starting the accuracy runs: the data made once, then one background worker per ``--devices`` entry
running its queue of ``flare fit`` runs one after another, each attempt recorded in the run's
``launch.json`` (start, heartbeat, end, card, commit) so that a run outlives its machine."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.accuracy_runs import (
    DATASETS, ROOT, Run, assign, check_batch_split, config_paths, estimated_steps, finished, gpus_per_run, plan,
    settings_conflicts,
)

CLI = ROOT / "benchmarks" / "accuracy.py"  # the workers run its `worker` command


def git_commit() -> str:
    """The code's commit as runs record it (``flare_lightning.runs.provenance.commit``: ``$FLARE_COMMIT``
    where set, ``-dirty`` with uncommitted changes), the hash shortened to 7 characters."""
    from flare_lightning.runs.provenance import commit

    head, dash, dirty = commit().partition("-")
    return (head[:7] if len(head) == 40 else head) + dash + dirty


def card_name(env: dict[str, str]) -> str:
    """``torch.cuda.get_device_name`` of the GPU a worker's runs see (in a child, so no CUDA context stays)."""
    code = "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
    try:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def write_json(path: Path, obj: object) -> None:
    """``obj`` as indented JSON, written to a temporary file and renamed into place."""
    from flare_lightning.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def python_path() -> str:
    """The repo first, then whatever PYTHONPATH already holds (e.g. wheels a GPU machine adds)."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def prepare_data(datasets: list[str], extra: tuple[str, ...]) -> None:
    """Make and cache every dataset once, before workers start side by side on it."""
    from unittest import mock

    from flare_lightning.cli import make_cli

    for dataset in datasets:
        print(f"preparing {dataset} ...", flush=True)
        with mock.patch("sys.argv", ["flare"]):
            cli = make_cli([f"--config={config_paths('flare', dataset)[0]}", *DATASETS[dataset].overrides, *extra], run=False)
        dm = cli.datamodule
        dm.prepare_data()
        dm.setup("fit")
        dm.setup("test")


def worker(queue_file: Path) -> None:
    """Run a queue of runs one after another (skipping finished ones), recording each attempt."""
    queue = json.loads(queue_file.read_text())
    gpus = queue.get("gpus", 1)
    card = card_name(dict(os.environ))
    card = f"{gpus} x {card}" if gpus > 1 else card
    for item in queue["runs"]:
        run = Run(item["model"], item["dataset"], item["seed"], item["epochs"], Path(item["out"]), tuple(item.get("extra", ())))
        if finished(run.folder):
            print(f"{run.name}/{run.tag}: finished before, skipped", flush=True)
            continue
        cmd = run.command(queue["fast_step"], tuple(queue["extra"]), gpus)
        record_path = run.folder / "launch.json"
        record = json.loads(record_path.read_text()) if record_path.is_file() else {"attempts": []}
        for earlier in record["attempts"]:  # records from before attempts kept their own commit and card
            earlier.setdefault("commit", record.get("commit"))
            earlier.setdefault("card", record.get("card"))
        record.update(model=run.model, dataset=run.dataset, seed=run.seed, epochs=run.epochs, card=card,
                      commit=queue["commit"], cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
        log = Path(item.get("log_dir", queue["log_dir"])) / f"{run.name}_{run.tag}.log"  # an arm's runs log in its folder
        print(f"{run.name}/{run.tag}: {' '.join(cmd)}\n  log: {log}", flush=True)
        start = time.time()
        # Recorded before the run starts, so an attempt whose machine went away still counts
        # (its end and wall time stay None: the table then marks the run's time as a lower bound).
        record["attempts"].append({"start": start, "end": None, "wall_s": None, "rc": None, "command": cmd,
                                   "commit": queue["commit"], "card": card})
        write_json(record_path, record)
        rc = run_attempt(cmd, log, len(record["attempts"]), record, record_path)
        end = time.time()
        record["attempts"][-1].update(end=end, wall_s=end - start, rc=rc)
        write_json(record_path, record)
        print(f"{run.name}/{run.tag}: exit {rc} after {end - start:.0f} s", flush=True)


HEARTBEAT_S = 60.0  # how often a running attempt records ``last_seen`` in launch.json

ATTEMPT_MARK = "==> accuracy.py attempt "  # the line that opens each attempt in a run's log


def run_attempt(cmd: list[str], log: Path, number: int, record: dict, record_path: Path) -> int:
    """Run one attempt, appending to the run's log after a marker line; every ``HEARTBEAT_S``
    store the time in the attempt's ``last_seen``, so an attempt whose machine goes away
    (and never records its end) still shows how long it at least ran."""
    with open(log, "a") as fh:
        fh.write(f"{ATTEMPT_MARK}{number} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        while True:
            try:
                return proc.wait(timeout=HEARTBEAT_S)
            except subprocess.TimeoutExpired:
                record["attempts"][-1]["last_seen"] = time.time()
                write_json(record_path, record)


def worker_env(devices: list[str], slot: int, cpus: int | None = None) -> dict[str, str]:
    """Environment of worker ``slot``: its GPUs, the repo on PYTHONPATH, and each process's share of
    the CPU cores as OpenMP threads (unless set; a DDP worker runs one process per GPU): side by
    side with a full thread pool each, the runs' spinning threads starved each other's host loop
    (40-180 ms steps instead of 3-7 ms)."""
    processes = sum(len(entry.split(",")) for entry in devices)
    threads = max(1, (cpus or os.cpu_count() or 1) // max(1, processes))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": devices[slot], "PYTHONPATH": python_path()}
    env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def launch(args: argparse.Namespace) -> list[subprocess.Popen]:
    """Print the plan; unless ``--dry-run``, make the data and start the background workers."""
    try:
        runs = plan(args.models, args.datasets, args.seeds, args.epochs, args.out.resolve(), args.arms)
    except ValueError as err:
        raise SystemExit(f"accuracy.py launch: {err}") from None
    gpus = gpus_per_run(args.devices)
    check_batch_split(runs, gpus)
    slots = assign(runs, args.devices)
    extra = tuple(args.extra)
    conflicts = settings_conflicts(runs, args.fast_step, extra, gpus)
    if conflicts:
        raise SystemExit("accuracy.py launch: runs already made with other settings (launch them with the "
                         "same options, or give --out a new folder):\n  " + "\n  ".join(conflicts))
    for slot, queue in slots.items():
        steps = sum(estimated_steps(r) for r in queue)
        print(f"# worker {slot}: CUDA_VISIBLE_DEVICES={args.devices[slot]}, {steps} optimizer steps in all")
        for run in queue:
            state = "done, skipped" if finished(run.folder) else "resume" if (run.folder / "checkpoints/last.ckpt").is_file() else "new"
            print(f"#   {run.folder.relative_to(args.out.resolve())} [{state}], {estimated_steps(run)} steps")
            print(" ".join(run.command(args.fast_step, extra, gpus)))
    if args.dry_run:
        return []
    prepare_data(sorted({r.dataset for r in runs}), extra)
    log_dir = args.out.resolve() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    commit, procs = git_commit(), []
    for slot, queue in slots.items():
        if not queue:
            continue
        queue_file = log_dir / f"queue_{slot}.json"
        for run in queue:
            (run.out / "logs").mkdir(parents=True, exist_ok=True)
        write_json(queue_file, {
            "runs": [{**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(r).items()},
                      "log_dir": str(r.out / "logs")} for r in queue],
            "fast_step": args.fast_step, "extra": list(extra), "gpus": gpus, "commit": commit, "log_dir": str(log_dir),
        })
        env = worker_env(args.devices, slot)
        with open(log_dir / f"worker_{slot}.log", "a") as fh:
            procs.append(subprocess.Popen([sys.executable, str(CLI), "worker", str(queue_file)], cwd=ROOT, env=env,
                                          stdout=fh, stderr=subprocess.STDOUT, start_new_session=True))
        print(f"worker {slot} (pid {procs[-1].pid}, CUDA_VISIBLE_DEVICES={args.devices[slot]}): log {log_dir}/worker_{slot}.log")
    return procs
