"""The fused residual MLP (Triton) against the plain PyTorch ``ResidualMLP`` in float64.

Forward and every gradient (input, weights, biases, LayerNorm, residual) on fresh random
inputs with a row count that is not a multiple of the tile; the backward's layer segments;
``FLARE(mlp_backend='triton')`` against ``'torch'`` (masked, chunked evaluation, bf16
autocast); the custom op under ``opcheck`` and ``torch.compile``; and the refusals.
Interpreted kernels without CUDA.
"""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch
from torch import nn

from tests.kernels.conftest import HAS_CUDA, _fix_interpreter, float32_matmul_precision, needs_tf32

pytest.importorskip("triton")
# The interpreter's numpy sigmoid overflows exp(-a) for large |a| (the result, 0 or 1, is right).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

from flare_lightning.kernels.fused_mlp import fused_mlp  # noqa: E402
from flare_lightning.models import FLARE  # noqa: E402
from flare_lightning.models.mlp import ResidualMLP  # noqa: E402


@pytest.fixture(scope="module")
def tmlp():
    """``flare_lightning.kernels.triton_mlp``, its kernels interpreted when there is no CUDA."""
    from flare_lightning.kernels import triton_mlp, triton_mlp_kernels

    if not HAS_CUDA:
        _fix_interpreter()
        if not triton_mlp.interpreted():
            importlib.reload(triton_mlp_kernels)
    return triton_mlp


@pytest.fixture(scope="module")
def device() -> torch.device:
    return torch.device("cuda" if HAS_CUDA else "cpu")


def random_mlp(width: int, layers: int, act: str, seed: int) -> tuple[ResidualMLP, nn.LayerNorm]:
    """A float64 ResidualMLP and LayerNorm with O(1) random parameters (not the small init,
    so every layer's contribution shows in the output)."""
    g = torch.Generator().manual_seed(seed)
    mlp, norm = ResidualMLP(width, width, width, layers, act).double(), nn.LayerNorm(width).double()
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
        norm.weight.copy_(1 + 0.3 * torch.randn(width, generator=g, dtype=torch.float64))
        norm.bias.copy_(0.3 * torch.randn(width, generator=g, dtype=torch.float64))
    return mlp, norm


