"""Reading the accuracy runs back: each finished run's result and record
(``benchmarks/records/accuracy/``), and the failed and unfinished runs with why and how far."""

from __future__ import annotations

import csv
import datetime
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.accuracy_launch import ATTEMPT_MARK
from benchmarks.accuracy_runs import (
    ARMS, DATASETS, FIT_PATHS, MODELS, ROOT, Run, config_paths, estimated_steps, finished, read_config, rel_l2_of,
)

EPOCH_LINE = re.compile(r"^epoch \d+/\d+ .*\((\d+(?:\.\d+)?) s[,)]")  # EpochSummary's line


def epoch_seconds_per_attempt(log_text: str, attempts: int) -> list[float] | None:
    """The summed epoch times (EpochSummary's ``(t s`` lines) of each attempt in a run's log, or
    None when the log's attempts cannot be told apart. Attempts are separated by the worker's
    marker lines; a log whose first attempt predates the markers has its text before the first
    marker as that attempt."""
    segments = re.split(rf"^{re.escape(ATTEMPT_MARK)}.*$", log_text, flags=re.M)
    if not segments[0].strip():
        segments = segments[1:]
    if len(segments) != attempts:
        return None
    return [sum(float(m.group(1)) for line in seg.splitlines() if (m := EPOCH_LINE.match(line))) for seg in segments]


TAG = re.compile(r"seed(\d+)_(full|ep(\d+))")


@dataclass
class Result:
    """One finished run as the table shows it."""

    model: str
    dataset: str
    seed: int
    budget: str
    rel_l2: float
    wall_s: float | None
    attempts: int
    card: str
    commit: str
    folder: Path
    precision: str = "32-true"
    untimed_attempts: int = 0  # attempts that never recorded their end (the machine went away)
    commits: list[str] = field(default_factory=list)  # each attempt's, in order
    date: str | None = None  # when the last attempt ended (UTC, ISO 8601)
    command: list[str] = field(default_factory=list)  # the last attempt's
    versions: dict = field(default_factory=dict)  # of the packages the test ran with

    def full_protocol_s(self) -> float | None:
        """Wall time of the config's full budget at this run's pace (steps scale the time)."""
        if self.wall_s is None or self.budget == "full":
            return self.wall_s
        steps = estimated_steps(Run(self.model, self.dataset, self.seed, int(self.budget[2:]), self.folder))
        return self.wall_s * estimated_steps(Run(self.model, self.dataset, self.seed, None, self.folder)) / steps


def run_roots(out: Path) -> list[Path]:
    """``out`` and its precision-arm folders (``launch --arms``: ``<out>/<arm>/``), each holding runs."""
    return [out, *(out / arm for arm in ARMS if (out / arm).is_dir())]


def run_folders(out: Path):
    """``(folder, model, dataset, seed, budget, launch record)`` of every run folder under ``out``
    (``<model>_<dataset>/seed<S>_<budget>/``) of a known model and dataset."""
    for folder in sorted(p for p in out.glob("*_*/seed*") if p.is_dir()):
        model, _, dataset = folder.parent.name.partition("_")
        tag = TAG.fullmatch(folder.name)
        if model in MODELS and dataset in DATASETS and tag is not None:
            record_path = folder / "launch.json"
            record = json.loads(record_path.read_text()) if record_path.is_file() else {}
            yield folder, model, dataset, int(tag.group(1)), tag.group(2), record


def timed_seconds(attempts: list[dict], epoch_s: list[float] | None = None) -> float | None:
    """Wall time summed over the attempts: the recorded ``wall_s`` of those that ended; for one that
    never recorded its end (its machine went away), the time to its last heartbeat, else the sum of
    its epoch times from the log (``epoch_s``, per attempt): both lower bounds. None: nothing known."""
    known = []
    for i, a in enumerate(attempts):
        if a.get("wall_s") is not None:
            known.append(a["wall_s"])
        elif a.get("last_seen") is not None and a.get("start") is not None:
            known.append(a["last_seen"] - a["start"])
        elif epoch_s is not None and epoch_s[i] > 0:
            known.append(epoch_s[i])
    return sum(known) if known else None


def attempt_values(record: dict, key: str) -> list[str]:
    """The attempts' distinct ``card`` or ``commit`` values in order (more than one when a resumed
    run changed machine or code)."""
    values = [a.get(key) or record.get(key) for a in record.get("attempts", [])] or [record.get(key)]
    return list(dict.fromkeys(v or "unknown" for v in values))


def per_attempt(record: dict, key: str) -> str:
    """A run's ``card`` or ``commit`` as a table shows it: "db698da, then f478dfd"."""
    return ", then ".join(attempt_values(record, key))


