"""``torch.compile`` as a model option: compiled in place, so parameter names and
checkpoints are those of the plain model (no ``_orig_mod.`` prefix), and a compiled
model's checkpoint loads into an uncompiled one with the same outputs."""

from __future__ import annotations

import shutil

import pytest
import torch

from flare_lightning.models.compile import strip_compiled_prefix
from flare_lightning.models import FLARE
from flare_lightning.training.module import SurrogateModule

TINY = dict(channels=8, num_blocks=1, num_heads=2, num_latents=4, kv_layers=1, ffn_layers=1, io_layers=1,
            mixer_backend="sdpa")


@pytest.mark.skipif(not (shutil.which("gcc") or shutil.which("cc")), reason="inductor needs a C compiler")
def test_compiled_checkpoint_loads_into_uncompiled_model(tmp_path):
    torch.manual_seed(0)
    compiled = SurrogateModule(FLARE(3, 1, compile=True, **TINY), 3, 1)
    compiled.input_norm.set_stats(torch.zeros(3), torch.ones(3))
    compiled.target_norm.set_stats(torch.zeros(1), torch.ones(1))
    x = torch.randn(1, 24, 3)
    with torch.no_grad():
        expected = compiled(x)  # runs the compiled blocks
    assert compiled.model.blocks[0]._compiled_call_impl is not None
    state = compiled.state_dict()
    assert not [k for k in state if "_orig_mod" in k]
    torch.save({"state_dict": state}, tmp_path / "compiled.ckpt")

    plain = SurrogateModule(FLARE(3, 1, **TINY), 3, 1)
    plain.load_state_dict(torch.load(tmp_path / "compiled.ckpt", weights_only=True)["state_dict"])
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-6)


def test_state_dict_of_torch_compile_wrapper_can_be_stripped():
    torch.manual_seed(0)
    plain = FLARE(3, 1, **TINY)
    wrapped = torch.compile(plain)  # never called: no compilation happens
    keys = list(wrapped.state_dict())
    assert keys[0].startswith("_orig_mod.")
    other = FLARE(3, 1, **TINY)
    other.load_state_dict(strip_compiled_prefix(wrapped.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), plain.state_dict().values()))


@pytest.mark.skipif(not (shutil.which("gcc") or shutil.which("cc")), reason="inductor needs a C compiler")
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_every_part_compile_names_runs_compiled(norm):
    """The lifting, each block, the output norm and the head each run as a compiled graph. A norm
    whose forward is torch.nn's stayed eager under ``nn.Module.compile()`` (an ATen LayerNorm in
    the compiled 1M step); the project's own norms compile."""
    torch.manual_seed(0)
    model = FLARE(3, 1, compile=True, norm=norm, **TINY)
    x = torch.randn(1, 24, 3)
    h = model.lift(x)
    parts = {"lift": h, "blocks.0": model.blocks[0](h, None)}
    parts["norm_out"] = model.norm_out(h)
    parts["head"] = model.head(parts["norm_out"])
    eager = {name: type(out.grad_fn).__name__ for name, out in parts.items()
             if type(out.grad_fn).__name__ != "CompiledFunctionBackward"}
    assert not eager, f"parts that ran eagerly: {eager}"
