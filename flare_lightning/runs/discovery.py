"""Finding runs and their checkpoints on disk: ``<save_dir>/<name>/version_N/checkpoints/``
(SLURM jobs: ``version_<job id>``, then ``version_<job id>.1``... for later fits of the job)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from flare_lightning.runs.lock import RunInUseError, in_use

BEST = "best.ckpt"
LAST = "last.ckpt"
RUN_INFO = "run_info.json"
VERSION = re.compile(r"version_(\d+)(?:_(\d+))?(?:\.(\d+))?")


def version_order(name: str) -> tuple[int, int, int, str] | None:
    """Sort key of a run folder name (``version_N``, ``version_<job>[_<task>][.<k>]``), None
    for other names: larger is newer."""
    m = VERSION.fullmatch(name)
    if m is None:
        return None
    number, task, later = m.groups()
    return int(number), -1 if task is None else int(task), 0 if later is None else int(later), name


def latest_run(save_dir: str | Path, name: str, required: str | None = None) -> Path:
    """The newest run folder: the ``version_N`` with the largest N (holding
    ``checkpoints/<required>`` if given: notebooks use that to find the newest finished run)."""
    base = Path(save_dir) / name
    runs = []
    for p in base.glob("version_*"):
        key = version_order(p.name)
        if key and p.is_dir() and (required is None or (p / "checkpoints" / required).is_file()):
            runs.append((key, p))
    if not runs:
        what = f" with checkpoints/{required}" if required else ""
        raise FileNotFoundError(f"no run folder version_N{what} under {base}: train first (flare fit ...)")
    return max(runs)[1]


def _why_missing(run: Path, file: str) -> str:
    info = run / RUN_INFO
    try:
        validation = json.loads(info.read_text()).get("validation") if info.is_file() else None
    except (OSError, ValueError):
        validation = None
    if file == BEST and validation is False:
        return "it was trained without validation data (n_val 0), so no checkpoint was selected; use --ckpt_path last"
    if not (run / "checkpoints").is_dir():
        return "it has no checkpoints (stopped before its first save, or not made by flare fit)"
    return f"it holds {sorted(p.name for p in (run / 'checkpoints').glob('*.ckpt'))}"


def resolve_checkpoint(ckpt_path: str | None, save_dir: str | Path, name: str, check_busy: bool = True) -> str | None:
    """Map ``best``/``last`` to ``best.ckpt``/``last.ckpt`` of the newest run (the largest
    ``version_N``); paths pass through. When the newest run lacks that file, or is still
    training (``check_busy``), this is an error: an older run is never picked silently."""
    if ckpt_path in ("best", "last"):
        file = BEST if ckpt_path == "best" else LAST
        run = latest_run(save_dir, name)
        path = run / "checkpoints" / file
        if not path.is_file():
            raise FileNotFoundError(
                f"--ckpt_path {ckpt_path}: the newest run {run} has no checkpoints/{file}: {_why_missing(run, file)}. "
                "Older runs are not used in its place: pass the checkpoint's path instead"
            )
        if check_busy and in_use(run):
            raise RunInUseError(
                f"--ckpt_path {ckpt_path}: the newest run {run} is still training (another flare command holds it), "
                f"so its {file} is not final; wait for it to end, or pass the checkpoint's path to use it as it is now"
            )
        return str(path)
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path {ckpt_path!r} is not a file (use a path, 'best' or 'last')")
    return ckpt_path


def run_of_checkpoint(ckpt_path: str | Path) -> Path | None:
    """The run folder of ``<run>/checkpoints/<file>.ckpt``, else None."""
    path = Path(ckpt_path)
    return path.parent.parent if path.parent.name == "checkpoints" else None


def continues_run(ckpt_path: str | Path, save_dir: str | Path, name: str) -> Path | None:
    """The run that ``fit --ckpt_path`` continues in place: the checkpoint must be that run's
    ``last.ckpt`` and the run a ``version`` of the configured logger (``save_dir/name``).
    Anything else (a ``best.ckpt``, another logger's run, a loose file) starts a new run."""
    run = run_of_checkpoint(ckpt_path)
    if run is None or Path(ckpt_path).name != LAST:
        return None
    same_logger = run.parent.resolve() == (Path(save_dir) / name).resolve()
    return run if same_logger else None


def run_labels(runs: list[str | Path], parts: int = 2) -> list[str]:
    """Short labels for run folders: their last ``parts`` path components (``quickstart/version_0``),
    lengthened where two runs would share one (``bf16/transformer_darcy/seed0_full``)."""
    paths = [Path(r).resolve() for r in runs]
    if len(set(paths)) < len(paths):
        raise ValueError(f"the same run folder is listed twice: {[str(r) for r in runs]}")
    labels = ["/".join(p.parts[-parts:]) for p in paths]
    while len(set(labels)) < len(labels):
        parts += 1
        labels = ["/".join(p.parts[-parts:]) for p in paths]
    return labels