def finish_date(attempts: list[dict]) -> str | None:
    """When the last attempt ended (else was last seen, else started), UTC ISO 8601; None: never."""
    times = [t for a in attempts for t in (a.get("end") or a.get("last_seen") or a.get("start"),) if t is not None]
    if not times:
        return None
    return datetime.datetime.fromtimestamp(times[-1], datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def tested_versions(folder: Path) -> dict:
    """The package versions test_metrics.json records (``environment.versions``), else none."""
    try:
        return json.loads((folder / "test_metrics.json").read_text()).get("environment", {}).get("versions") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def run_log(out: Path, folder: Path) -> Path:
    """The log a worker appends every attempt of the run in ``folder`` to."""
    return out / "logs" / f"{folder.parent.name}_{folder.name}.log"


def run_facts(out: Path, folder: Path, record: dict) -> dict:
    """What every table says of a run folder: ``wall_s``, ``card``, ``commit`` and ``precision``
    from its launch record; the run's log is read only for an attempt with neither an end nor a
    heartbeat."""
    attempts = record.get("attempts", [])
    epoch_s = None
    if any(a.get("wall_s") is None and a.get("last_seen") is None for a in attempts):
        log = run_log(out, folder)
        if log.is_file():
            epoch_s = epoch_seconds_per_attempt(log.read_text(errors="replace"), len(attempts))
    return {"wall_s": timed_seconds(attempts, epoch_s), "card": per_attempt(record, "card"),
            "commit": per_attempt(record, "commit"),
            "precision": run_precision(attempts[-1]["command"]) if attempts else "unknown"}


def collect(out: Path) -> list[Result]:
    """Every finished run under ``out`` (``<model>_<dataset>/seed<S>_<budget>/test_metrics.json``)."""
    results = []
    for folder, model, dataset, seed, budget, record in run_folders(out):
        rel = rel_l2_of(folder)
        if rel is None:
            continue
        attempts = record.get("attempts", [])
        untimed = sum(1 for a in attempts if a.get("wall_s") is None)
        commits = [c for c in attempt_values(record, "commit") if c != "unknown"]
        results.append(Result(model, dataset, seed, budget, rel, attempts=len(attempts), folder=folder,
                              untimed_attempts=untimed, commits=commits, date=finish_date(attempts),
                              command=attempts[-1]["command"] if attempts else [], versions=tested_versions(folder),
                              **run_facts(out, folder, record)))
    return results


DIRTY = ("+dirty", "-dirty")  # how git_commit and flare_lightning.runs.provenance mark a changed tree


def run_record(result: Result, out: Path) -> dict:
    """The record of a finished run (``benchmarks/records.py``). Its commit is the first attempt's,
    so a change since any attempt marks it stale; the row keeps every attempt's."""
    from benchmarks.records import make_record

    commits = [c.removesuffix("+dirty").removesuffix("-dirty") for c in result.commits]
    row = {"model": result.model, "dataset": result.dataset, "seed": result.seed, "budget": result.budget,
           "precision": result.precision, "rel_l2": result.rel_l2, "wall_s": result.wall_s, "attempts": result.attempts,
           "untimed_attempts": result.untimed_attempts, "full_budget_s": result.full_protocol_s(), "commits": commits,
           "folder": result.folder.relative_to(out).as_posix()}
    configs = [path.relative_to(ROOT).as_posix() for path in config_paths(result.model, result.dataset)]
    return make_record("accuracy", [row], paths=[*FIT_PATHS, *configs], card=result.card, host=None,
                       command=shlex.join(result.command) if result.command else "unknown (no launch record)",
                       date=result.date, versions=result.versions,
                       commit=(commits[0] if commits else None, any(c.endswith(DIRTY) for c in result.commits)))


def precision_slug(precision: str) -> str:
    """A run's precision label as a file-name part: ``bf16-mixed, fp32 eval`` -> ``bf16-mixed-fp32-eval``."""
    return re.sub(r"[^a-z0-9]+", "-", precision.lower()).strip("-")


def write_run_records(results: list[Result], out: Path, records: Path) -> list[Path]:
    """One record per finished run in ``records/accuracy/<model>_<dataset>_<tag>_<precision>.json``
    (arms of a precision ablation share seeds and tags), replacing the record an earlier collect
    wrote for the same run."""
    from flare_lightning.atomic import atomic_write_text

    paths = []
    for result in results:
        name = f"{result.model}_{result.dataset}_{result.folder.name}_{precision_slug(result.precision)}.json"
        path = records / "accuracy" / name
        atomic_write_text(path, json.dumps(run_record(result, out), indent=1, allow_nan=False) + "\n")
        paths.append(path)
    return paths


@dataclass
class Failure:
    """A run whose last attempt exited with an error and left no test metrics."""

    model: str
    dataset: str
    seed: int
    budget: str
    rc: int
    reason: str
    wall_s: float | None
    card: str
    commit: str
    folder: Path
    precision: str


FAILURE_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.*)$")  # [module.]SomeError: message


def failures(out: Path) -> list[Failure]:
    """Runs under ``out`` that ended in an error (their last attempt's exit code is not 0) and have
    no test metrics; the reason is the last ``...Error: message`` line of the run's log."""
    found = []
    for folder, model, dataset, seed, budget, record in run_folders(out):
        attempts = record.get("attempts", [])
        if finished(folder) or not attempts or attempts[-1].get("rc") in (None, 0):
            continue
        reason = "no error line in the log"
        log = run_log(out, folder)
        if log.is_file():
            for line in log.read_text(errors="replace").splitlines():
                match = FAILURE_LINE.match(line.strip())
                if match:
                    reason = f"{match.group(1)}: {match.group(2)}"
        found.append(Failure(model, dataset, seed, budget, int(attempts[-1]["rc"]), reason, folder=folder,
                             **run_facts(out, folder, record)))
    return found


