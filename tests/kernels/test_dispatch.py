"""Backend selection through ``mixer_backend`` and gradients to the latents."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from flare_lightning.kernels import BACKENDS, flare_mix, resolve_backend
from tests.kernels.conftest import HAS_CUDA, random_mixer_inputs


def test_backend_names():
    assert BACKENDS == ("auto", "triton", "chunked", "sdpa", "explicit")
    with pytest.raises(ValueError, match="mixer_backend"):
        resolve_backend("flash", torch.zeros(1, 1, 1, 1))


def test_auto_on_cpu_is_chunked():
    assert resolve_backend("auto", torch.zeros(1, 1, 4, 8)) == "chunked"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_auto_on_cuda_is_triton():
    assert resolve_backend("auto", torch.zeros(1, 1, 4, 8, device="cuda")) == "triton"


def test_import_without_triton():
    """Triton is optional: the package imports and ``auto`` falls back without it."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, flare_lightning\n"
        "from flare_lightning.kernels import resolve_backend, triton_available\n"
        "assert not triton_available()\n"
        "assert resolve_backend('auto', torch.zeros(1, 1, 4, 8)) == 'chunked'\n"
        "try:\n    resolve_backend('triton', torch.zeros(1, 1, 4, 8))\n"
        "except RuntimeError as e:\n    assert 'triton' in str(e)\n"
        "else:\n    raise AssertionError('triton backend accepted without triton')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_triton_lookup_under_torch_compile_warns_nothing():
    """``auto`` is resolved inside compiled blocks, where CUDA keys look Triton up: tracing that lookup
    must not warn (an ``lru_cache`` there put dynamo's "ignores the cache wrapper" warning in every
    compiled GPU fit's log)."""
    import warnings

    from flare_lightning.kernels import triton_available

    fn = torch.compile(lambda k: k * 2 if triton_available() else k, backend="eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(torch.ones(1, 1, 4, 8))
    assert torch.equal(out, torch.full((1, 1, 4, 8), 2.0 if triton_available() else 1.0))
    assert not [w for w in caught if "cache" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.parametrize("backend", ["explicit", "sdpa", "chunked", "triton", "auto"])
def test_backends_agree_and_reach_fp32_latents(backend, tm, device):
    """An fp32 latent parameter with bf16 keys (autocast) gets its gradient through the cast."""
    q, k, v, dy, mask = random_mixer_inputs(2, 2, 96, 24, 8, True, seed=5)
    latents = torch.nn.Parameter(q.float().to(device))
    k, v, dy, mask = (t.to(device) for t in (k, v, dy, mask))
    y = flare_mix(latents, k.bfloat16(), v.bfloat16(), mask, 1.0, backend)
    assert y.dtype == torch.bfloat16
    y.backward(dy.bfloat16())
    assert latents.grad is not None and latents.grad.dtype == torch.float32
    ref = torch.nn.Parameter(q.to(device))
    y_ref = flare_mix(ref, k.bfloat16().double(), v.bfloat16().double(), mask, 1.0, "explicit")
    y_ref.backward(dy.bfloat16().double())
    rows = mask[:, None, :, None]
    assert ((y.double() - y_ref) * rows).norm() / (y_ref * rows).norm() < 2e-2
    assert (latents.grad.double() - ref.grad).norm() / ref.grad.norm() < 2e-2


@pytest.mark.parametrize("backend", ["explicit", "sdpa", "chunked"])
def test_autocast_sets_the_compute_dtype(backend):
    """Under autocast k and v arrive in float32 (LayerNorm and residuals stay fp32); the
    mixer must still compute in autocast's dtype, as SDPA does, not at full precision."""
    from flare_lightning.kernels import flare_mix
    from flare_lightning.kernels.dispatch import mixer_dtype

    q = torch.randn(2, 4, 8, requires_grad=True)
    k, v = torch.randn(2, 1, 2, 16, 8).unbind(0)
    assert mixer_dtype(k) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mixer_dtype(k) == torch.bfloat16
        y = flare_mix(q, k, v, None, 1.0, backend)
    assert y.dtype == torch.bfloat16
    want = flare_mix(q.double(), k.double(), v.double(), None, 1.0, "explicit")
    assert ((y.double() - want).norm() / want.norm()).item() < 2e-2
    y.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.float32
