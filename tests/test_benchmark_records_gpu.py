"""The GPU benchmark scripts write records that the pages render (tiny sizes; skipped without CUDA)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from benchmarks import render
from benchmarks.records import read_record
from benchmarks.sections import BY_BENCHMARK
from tests.helpers import REPO

SCRIPTS = {  # benchmark -> the script's tiny command line
    "step": ["benchmarks/step.py", "--n", "4096", "--latents", "32", "64", "--configs", "reference", "ours-fast"],
    "mixer": ["benchmarks/mixer.py", "--ns", "12", "--shapes", "2:8:16", "--full-max-n", "4096"],
    "mixer_in_model": ["benchmarks/mixer_in_model.py", "--n", "4096"],
    "exp2_floor": ["benchmarks/exp2_floor.py"],
    "max_points": ["benchmarks/max_points.py", "--configs", "ours-memory", "--start", "4096", "--budget-s", "3",
                   "--latents", "32"],
    "step_grid": ["benchmarks/step.py", "--grid", "--n", "4096", "--configs", "ours-fused", "--grid-blocks", "1", "2",
                  "--grid-latents", "128", "256"],
    "step_eval": ["benchmarks/step.py", "--eval", "--n", "3000000", "--configs", "ours-fused", "reference"],
    "mlp": ["benchmarks/mlp.py", "--n", "65536"],
    "mixer_tune": ["benchmarks/mixer_tune.py", "--shapes", "2:8:64", "--log2n", "12", "--jobs", "4", "--dtype", "float32",
                   "--matmul-precision", "high"],
    "step_kernels": ["benchmarks/step_kernels.py", "--n", "4096", "--latents", "64", "--configs", "ours-fused", "reference"],
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(SCRIPTS))
def test_gpu_benchmark_writes_a_record_the_page_renders(name, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    env.pop("TRITON_INTERPRET", None)  # the real kernels
    subprocess.run([sys.executable, *SCRIPTS[name], "--out", str(tmp_path)], cwd=REPO, env=env, check=True,
                   timeout=600)
    (path,) = tmp_path.glob("*.json")
    record = read_record(path)
    assert record["benchmark"] == name and record["card"] == torch.cuda.get_device_name()
    assert record["rows"] and SCRIPTS[name][0] in record["paths"] and record["versions"]["cuda"]
    table = render.table(BY_BENCHMARK[name].columns, record["rows"])
    assert len(table) == 2 + len(record["rows"]) and all(line.count("|") == table[0].count("|") for line in table)
