"""The fused residual MLP (Triton) against the plain PyTorch ``ResidualMLP`` in float64: the forward
and every gradient (input, weights, biases, LayerNorm, residual) on fresh random inputs with a row
count that is not a multiple of the tile, fp32 and bf16; ``FLARE(mlp_backend='triton')`` against
``'torch'`` (masked, chunked evaluation); the custom op under ``opcheck`` and ``torch.compile``; and
the refusals. The backward's variants (kept layer inputs, segments, the split backward):
test_fused_mlp_backward.py. Interpreted kernels without CUDA.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.conftest import float32_matmul_precision, needs_tf32

pytest.importorskip("triton")
# The interpreter's numpy sigmoid overflows exp(-a) for large |a| (the result, 0 or 1, is right).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")

from flare_lightning.models import FLARE  # noqa: E402
from tests.kernels.fused_mlp_cases import CASES, assert_compiles_like_eager, fused_errors  # noqa: E402


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
    """Under bf16 autocast the dots run in bf16 (fp32 sums): bf16-level errors, far from wrong.
    Under fp16 autocast (16-mixed) they run in fp16, whose 3 more mantissa bits show: at least 4x
    smaller errors on the same inputs (8x in rounding), still above fp32's."""
    errors = {}
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast(device.type, dtype=dtype):
            errors[dtype] = fused_errors(tmlp, device, 32, 3, "gelu_tanh", True, True, torch.float32, seed=11)
    bf16, fp16 = (max(errors[d].values()) for d in (torch.bfloat16, torch.float16))
    assert 1e-5 < bf16 < 3e-2, errors
    assert 1e-6 < fp16 < bf16 / 4, errors


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


def assert_matches_plain(plain: FLARE, fused: FLARE, device: torch.device, seed: int, n: int = 45,
                         short: int = 29) -> None:
    """A masked batch of two (n and ``short`` real points): the fused model's outputs on real points
    (1e-5) and every parameter's gradient (1e-3) against the float64 plain one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, n, 3, generator=g, dtype=torch.float64)
    mask = torch.arange(n)[None, :] < torch.tensor([[n], [short]])
    dy = torch.randn(2, n, 2, generator=g, dtype=torch.float64) * mask[..., None]
    y = plain(x, mask)
    y_fused = fused(x.float().to(device), mask.to(device))
    rows = mask[..., None]
    assert ((y_fused.double().cpu() - y) * rows).norm() / (y * rows).norm() < 1e-5
    grads = torch.autograd.grad(y, list(plain.parameters()), dy)
    grads_fused = torch.autograd.grad(y_fused, list(fused.parameters()), dy.float().to(device))
    errors = {name: ((a.double().cpu() - b).norm() / b.norm()).item()
              for (name, _), a, b in zip(plain.named_parameters(), grads_fused, grads)}
    assert max(errors.values()) < 1e-3, errors


@pytest.mark.parametrize("store_hidden", [False, True], ids=["recompute", "stored"])
def test_flare_triton_mlps_match_torch_mlps(tmlp, device, store_hidden):
    """Whole model, masked: outputs on real points and every parameter's gradient, with the
    fused backward recomputing the layer chains or reading what the forward kept."""
    plain, fused = flare_pair(0, store_hidden)
    assert all(m.store_hidden == store_hidden for b in fused.blocks for m in (b.attn.k_proj, b.attn.v_proj, b.mlp))
    assert_matches_plain(plain, fused.to(device), device, seed=3)


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
    assert_compiles_like_eager(fused.blocks[0].to(device), torch.randn(2, 37, 16, device=device))


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
