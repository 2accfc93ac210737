"""The kernel-level GPU benchmark scripts (the mixer, its tile sweep, the fused MLP, the exp2 floor)
write records that the pages render (tiny sizes; skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import check_gpu_benchmark_record

SCRIPTS = {  # benchmark -> the script's tiny command line
    "mixer": ["benchmarks/mixer.py", "--ns", "12", "--shapes", "2:8:16", "--full-max-n", "4096"],
    "exp2_floor": ["benchmarks/exp2_floor.py"],
    "mlp": ["benchmarks/mlp.py", "--n", "65536"],
    "mixer_tune": ["benchmarks/mixer_tune.py", "--shapes", "2:8:64", "--log2n", "12", "--jobs", "4", "--dtype", "float32",
                   "--matmul-precision", "high"],
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(SCRIPTS))
def test_gpu_kernel_benchmark_writes_a_record_the_page_renders(name, tmp_path):
    check_gpu_benchmark_record(name, SCRIPTS[name], tmp_path)
