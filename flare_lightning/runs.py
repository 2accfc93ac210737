"""Finding runs and their checkpoints on disk: ``<save_dir>/<name>/version_N/checkpoints/``."""

from __future__ import annotations

import re
from pathlib import Path

BEST = "best.ckpt"
LAST = "last.ckpt"


def latest_run(save_dir: str | Path, name: str, required: str | None = None) -> Path:
    """The ``version_N`` folder with the largest N (holding ``checkpoints/<required>`` if given)."""
    base = Path(save_dir) / name
    runs = []
    for p in base.glob("version_*"):
        m = re.fullmatch(r"version_(\d+)", p.name)
        if m and p.is_dir() and (required is None or (p / "checkpoints" / required).is_file()):
            runs.append((int(m.group(1)), p))
    if not runs:
        what = f" with checkpoints/{required}" if required else ""
        raise FileNotFoundError(f"no run folder version_N{what} under {base}: train first (flare fit ...)")
    return max(runs)[1]


def resolve_checkpoint(ckpt_path: str | None, save_dir: str | Path, name: str) -> str | None:
    """Map ``best``/``last`` to the newest run's ``best.ckpt``/``last.ckpt``; paths pass through."""
    if ckpt_path in ("best", "last"):
        file = BEST if ckpt_path == "best" else LAST
        return str(latest_run(save_dir, name, required=file) / "checkpoints" / file)
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path {ckpt_path!r} is not a file (use a path, 'best' or 'last')")
    return ckpt_path
