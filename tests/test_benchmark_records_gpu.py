"""The model-level GPU benchmark scripts (steps, evaluation, largest N) write records that the pages
render (tiny sizes; skipped without CUDA). The kernel-level ones: test_benchmark_records_gpu_kernels.py
(two files, so that the GPU test run's workers take them side by side)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import check_gpu_benchmark_record

SCRIPTS = {  # benchmark -> the script's tiny command line
    "step": ["benchmarks/step.py", "--n", "4096", "--latents", "32", "64", "--configs", "reference", "ours-fast"],
    "mixer_in_model": ["benchmarks/mixer_in_model.py", "--n", "4096"],
    "max_points": ["benchmarks/max_points.py", "--configs", "ours-memory", "--start", "4096", "--budget-s", "3",
                   "--latents", "32"],
    "step_grid": ["benchmarks/step.py", "--grid", "--n", "4096", "--configs", "ours-fused", "--grid-blocks", "1", "2",
                  "--grid-latents", "128", "256"],
    "step_eval": ["benchmarks/step.py", "--eval", "--n", "3000000", "--configs", "ours-fused", "reference"],
    "step_kernels": ["benchmarks/step_kernels.py", "--n", "4096", "--latents", "64", "--configs", "ours-fused", "reference"],
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(SCRIPTS))
def test_gpu_benchmark_writes_a_record_the_page_renders(name, tmp_path):
    check_gpu_benchmark_record(name, SCRIPTS[name], tmp_path)