def fused_errors(tmlp, device, width, layers, act, with_ln, with_res, dtype, seed, rows=(3, 37), store_hidden=False):
    """Relative L2 errors of the fused output and gradients against the float64 MLP."""
    mlp, norm = random_mlp(width, layers, act, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x, res, dout = (torch.randn(*rows, width, generator=g, dtype=torch.float64) for _ in range(3))
    x_ref = x.clone().requires_grad_()
    res_ref = res.clone().requires_grad_()
    params = [*mlp.parameters(), norm.weight, norm.bias]
    y_ref = mlp(norm(x_ref) if with_ln else x_ref) + (res_ref if with_res else 0.0)
    ref = torch.autograd.grad(y_ref, [x_ref, res_ref, *params], dout, allow_unused=True)
    w_ref, b_ref = (torch.stack(ref[2:-2][i::2]) for i in (0, 1))  # ResidualMLP order: (weight, bias) per layer

    weight, bias = (t.detach().float().to(device).requires_grad_() for t in mlp.stacked())
    ln_w, ln_b = (t.detach().float().to(device).requires_grad_() for t in (norm.weight, norm.bias))
    xd = x.to(device=device, dtype=dtype).requires_grad_()
    rd = res.to(device=device, dtype=dtype).requires_grad_()
    out = fused_mlp(xd, weight, bias, (ln_w, ln_b, norm.eps) if with_ln else None,
                    rd if with_res else None, act, store_hidden=store_hidden)
    assert out.shape == x.shape and torch.isfinite(out).all()
    wanted = [xd, weight, bias] + ([ln_w, ln_b] if with_ln else []) + ([rd] if with_res else [])
    grads = torch.autograd.grad(out, wanted, dout.to(device=device, dtype=out.dtype))

    def rel(a, b):
        return ((a.detach().double().cpu() - b).norm() / b.norm()).item()

    errors = {"y": rel(out, y_ref), "dx": rel(grads[0], ref[0]), "dw": rel(grads[1], w_ref), "db": rel(grads[2], b_ref)}
    if with_ln:
        errors.update(dln_w=rel(grads[3], ref[-2]), dln_b=rel(grads[4], ref[-1]))
    if with_res:
        errors["dres"] = rel(grads[-1], ref[1])
    return errors


CASES = [  # width, hidden layers, act, LayerNorm, residual
    (16, 3, "gelu_tanh", True, True),
    (32, 3, "gelu_tanh", True, False),
    (16, 0, "gelu", False, True),
    (16, 1, "silu", True, True),
    (32, 4, "relu", False, False),
]


@pytest.mark.parametrize("width, layers, act, with_ln, with_res", CASES)
def test_fused_mlp_matches_float64_reference(tmlp, device, width, layers, act, with_ln, with_res):
    errors = fused_errors(tmlp, device, width, layers, act, with_ln, with_res, torch.float32, seed=width + layers)
    tol = 1e-5 if torch.get_float32_matmul_precision() == "highest" else 2e-3
    assert max(errors.values()) < tol, errors


@pytest.mark.gpu
@needs_tf32
@pytest.mark.parametrize("store_hidden", [False, True], ids=["recompute", "stored"])
def test_fp32_errors_follow_the_matmul_precision(tmlp, device, store_hidden):
    """fp32: ``highest`` gives fp32-level errors against float64, ``high`` TF32-level ones (at least
    10x larger: the setting reaches every dot, forward and backward)."""
    errors = {}
    for setting in ("highest", "high"):
        with float32_matmul_precision(setting):
            errors[setting] = fused_errors(tmlp, device, 64, 3, "gelu_tanh", True, True, torch.float32, seed=21,
                                           rows=(2, 1000), store_hidden=store_hidden)
    exact, tf32 = (max(errors[s].values()) for s in ("highest", "high"))
    assert exact < 2e-5, errors  # fp32 sums over 2000 rows
    assert 10 * exact < tf32 < 5e-3, errors


def test_fused_mlp_bf16_autocast_is_bf16_accurate(tmlp, device):
    """Under bf16 autocast the dots run in bf16 (fp32 sums): bf16-level errors, far from wrong."""
    with torch.autocast(device.type, dtype=torch.bfloat16):
        errors = fused_errors(tmlp, device, 32, 3, "gelu_tanh", True, True, torch.float32, seed=11)
    assert 1e-5 < max(errors.values()) < 3e-2, errors


def test_fused_mlp_bf16_stored_hidden(tmlp, device):
    with torch.autocast(device.type, dtype=torch.bfloat16):
        errors = fused_errors(tmlp, device, 32, 3, "gelu_tanh", True, True, torch.float32, seed=12, store_hidden=True)
    assert 1e-5 < max(errors.values()) < 3e-2, errors


@contextlib.contextmanager
def launched_with(tmlp, cfg):
    """The fused kernels launch with ``cfg`` (``triton_mlp.CONFIG_OVERRIDE``) inside the block."""
    saved = tmlp.CONFIG_OVERRIDE
    tmlp.CONFIG_OVERRIDE = cfg
    try:
        yield cfg
    finally:
        tmlp.CONFIG_OVERRIDE = saved


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


def small_tiles(tmlp, split: bool):
    """Tiles small enough for many of them at the tests' row counts; with ``split`` the two-kernel
    backward (row pass, then the weight-gradient GEMM over three row slices)."""
    return tmlp.MLPConfig(32, 4, 32, 4, 2, stored_rows=32, split=split, split_rows=16, dw_rows=16, dw_programs_per_sm=8)


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


@pytest.mark.parametrize("save", [False, True], ids=["recompute", "stored"])
def test_opcheck(tmlp, device, save):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 21, 16, generator=g).to(device).requires_grad_()
    w = (0.2 * torch.randn(4, 16, 16, generator=g)).to(device).requires_grad_()
    b = (0.2 * torch.randn(4, 16, generator=g)).to(device).requires_grad_()
    ln_w, ln_b = torch.ones(16, device=device, requires_grad=True), torch.zeros(16, device=device, requires_grad=True)
    res = torch.randn(2, 21, 16, generator=g).to(device).requires_grad_()
    args = (x, w, b, ln_w, ln_b, res, 1e-5, 0, torch.float32, torch.float32, save)
    torch.library.opcheck(tmlp.mlp_fwd, args)


def flare_pair(seed: int, store_hidden: bool = False, **kw) -> tuple[FLARE, FLARE]:
    """The same random FLARE with ``mlp_backend='torch'`` (float64) and ``'triton'`` (float32)."""
    torch.manual_seed(seed)
    kw = dict(in_dim=3, out_dim=2, channels=16, num_blocks=2, num_heads=2, num_latents=8, **kw)
    plain = FLARE(**kw, mixer_backend="explicit").double()
    with torch.no_grad():
        for p in plain.parameters():
            p.normal_(0.0, 0.3) if p.dim() > 1 else p.add_(0.1 * torch.randn_like(p))
    fused = FLARE(**kw, mixer_backend="explicit", mlp_backend="triton", mlp_store_hidden=store_hidden)
    fused.load_state_dict({k: v.float() for k, v in plain.state_dict().items()})
    return plain, fused


