"""Which model operations a kernel that Inductor generated came from, for kernel tables.

A profile names Inductor's kernels by what they fuse (``triton_poi_fused_add_view_4``), not by where
in the model they run. The code Inductor writes (under its cache directory) says so in a comment
before each launch: ``# Topologically Sorted Source Nodes: [x_1, add], Original ATen: [aten.add]``.
``kernel_sources`` reads those comments back for the kernels a profile found. Names repeat across
compiled graphs (forward, backward, other rows), so only code written since ``since`` is read and a
name that several graphs launch gets every description found.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

COMMENT = re.compile(r"#\s*Topologically Sorted Source Nodes: \[(.*?)\], Original ATen: \[(.*?)\]")
LAUNCH = re.compile(r"^\s*(\w+)(?:\.run)?\(")  # `name.run(` (Triton) or `name(` (C++) at a line's start


def inductor_cache() -> Path:
    """Inductor's cache directory (where it writes the code it generates)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


def kernel_sources(names: Iterable[str], since: float, root: Path | None = None) -> dict[str, str]:
    """``{kernel: "source nodes <- ATen ops"}`` for those of ``names`` launched in generated code
    written at or after ``since`` (a ``time.time()``), several descriptions joined by `` | ``."""
    wanted = set(names)
    found: dict[str, set[str]] = defaultdict(set)
    root = inductor_cache() if root is None else root
    for path in sorted(root.rglob("*.py")) if root.is_dir() else []:
        try:
            if path.stat().st_mtime < since:
                continue
            lines = path.read_text(errors="replace").splitlines()
        except OSError:  # a file removed or unreadable meanwhile: not ours to explain
            continue
        last = None
        for line in lines:
            comment = COMMENT.search(line)
            if comment:
                last = f"{comment.group(1)} <- {comment.group(2)}"
                continue
            launch = LAUNCH.match(line)
            if launch and last and launch.group(1) in wanted:
                found[launch.group(1)].add(last)
    return {name: " | ".join(sorted(found[name])) for name in wanted if name in found}