@dataclass
class InProgress:
    """A run whose last attempt has not recorded an end (still going, or its machine went away
    before it finished): how far its checkpointed training got, to resume with ``launch``."""

    model: str
    dataset: str
    seed: int
    budget: str
    epochs_done: int
    max_epochs: int | None
    best_val: float | None
    wall_s: float | None
    card: str
    commit: str
    folder: Path
    precision: str


def training_progress(folder: Path) -> tuple[int, float | None]:
    """(epochs with a logged validation, best val/rel_l2 so far) from the run's metrics.csv."""
    path = folder / "metrics.csv"
    if not path.is_file():
        return 0, None
    epochs, vals = set(), []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val/rel_l2"):
                epochs.add(int(row["epoch"]))
                vals.append(float(row["val/rel_l2"]))
    return len(epochs), (min(vals) if vals else None)


def in_progress(out: Path) -> list[InProgress]:
    """Runs under ``out`` without test metrics whose last attempt recorded no end."""
    found = []
    for folder, model, dataset, seed, budget, record in run_folders(out):
        attempts = record.get("attempts", [])
        if finished(folder) or not attempts or attempts[-1].get("rc") is not None:
            continue
        done, best = training_progress(folder)
        max_epochs = record.get("epochs") or read_config(model, dataset)["trainer"]["max_epochs"]
        found.append(InProgress(model, dataset, seed, budget, done, max_epochs, best, folder=folder,
                                **run_facts(out, folder, record)))
    return found


def run_precision(command: list[str]) -> str:
    """The trainer precision a ``flare fit`` command line asked for (the configs' default: 32-true),
    with ", fp32 eval" where ``--model.eval_fp32 true`` evaluates a mixed-precision run in float32
    and ", TF32 matmuls" where ``--float32_matmul_precision high`` (or medium) lowers float32 matmuls;
    ", fp32 mixer+residual" where ``--model.model.init_args.fp32_parts`` keeps parts in float32."""
    value, eval_fp32, matmul, parts = "32-true", False, "highest", ""

    def option(name: str, i: int, arg: str) -> str | None:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        return command[i + 1] if arg == f"--{name}" and i + 1 < len(command) else None

    for i, arg in enumerate(command):
        value = option("trainer.precision", i, arg) or value
        flag = option("model.eval_fp32", i, arg)
        if flag is not None:
            eval_fp32 = flag.lower() == "true"
        matmul = option("float32_matmul_precision", i, arg) or matmul
        named = option("model.model.init_args.fp32_parts", i, arg)
        parts = "+".join(sorted(re.findall(r"\w+", named))) if named is not None else parts
    label = f"{value}, fp32 eval" if eval_fp32 and not value.startswith("32") else value
    if parts and not value.startswith("32"):
        label = f"{label}, fp32 {parts}"
    lowered = {"high": "TF32 matmuls", "medium": "bf16 float32 matmuls"}.get(matmul)
    return f"{label}, {lowered}" if lowered else label


def hours(seconds: float | None) -> str:
    """A wall time as the accuracy tables write it: minutes under an hour, hours above."""
    if seconds is None:
        return "time unknown"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def status(out: Path, failed: list[Failure], running: list[InProgress]) -> str:
    """The runs that have no record yet: failed ones with their reason, unfinished ones with their
    progress (what a campaign needs to know; the pages show finished runs only)."""
    lines = []
    if failed:
        lines += ["Failed runs (the reason is the last error line of the run's log under `logs/`):",
                  "| model | dataset | budget | seed | precision | exit | reason | wall time | card | commit | folder |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for f in failed:
            reason = f.reason.replace("|", "/")
            lines.append(f"| {MODELS[f.model]} | {f.dataset} | {f.budget} | {f.seed} | {f.precision} | {f.rc} | {reason} | "
                         f"{hours(f.wall_s)} | {f.card} | {f.commit} | `{f.folder.relative_to(out)}` |")
    if running:
        lines += ["Runs in progress (their last attempt recorded no end; `launch` with the same arguments resumes "
                  "them from `last.ckpt`; validation error: the best so far):",
                  "| model | dataset | budget | seed | precision | epochs done | best val. rel. L2 so far | time so far | card | commit | folder |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in running:
            best = f"{r.best_val:.4e}" if r.best_val is not None else "none yet"
            lines.append(f"| {MODELS[r.model]} | {r.dataset} | {r.budget} | {r.seed} | {r.precision} | "
                         f"{r.epochs_done}/{r.max_epochs} | {best} | {hours(r.wall_s)} (at least) | {r.card} | "
                         f"{r.commit} | `{r.folder.relative_to(out)}` |")
    return "\n".join(lines)
