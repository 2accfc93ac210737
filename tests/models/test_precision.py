"""``FLARE(fp32_parts=...)``: the named parts keep float32 under bf16 autocast, the others
do not, and with every part named autocast changes nothing (against a float64 reference)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from flare_lightning.kernels.dispatch import mixer_dtype
from flare_lightning.models import FLARE
from flare_lightning.models import attention as attention_module
from flare_lightning.models.precision import FP32_PARTS
from tests.helpers import CONFIGS, tiny_trainer_args

ALL = sorted(FP32_PARTS)


def model(parts, seed: int = 0, **kw) -> FLARE:
    """A small FLARE with O(1) weights (so bf16 rounding shows in every part)."""
    torch.manual_seed(seed)
    args = dict(in_dim=3, out_dim=2, channels=16, num_blocks=2, num_heads=2, num_latents=8, fp32_parts=parts)
    m = FLARE(**(args | kw))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.4)
    return m


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def outputs_and_grads(m: FLARE, x: torch.Tensor, autocast: bool) -> list[torch.Tensor]:
    m.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = m(x)
    (y.float() ** 2).mean().backward()
    return [y.detach(), *(p.grad for p in m.parameters())]


def test_every_part_in_fp32_makes_autocast_a_no_op():
    x = torch.randn(2, 40, 3, dtype=torch.float64)
    reference = outputs_and_grads(model(ALL).double(), x, autocast=False)
    exact = outputs_and_grads(model(ALL), x.float(), autocast=True)
    plain_fp32 = outputs_and_grads(model(None), x.float(), autocast=False)
    bf16 = outputs_and_grads(model(None), x.float(), autocast=True)
    assert exact[0].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(exact, plain_fp32))  # the same float32 computation
    assert max(rel(a, r) for a, r in zip(exact, reference)) < 1e-4  # output and every gradient
    assert rel(bf16[0], reference[0]) > 1e-3  # the check can tell bf16 from fp32


@pytest.mark.parametrize("part", ALL)
def test_each_part_runs_in_fp32_and_the_others_in_bf16(part):
    m = model([part])
    seen: dict[str, torch.dtype] = {}
    # each part's GEMMs (a Linear's output dtype), the stream between blocks, the mixer's compute dtype
    watched = {"lift": m.lift.fc_out, "kv": m.blocks[0].attn.k_proj.fc_out, "ffn": m.blocks[1].mlp.fc_out,
               "head": m.head.fc_out, "residual": m.blocks[0]}
    for name, module in watched.items():
        module.register_forward_hook(lambda mod, args, out, name=name: seen.update({name: out.dtype}) and None)
    real_mix = attention_module._mix

    def mix(q, k, v, *args):
        seen.setdefault("mixer", mixer_dtype(k))
        return real_mix(q, k, v, *args)

    with mock.patch.object(attention_module, "_mix", mix), torch.autocast("cpu", dtype=torch.bfloat16):
        m(torch.randn(1, 24, 3))
    in_fp32 = {name for name, dtype in seen.items() if dtype == torch.float32}
    assert in_fp32 == {part}, seen


def test_chunked_evaluation_keeps_the_parts():
    m = model(ALL).eval()
    x = torch.randn(2, 50, 3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole = m(x)
        m.eval_chunk_size = 16
        chunked = m(x)
    assert chunked.dtype == torch.float32 and rel(chunked, whole) < 1e-5


def test_no_effect_without_autocast():
    x = torch.randn(2, 30, 3)
    assert torch.equal(model(ALL)(x), model(None)(x))


@pytest.mark.parametrize("parts", [["attention"], ["mixer", "kvv"], "everything"])
def test_unknown_part_is_refused_naming_the_option(parts):
    with pytest.raises(ValueError, match="fp32_parts has unknown part"):
        FLARE(3, 1, channels=16, num_heads=2, fp32_parts=parts)


def test_parts_are_chosen_from_the_cli(tmp_path):
    from flare_lightning.cli import make_cli

    args = [f"--config={CONFIGS / 'quickstart.yaml'}", *tiny_trainer_args(tmp_path),
            "--model.model.init_args.fp32_parts=[residual, mixer]"]
    with mock.patch("sys.argv", ["flare"]):
        cli = make_cli(args, run=False)
    assert cli.model.model.fp32 == {"residual", "mixer"}
    with mock.patch("sys.argv", ["flare"]), pytest.raises(SystemExit):
        make_cli([*args[:-1], "--model.model.init_args.fp32_parts=[softmax]"], run=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_part_in_fp32_on_the_gpu_kernels():
    """The Triton mixer and the fused MLPs given float32 under autocast (true fp32 dots)."""
    x = torch.randn(2, 300, 3, dtype=torch.float64, device="cuda")
    reference = model(ALL, mixer_backend="explicit", mlp_backend="torch").double().cuda()(x)
    fast = model(ALL, mixer_backend="auto", mlp_backend="auto").cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = fast(x.float())
    assert y.dtype == torch.float32 and rel(y, reference) < 1e-4
    with torch.autocast("cuda", dtype=torch.bfloat16):
        low = model(None, mixer_backend="auto", mlp_backend="auto").cuda()(x.float())
    assert rel(low, reference) > 1e-3
