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


def test_opcheck_of_the_evaluation_halves(tm, device):
    from flare_lightning.kernels.triton_op import decode_eval, encode_eval

    q, k, v, _, mask = random_mixer_inputs(2, 2, 40, 16, 8, True, seed=4)
    q, k, v = (t.float().to(device) for t in (q, k, v))
    torch.library.opcheck(encode_eval, (q, k, v, mask.to(device), 0.7))
    torch.library.opcheck(encode_eval, (q, k, v, None, 1.3))
    z_lo = torch.randn(4, 16, 8, device=device)
    torch.library.opcheck(decode_eval, (q, z_lo, k, 0.7))
    torch.library.opcheck(decode_eval, (q, z_lo, k.transpose(1, 2).contiguous().transpose(1, 2), 0.7))  # strided k


def test_compiled_chunked_evaluation_traces_the_ops_and_equals_eager(tm, device):
    """A compiled evaluation in chunks (the 1M config's validation under the fast step) keeps the
    kernels behind the custom ops, with no graph break, and gives the eager chunked result.
    Before the ops, Inductor recompiled the encode itself and failed on its fp64 scale."""
    from flare_lightning.models import FLARE

    torch.manual_seed(0)
    net = FLARE(3, 2, channels=16, num_blocks=2, num_heads=4, num_latents=12, mixer_backend="triton",
                mlp_backend="torch", eval_chunk_size=16).to(device).eval()
    x = torch.randn(2, 45, 3, device=device)
    mask = (torch.arange(45)[None, :] < torch.tensor([[45], [29]])).to(device)
    with torch.no_grad():
        expected = net(x, mask)
        torch._dynamo.reset()
        compiled = torch.compile(net, fullgraph=True, backend="inductor" if HAS_CUDA else "aot_eager")
        out = compiled(x, mask)
    torch.testing.assert_close(out[mask], expected[mask], rtol=1e-4, atol=1e-5)
