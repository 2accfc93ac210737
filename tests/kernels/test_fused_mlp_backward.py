"""The fused MLP's backward variants against float64: from the layer inputs the forward kept
(``store_hidden``, in segments of 1, 2 or 5 layers), the split backward (a row pass, then the
weight-gradient GEMM), and the segment plan itself. Interpreted kernels without CUDA."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

from flare_lightning.kernels.fused_mlp import fused_mlp  # noqa: E402
from tests.kernels.fused_mlp_cases import CASES, fused_errors, launched_with, small_tiles  # noqa: E402


def test_fused_mlp_bf16_stored_hidden(tmlp, device):
    with torch.autocast(device.type, dtype=torch.bfloat16):
        errors = fused_errors(tmlp, device, 32, 3, "gelu_tanh", True, True, torch.float32, seed=12, store_hidden=True)
    assert 1e-5 < max(errors.values()) < 3e-2, errors


@pytest.fixture(params=[1, 2, 5], ids=lambda n: f"{n}-layer segments")
def stored_segments(tmlp, request):
    """Backward segments of 1, 2 or 5 layers when the forward kept the layers' inputs."""
    with launched_with(tmlp, tmlp.MLPConfig(32, 4, 32, 4, 2, stored_rows=32, stored_layers_per_segment=request.param)):
        yield request.param


@pytest.mark.parametrize("width, layers, act, with_ln, with_res", [CASES[0], CASES[2], CASES[4]])
def test_stored_hidden_backward_matches_float64_reference(tmlp, device, stored_segments, width, layers, act, with_ln,
                                                          with_res):
    errors = fused_errors(tmlp, device, width, layers, act, with_ln, with_res, torch.float32, seed=7 + layers,
                          store_hidden=True)
    tol = 1e-5 if torch.get_float32_matmul_precision() == "highest" else 2e-3
    assert max(errors.values()) < tol, errors


def test_stored_hidden_keeps_the_layer_inputs_only_when_training(tmlp, device):
    x = torch.randn(37, 16, device=device)
    w, b = torch.randn(4, 16, 16, device=device) * 0.2, torch.zeros(4, 16, device=device)
    args = (None, None, None, 1e-5, 0, torch.float32, torch.float32)
    out, hidden = tmlp.mlp_fwd(x, w, b, *args, True)
    assert hidden.shape == (3, 37, 16)
    assert tmlp.mlp_fwd(x, w, b, *args, False)[1].numel() == 0
    with torch.no_grad():  # the wrapper asks for them only when a gradient will be taken
        ref = fused_mlp(x, w, b, store_hidden=True)
    torch.testing.assert_close(out, ref)
    h = torch.nn.functional.gelu(x @ w[0].T, approximate="tanh") + x  # the second layer's input
    torch.testing.assert_close(hidden[0], h, rtol=1e-5, atol=1e-5)


def test_stored_backward_reads_what_the_forward_kept(tmlp, device, stored_segments):
    """The backward from kept inputs takes each layer's input from ``hidden`` (not a recompute):
    changing the kept input of layer i changes the gradients of layer i's weights, not the
    later layers'."""
    g = torch.Generator().manual_seed(4)
    x, dout = (torch.randn(29, 16, generator=g).to(device) for _ in range(2))
    w, b = (0.3 * torch.randn(4, 16, 16, generator=g)).to(device), (0.1 * torch.randn(4, 16, generator=g)).to(device)
    _, hidden = tmlp.mlp_fwd(x, w, b, None, None, None, 1e-5, 0, torch.float32, torch.float32, True)
    bwd = (w, b, None, None, 1e-5, 0, torch.float32)
    _, dw, _, _ = tmlp.mlp_bwd(x, dout, hidden, *bwd)
    recomputed = tmlp.mlp_bwd(x, dout, torch.empty(0, device=device), *bwd)[1]
    torch.testing.assert_close(dw, recomputed, rtol=1e-5, atol=1e-5)
    changed = hidden.clone()
    changed[1] += 0.5  # the input of layer 2
    _, dw_changed, _, _ = tmlp.mlp_bwd(x, dout, changed, *bwd)
    assert not torch.allclose(dw_changed[2], dw[2], atol=1e-3)
    torch.testing.assert_close(dw_changed[3], dw[3])  # layer 3's input and gradient are untouched


@pytest.fixture
def split_backward(tmlp):
    with launched_with(tmlp, small_tiles(tmlp, split=True)):
        yield


@pytest.mark.parametrize("store_hidden", [False, True], ids=["recompute", "stored"])
@pytest.mark.parametrize("width, layers, act, with_ln, with_res", CASES)
def test_split_backward_matches_float64_reference(tmlp, device, split_backward, store_hidden, width, layers, act,
                                                  with_ln, with_res):
    errors = fused_errors(tmlp, device, width, layers, act, with_ln, with_res, torch.float32, seed=31 + layers,
                          store_hidden=store_hidden)
    tol = 1e-5 if torch.get_float32_matmul_precision() == "highest" else 2e-3
    assert max(errors.values()) < tol, errors


