"""Kernel-test setup: on machines without CUDA the Triton kernels run in the interpreter.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, so it is set here,
before any test module imports ``flare_lightning.kernels.triton_mixer``;
``triton_mixer_module()`` reloads the kernels if something imported them earlier.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"


# Files here that run no kernel: the same on any machine, so CI's run is the whole check (the sm_90
# resource tables compile for a Hopper target on the CPU; on a lent GPU they would take 150 s of it).
HOST_ONLY = {"test_kernel_resources.py"}


def pytest_collection_modifyitems(config, items) -> None:
    """Every other test in this folder is a kernel test (``-m kernels``): scripts/gpu_tests.sh
    runs them on the GPU, where they check the compiled kernels instead of the interpreter."""
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here) and os.path.basename(str(item.fspath)) not in HOST_ONLY:
            item.add_marker(pytest.mark.kernels)


def _fix_interpreter() -> None:
    """Two test-only shims for Triton 3.6's interpreter (the GPU path is untouched).

    Loop bounds: scalars are 1-element arrays and ``int()`` on them fails under numpy
    >= 2.4 (triton-lang/triton#9171, fixed upstream in #9172). bfloat16 is held as raw
    uint16 bits: ``tl.dot`` multiplied them as integers (triton-lang/triton#11584), so the
    operands are widened to float32 first; and float32 -> bfloat16 casts truncated, where
    the GPU rounds to nearest even, which doubled the bf16 errors seen here.
    """
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    original_patch = interpreter._patch_lang_tensor
    if getattr(original_patch, "_flare_fixed", False):
        return

    def patch_lang_tensor(tensor, scope):
        original_patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(())))

    def widen(h):
        if h.dtype == tl.bfloat16:
            return interpreter.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return h

    original_dot = interpreter.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    original_cast = interpreter.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = src.data.astype(np.float32).view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            return interpreter.TensorHandle(rounded, tl.bfloat16)
        return original_cast(self, src, dst_type)

    patch_lang_tensor._flare_fixed = True
    interpreter._patch_lang_tensor = patch_lang_tensor
    interpreter.InterpreterBuilder.create_dot = create_dot
    interpreter.InterpreterBuilder.cast_impl = cast_impl


def triton_mixer_module():
    """``flare_lightning.kernels.triton_mixer``, interpreted when there is no CUDA."""
    pytest.importorskip("triton")
    from flare_lightning.kernels import triton_mixer

    if not HAS_CUDA:
        _fix_interpreter()
        if not triton_mixer.INTERPRETED:
            from flare_lightning.kernels import triton_mixer_bwd, triton_mixer_fwd

            importlib.reload(triton_mixer_fwd)
            importlib.reload(triton_mixer_bwd)
            triton_mixer = importlib.reload(triton_mixer)
    return triton_mixer


@pytest.fixture(scope="module")
def tmlp():
    """``flare_lightning.kernels.triton_mlp``, its kernels interpreted when there is no CUDA."""
    from flare_lightning.kernels import triton_mlp, triton_mlp_kernels

    if not HAS_CUDA:
        _fix_interpreter()
        if not triton_mlp.interpreted():
            importlib.reload(triton_mlp_kernels)
    return triton_mlp


@pytest.fixture
def pair(tmlp):
    """``triton_mlp_pair``, the key/value MLPs as one op (its kernels as ``tmlp``'s)."""
    from flare_lightning.kernels import triton_mlp_pair

    return triton_mlp_pair


@pytest.fixture
def proj(tmlp):
    """``triton_mlp_proj``, the output projection folded into the feed-forward (its kernels as ``tmlp``'s)."""
    from flare_lightning.kernels import triton_mlp_proj

    return triton_mlp_proj


@pytest.fixture(scope="session")
def tm():
    """The Triton mixer module (see ``triton_mixer_module``)."""
    return triton_mixer_module()


@pytest.fixture(scope="session")
def device() -> torch.device:
    """CUDA when present (full-speed kernels), else CPU (interpreter)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


def random_mixer_inputs(b, h, n, m, d, masked, seed):
    """float64 q [H, M, D], k, v, dy [B, H, N, D] and a mask of uneven lengths (or None).

    Sample 0 is full, the others keep between a third and all of the points; dy is zero
    on padded points, as a model whose loss ignores them would produce.
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(h, m, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    dy = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    mask = None
    if masked:
        lengths = torch.randint(max(1, n // 3), n + 1, (b,), generator=g)
        lengths[0] = n
        mask = torch.arange(n)[None, :] < lengths[:, None]  # [B, N]
        dy = dy * mask[:, None, :, None]
    return q, k, v, dy, mask


def mixer_errors(fn, b, h, n, m, d, dtype, device, masked, scale, seed=0):
    """Relative L2 errors of ``fn``'s y, dq, dk, dv against float64 ``flare_mix_explicit``.

    ``fn(q, k, v, mask, scale)`` gets inputs rounded to ``dtype`` on ``device``; the
    reference gets the same rounded values in float64, so only the arithmetic differs.
    y is compared on real points only (padded rows may hold anything finite).
    """
    from flare_lightning.kernels.reference import flare_mix_explicit

    q, k, v, dy, mask = random_mixer_inputs(b, h, n, m, d, masked, seed)
    mask_dev = None if mask is None else mask.to(device)
    ins = [t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v)]
    y = fn(*ins, mask_dev, scale)
    assert y.dtype == dtype and y.shape == k.shape
    assert torch.isfinite(y).all(), "non-finite output"
    grads = torch.autograd.grad(y, ins, dy.to(device=device, dtype=dtype))
    ref_in = [t.detach().to(torch.float64).requires_grad_() for t in ins]
    y_ref = flare_mix_explicit(*ref_in, mask_dev, scale)
    ref_grads = torch.autograd.grad(y_ref, ref_in, dy.to(device))
    rows = 1.0 if mask is None else mask_dev[:, None, :, None]

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    return {
        "y": rel(y * rows, y_ref * rows),
        "dq": rel(grads[0], ref_grads[0]),
        "dk": rel(grads[1], ref_grads[1]),
        "dv": rel(grads[2], ref_grads[2]),
    }


TOL = {torch.float32: 1e-4, torch.float64: 1e-10, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def assert_close_errors(errors: dict, dtype: torch.dtype, what: str) -> None:
    """All relative errors under the dtype's tolerance (fp32 1e-4, half 2e-2)."""
    bad = {k: v for k, v in errors.items() if not v < TOL[dtype]}
    assert not bad, f"{what} {dtype}: relative errors {errors} exceed {TOL[dtype]:g}"


@contextlib.contextmanager
def float32_matmul_precision(setting: str) -> Iterator[None]:
    """``torch.set_float32_matmul_precision(setting)`` inside the block, restored after."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


# In the interpreter a tf32 dot is an fp32 one, so only a GPU can tell the two precisions apart.
needs_tf32 = pytest.mark.skipif(not HAS_CUDA, reason="TF32 dots need a GPU (the interpreter computes them in fp32)")
