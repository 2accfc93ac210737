"""Residual MLP against a hand-written float64 reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flare_lightning.models import ResidualMLP


def reference(mlp: ResidualMLP, x: torch.Tensor) -> torch.Tensor:
    act = lambda t: F.gelu(t, approximate="tanh")  # noqa: E731
    h = act(x @ mlp.fc_in.weight.T + mlp.fc_in.bias)
    if x.shape[-1] == h.shape[-1]:
        h = h + x
    for layer in mlp.hidden:
        h = h + act(h @ layer.weight.T + layer.bias)
    out = h @ mlp.fc_out.weight.T + mlp.fc_out.bias
    return out + h if out.shape[-1] == h.shape[-1] else out


def test_residual_paths_match_reference():
    for in_dim, out_dim in ((6, 6), (2, 6), (6, 1)):
        mlp = ResidualMLP(in_dim, 6, out_dim, num_layers=2).double()
        x = torch.randn(4, 9, in_dim, dtype=torch.float64)
        torch.testing.assert_close(mlp(x), reference(mlp, x), rtol=1e-12, atol=1e-12)
        assert mlp.input_residual == (in_dim == 6) and mlp.output_residual == (out_dim == 6)
