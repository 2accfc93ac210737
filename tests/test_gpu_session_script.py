"""scripts/gpu_session.sh: its stages name real benchmark commands, and bad arguments fail early."""

from __future__ import annotations

import os
import shlex
import subprocess

from tests.helpers import REPO

SCRIPT = REPO / "scripts" / "gpu_session.sh"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO, env=env)


def test_each_stage_runs_a_script_of_the_repository_with_options_it_accepts():
    listed = run("--list")
    assert listed.returncode == 0
    stages = dict(line.split(": ", 1) for line in listed.stdout.splitlines())
    assert list(stages)[0] == "gpu_tests" and {"fit1m", "tss", "eval", "grid48"} <= set(stages)
    for stage, command in stages.items():
        words = shlex.split(command)
        script = next(w for w in words if w.endswith((".py", ".sh")))
        assert (REPO / script).is_file(), f"{stage}: {script} is not in the repository"
        if script.endswith(".py"):  # every option parses: --help after them would hide a typo, so check them
            options = {w.split("=")[0] for w in words if w.startswith("--")}
            text = (REPO / script).read_text()
            missing = [o for o in options if f'"{o}"' not in text]
            assert not missing, f"{stage}: {script} has no option {missing}"


def test_unknown_arguments_and_stages_stop_before_anything_runs():
    bad = run("--bogus")
    assert bad.returncode == 2 and "unknown argument '--bogus'" in bad.stderr
    stage = run(env={**os.environ, "STAGES": "gpu_tests nope"})
    assert stage.returncode == 2 and "unknown stage 'nope'" in stage.stderr