def test_split_backward_bf16_agrees_with_the_register_backward(tmlp, device):
    """Under bf16 autocast both backwards see the same bf16 operands, so against float64 the split
    one's errors are bf16-level and no larger than the one-kernel backward's (only fp32 summation
    order and the bf16 d a that the GEMM reads differ)."""
    results = []
    for split in (False, True):
        with launched_with(tmlp, small_tiles(tmlp, split)), torch.autocast(device.type, dtype=torch.bfloat16):
            results.append(fused_errors(tmlp, device, 32, 3, "gelu_tanh", True, True, torch.float32, seed=13,
                                        store_hidden=True))
    register, split = results
    assert max(split.values()) < 3e-2, split
    for key in register:  # bf16-level errors of the same size: neither backward is off
        assert split[key] < 1.5 * register[key] + 1e-3, (key, register, split)


@pytest.mark.parametrize("max_layers", [1, 2, 5])
def test_backward_segments_cover_each_layer_once_and_agree(tmlp, device, max_layers):
    cfg = tmlp.MLPConfig(32, 4, 32, 4, max_layers)
    for layers in range(1, 8):
        segments = cfg.segments(layers)
        covered = [i for lo, hi in reversed(segments) for i in range(lo, hi)]
        assert covered == list(range(layers)) and all(hi - lo <= max_layers for lo, hi in segments)
        assert segments[0][1] == layers and segments[-1][0] == 0
    with launched_with(tmlp, cfg):
        errors = fused_errors(tmlp, device, 16, 3, "gelu_tanh", True, False, torch.float32, seed=5)
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("layers", [1, 4])
def test_split_backward_reads_a_dot_dtype_gradient_as_the_last_layers_da(tmlp, device, split_backward, layers):
    """With the output's gradient already in the dot dtype (bf16 keys and values), the row pass does
    not write the last layer's d a again and the weight GEMM reads the gradient itself: the same
    numbers, bit for bit, as from that gradient in fp32 (which the row pass casts and writes)."""
    g = torch.Generator().manual_seed(layers)
    x = torch.randn(45, 16, generator=g).to(device)
    dout = torch.randn(45, 16, generator=g).to(device).to(torch.bfloat16)
    w, b = (0.3 * torch.randn(layers, 16, 16, generator=g)).to(device), (0.1 * torch.randn(layers, 16, generator=g)).to(device)
    lnw, lnb = (1 + 0.1 * torch.randn(16, generator=g)).to(device), (0.1 * torch.randn(16, generator=g)).to(device)
    hidden = tmlp.mlp_fwd(x, w, b, lnw, lnb, None, 1e-5, 0, torch.bfloat16, torch.float32, True)[1]
    bwd = (w, b, lnw, lnb, 1e-5, 0, torch.bfloat16)
    from_bf16 = tmlp.mlp_bwd(x, dout, hidden, *bwd)
    from_fp32 = tmlp.mlp_bwd(x, dout.float(), hidden, *bwd)
    for a, r in zip(from_bf16, from_fp32):
        torch.testing.assert_close(a, r, rtol=0, atol=0)
    assert from_bf16[1][-1].abs().sum() > 0  # the last layer's weight gradient is there


@pytest.fixture
def recompute_h0(tmlp, monkeypatch):
    """The split backward with layer 0's input recomputed from x (``RECOMPUTE_H0``)."""
    monkeypatch.setattr(tmlp, "RECOMPUTE_H0", True)
    with launched_with(tmlp, small_tiles(tmlp, split=True)):
        yield


@pytest.mark.parametrize("store_hidden", [False, True], ids=["recompute", "stored"])
@pytest.mark.parametrize("width, layers, act, with_ln, with_res", CASES)
def test_split_backward_recomputing_layer0_input_matches_float64(tmlp, device, recompute_h0, store_hidden, width,
                                                                 layers, act, with_ln, with_res):
    """Every case (with and without LayerNorm, one layer to five) against float64, LN(x) never written."""
    errors = fused_errors(tmlp, device, width, layers, act, with_ln, with_res, torch.float32, seed=31 + layers,
                          store_hidden=store_hidden)
    tol = 1e-5 if torch.get_float32_matmul_precision() == "highest" else 2e-3
    assert max(errors.values()) < tol, errors


def test_recomputed_layer0_input_is_the_written_one_bit_for_bit(tmlp, device, monkeypatch):
    """Under bf16 the kernels recompute LN(x) with the very arithmetic that wrote it: dx, dW, db and the
    LayerNorm's gradients are the same numbers either way (the ops run the same sums in the same order)."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 45, 16, generator=g).to(device, torch.bfloat16)
    dout = torch.randn(2, 45, 16, generator=g).to(device, torch.bfloat16)
    w, b = (0.3 * torch.randn(4, 16, 16, generator=g)).to(device), (0.3 * torch.randn(4, 16, generator=g)).to(device)
    lnw, lnb = (1 + 0.3 * torch.randn(16, generator=g)).to(device), (0.3 * torch.randn(16, generator=g)).to(device)
    results = []
    for recompute in (False, True):
        monkeypatch.setattr(tmlp, "RECOMPUTE_H0", recompute)
        with launched_with(tmlp, small_tiles(tmlp, split=True)):
            hidden = tmlp.mlp_fwd(x, w, b, lnw, lnb, None, 1e-5, 0, torch.bfloat16, torch.bfloat16, True)[1]
            results.append(tmlp.mlp_bwd(x, dout, hidden, w, b, lnw, lnb, 1e-5, 0, torch.bfloat16))
    for name, a, c in zip(["dx", "dW", "db", "dLN"], *results):
        assert torch.equal(a, c), name
