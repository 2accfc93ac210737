"""Activation checkpointing and point-chunked MLPs change memory, never results:
outputs and gradients equal those of the plain model."""

from __future__ import annotations

import pytest
import torch

from flare_lightning.models import FLARE, ResidualMLP
from flare_lightning.models.checkpointing import apply_in_chunks


def small_flare(**kwargs) -> FLARE:
    torch.manual_seed(0)
    return FLARE(3, 2, channels=16, num_blocks=2, num_heads=4, num_latents=8, mixer_backend="explicit", **kwargs)


def batch(n: int = 37, masked: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(1)
    x = torch.randn(2, n, 3, dtype=torch.float64)
    if not masked:
        return x, None
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, n - 11 :] = False  # sample 1 is padded
    return x, mask


def outputs_and_grads(model: FLARE, x: torch.Tensor, mask: torch.Tensor | None):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = model(x, mask)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    real = torch.ones_like(out) if mask is None else mask[..., None].to(out.dtype)
    (out * weight * real).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out.detach(), x.grad, grads


def assert_same(ref, other, mask) -> None:
    keep = slice(None) if mask is None else mask
    torch.testing.assert_close(other[0][keep], ref[0][keep], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(other[1], ref[1], rtol=1e-12, atol=1e-12)
    for name, grad in ref[2].items():
        torch.testing.assert_close(other[2][name], grad, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(
    "options",
    [dict(checkpoint_blocks=True), dict(mlp_chunk_size=8), dict(checkpoint_blocks=True, mlp_chunk_size=5)],
    ids=["blocks", "chunked_mlp", "both"],
)
def test_memory_options_give_identical_outputs_and_gradients(options, masked):
    x, mask = batch(masked=masked)
    ref = outputs_and_grads(small_flare().double(), x, mask)
    other = small_flare(**options).double()
    assert_same(ref, outputs_and_grads(other, x, mask), mask)


def test_memory_options_keep_parameters_and_state_dict_keys():
    plain = FLARE(2, 1, 64, 8, 8, 64)
    saving = FLARE(2, 1, 64, 8, 8, 64, checkpoint_blocks=True, mlp_chunk_size=4096, eval_chunk_size=65536)
    assert sum(p.numel() for p in saving.parameters()) == 592_641
    assert list(saving.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("chunk", [1, 4, 9, 100])
def test_chunked_mlp_equals_unchunked(chunk):
    torch.manual_seed(0)
    plain = ResidualMLP(6, 12, 6, num_layers=2).double()
    chunked = ResidualMLP(6, 12, 6, num_layers=2, chunk_size=chunk).double()
    chunked.load_state_dict(plain.state_dict())
    x = torch.randn(3, 9, 6, dtype=torch.float64, requires_grad=True)
    ref = plain(x)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    out = chunked(x)
    (g,) = torch.autograd.grad(out.square().sum(), x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)


def test_chunked_mlp_keeps_hidden_activations_for_one_chunk_only():
    """What autograd stores for backward: the chunked MLP keeps its input (the chunk
    boundaries) instead of every hidden activation of every point."""
    mlp = ResidualMLP(8, 64, 8, num_layers=3)
    x = torch.randn(1, 4096, 8, requires_grad=True)

    def stored_bytes(fn) -> int:
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x)
        return sum(sizes)

    plain = stored_bytes(mlp)
    mlp.chunk_size = 512
    chunked = stored_bytes(mlp)
    assert chunked < plain / 8, (chunked, plain)


def test_apply_in_chunks_rejects_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        apply_in_chunks(torch.nn.Identity(), torch.zeros(1, 4, 2), 0)
    with pytest.raises(ValueError, match="eval_chunk_size"):
        FLARE(2, 1, 8, 1, 2, 4, eval_chunk_size=0)
