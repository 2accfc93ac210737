"""The Triton mixer as a custom op: schema, fake (meta) implementation and autograd pass
``torch.library.opcheck``, and ``torch.compile`` traces a FLARE attention layer through it
with no graph break, giving the eager result (interpreted kernels without CUDA)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.conftest import HAS_CUDA, random_mixer_inputs

pytest.importorskip("triton")


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_opcheck(tm, device, masked):
    from flare_lightning.kernels.triton_op import mixer_fwd

    q, k, v, _, mask = random_mixer_inputs(2, 2, 40, 16, 8, masked, seed=3)
    args = [t.float().to(device).requires_grad_() for t in (q, k, v)]
    torch.library.opcheck(mixer_fwd, (*args, None if mask is None else mask.to(device), 0.7))


def test_compiled_attention_has_no_graph_break(tm, device):
    from flare_lightning.models.attention import FlareAttention

    torch.manual_seed(0)
    layer = FlareAttention(16, num_heads=2, num_latents=16, mixer_backend="triton").to(device)
    x = torch.randn(2, 37, 16, device=device, requires_grad=True)
    mask = torch.arange(37, device=device)[None, :] < torch.tensor([[37], [20]], device=device)
    expected = layer(x, mask)
    (g_expected,) = torch.autograd.grad(expected[mask].square().sum(), x)

    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="inductor" if HAS_CUDA else "aot_eager")
    out = compiled(x, mask)  # fullgraph=True raises on any graph break
    (g_out,) = torch.autograd.grad(out[mask].square().sum(), x)
    torch.testing.assert_close(out[mask], expected[mask], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_out, g_expected, rtol=1e-4, atol=1e-5)
