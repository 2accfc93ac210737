"""Context parallelism on CPU (gloo, 2 and 3 processes) equals the whole-sample model:
outputs and every parameter gradient to 1e-5 in float32, with masks, padding and uneven
shares, for the PyTorch and the (interpreted) Triton mixer, with activation
checkpointing and chunked MLPs; bf16 autocast to bf16 accuracy."""

from __future__ import annotations

import pytest
import torch

from tests.parallel import workers
from tests.parallel.spawn import run_spawned

# N = 13 on 2 or 3 ranks: shares of 7 + 6 (padded) or 5 + 5 + 3 (padded); the second
# sample's 6 real points leave the last rank without any of them.
TORCH_CASES = [
    {"n": 13, "lengths": [13, 6], "model": {"mixer_backend": "chunked"}},
    {"n": 13, "lengths": [13, 6], "model": {"mixer_backend": "chunked"}, "dtype": torch.float64},
    {"n": 13, "lengths": None, "model": {"mixer_backend": "explicit"}},
    {"n": 12, "lengths": [5, 12], "model": {"mixer_backend": "sdpa", "checkpoint_blocks": True, "mlp_chunk_size": 2}},
    {"n": 12, "lengths": [5, 12], "model": {"mixer_backend": "sdpa", "checkpoint_blocks": True, "mlp_chunk_size": 2},
     "dtype": torch.float64},
]


@pytest.mark.parametrize("world", [2, 3])
def test_model_outputs_and_gradients_match(world):
    run_spawned(workers.model_exact, world, TORCH_CASES)


@pytest.mark.slow
def test_model_with_triton_mixer_matches():
    pytest.importorskip("triton")
    cases = [{"n": 37, "lengths": [37, 20], "model": {"mixer_backend": "triton", "checkpoint_blocks": True}}]
    run_spawned(workers.model_exact, 2, cases)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.slow)])
@pytest.mark.parametrize("world", [2, 3])
def test_mixer_on_uneven_shares(world, backend):
    if backend == "triton":
        pytest.importorskip("triton")
    run_spawned(workers.mixer_uneven, world, backend)


def test_bf16_autocast_with_memory_options():
    run_spawned(workers.autocast_close, 2)


@pytest.mark.parametrize("world", [2, 3])
def test_encode_statistics_merge_in_one_gather(world):
    run_spawned(workers.encode_stats_merge, world)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_inputs_and_loss(world):
    run_spawned(workers.sharded_training, world)