@pytest.mark.parametrize("store_hidden", [False, True], ids=["recompute", "stored"])
def test_flare_triton_mlps_match_torch_mlps(tmlp, device, store_hidden):
    """Whole model, masked: outputs on real points and every parameter's gradient, with the
    fused backward recomputing the layer chains or reading what the forward kept."""
    plain, fused = flare_pair(0, store_hidden)
    assert all(m.store_hidden == store_hidden for b in fused.blocks for m in (b.attn.k_proj, b.attn.v_proj, b.mlp))
    fused = fused.to(device)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 45, 3, generator=g, dtype=torch.float64)
    mask = torch.arange(45)[None, :] < torch.tensor([[45], [29]])
    dy = torch.randn(2, 45, 2, generator=g, dtype=torch.float64) * mask[..., None]
    y = plain(x, mask)
    y_fused = fused(x.float().to(device), mask.to(device))
    rows = mask[..., None]
    assert ((y_fused.double().cpu() - y) * rows).norm() / (y * rows).norm() < 1e-5
    grads = torch.autograd.grad(y, list(plain.parameters()), dy)
    grads_fused = torch.autograd.grad(y_fused, list(fused.parameters()), dy.float().to(device))
    names = [n for n, _ in plain.named_parameters()]
    worst = max(((a.double().cpu() - b).norm() / b.norm()).item() for a, b in zip(grads_fused, grads))
    assert worst < 1e-3, dict(zip(names, [((a.double().cpu() - b).norm() / b.norm()).item()
                                          for a, b in zip(grads_fused, grads)]))


def test_flare_triton_mlps_chunked_evaluation(tmlp, device):
    """The point-chunked evaluation runs the fused kernels too and equals the whole forward."""
    plain, fused = flare_pair(1, eval_chunk_size=16)
    fused = fused.to(device).eval()
    x = torch.randn(2, 45, 3, dtype=torch.float64)
    mask = torch.arange(45)[None, :] < torch.tensor([[45], [29]])
    with torch.no_grad():
        whole = plain.eval()(x, mask)
        chunked = fused(x.float().to(device), mask.to(device))
    rows = mask[..., None]
    assert ((chunked.double().cpu() - whole) * rows).norm() / (whole * rows).norm() < 1e-5


def test_compiled_block_has_no_graph_break(tmlp, device):
    _, fused = flare_pair(2)
    block = fused.blocks[0].to(device)
    x = torch.randn(2, 37, 16, device=device, requires_grad=True)
    expected = block(x)
    (g_expected,) = torch.autograd.grad(expected.square().sum(), x)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="inductor" if HAS_CUDA else "aot_eager")
    out = compiled(x)
    (g_out,) = torch.autograd.grad(out.square().sum(), x)
    for got, want in ((out, expected), (g_out, g_expected)):  # Inductor may reassociate fp32 sums
        assert ((got - want).norm() / want.norm()).item() < 1e-4


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"norm": "rmsnorm"}, "LayerNorm"),
        ({"mlp_ratio": 2.0}, "feed-forward MLP: in, hidden and out widths"),
        ({"channels": 24, "num_heads": 2}, "width must be one of"),
        ({"mlp_backend": "cuda"}, "mlp_backend must be one of"),
        ({"mlp_backend": "torch", "mlp_store_hidden": True}, "mlp_store_hidden applies to the fused MLP kernels"),
    ],
)
def test_refusals_name_the_option(kw, match):
    kw = {"in_dim": 3, "out_dim": 1, "channels": 16, "num_blocks": 1, "num_heads": 2, "num_latents": 4,
          "mlp_backend": "triton", **kw}
    with pytest.raises(ValueError, match=match):
        FLARE(**kw)


def test_auto_runs_torch_mlps_on_cpu():
    """``auto`` keeps the plain layers on the CPU (the fused path is for CUDA)."""
    model = FLARE(in_dim=3, out_dim=1, channels=16, num_blocks=1, num_heads=2, num_latents=4, mlp_backend="auto")
    assert not model.blocks[0].fused(torch.zeros(1, 4, 16))


@pytest.mark.parametrize("setting, expected", [("highest", "ieee"), ("high", "tf32"), ("medium", "tf32")])
def test_fp32_dots_follow_the_matmul_precision(setting, expected):
    """The Triton paths (the fused MLP and the mixer) take fp32 dots at PyTorch's fp32 matmul
    precision: exact under ``highest``, TF32 under ``high`` (``--float32_matmul_precision``)."""
    from flare_lightning.kernels.dot_precision import input_precision

    with float32_matmul_precision(setting):
        assert input_precision(torch.float32) == expected
        assert input_precision(torch.bfloat16) == "tf32"  # 16-bit operands: the setting does not apply
