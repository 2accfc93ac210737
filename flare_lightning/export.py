"""``flare export``: a trained checkpoint as a self-contained model file (``torch.export`` or
ONNX) mapping raw points to de-normalised fields, for programs without this package."""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from flare_lightning import compat
from flare_lightning.atomic import atomic_path
from flare_lightning.models.attention import FlareAttention
from flare_lightning.runs.loading import module_from_checkpoint
from flare_lightning.training.module import SurrogateModule

FORMATS = {"torch_export": ".pt2", "onnx": ".onnx"}
EXPORT_BACKENDS = ("sdpa", "explicit")  # plain PyTorch mixers; the Triton kernels do not export
# Largest accepted difference of the exported model from the module, relative to (1 + its largest
# output): float32 rounding of another mixer backend is ~1e-6.
EXPORT_TOLERANCE = 1e-4


class ExportedSurrogate(nn.Module):
    """``x [B, N, in_dim]`` raw inputs (coordinates, then input fields; every point real) ->
    ``[B, N, out_dim]`` in the targets' units: the checkpoint's normalisation is folded in,
    and the mixer runs on a plain-PyTorch backend with the same weights.

    Args:
        module: the trained module (statistics fitted).
        mixer_backend: ``sdpa`` or ``explicit``.
    """

    def __init__(self, module: SurrogateModule, mixer_backend: str = "sdpa") -> None:
        super().__init__()
        if mixer_backend not in EXPORT_BACKENDS:
            raise ValueError(f"export: mixer_backend must be one of {EXPORT_BACKENDS}, got {mixer_backend!r}")
        if not bool(module.input_norm.fitted):
            raise ValueError("export: the checkpoint has no fitted normalisation statistics (train first)")
        self.model = copy.deepcopy(module.model).float().eval()
        for name in ("eval_chunk_size", "checkpoint_blocks"):  # data-dependent branches do not export
            if hasattr(self.model, name):
                setattr(self.model, name, None if name == "eval_chunk_size" else False)
        for sub in self.model.modules():
            compat.drop_compiled_call(sub)  # FLARE(compile=True) compiles in place; export traces eagerly
            if isinstance(sub, FlareAttention):
                sub.mixer_backend = mixer_backend
            if hasattr(sub, "chunk_size"):
                sub.chunk_size = None
        for name, norm in (("input", module.input_norm), ("target", module.target_norm)):
            self.register_buffer(f"{name}_mean", norm.mean.detach().float().clone())
            self.register_buffer(f"{name}_std", norm.std.detach().float().clone())

    def forward(self, x: Tensor) -> Tensor:
        out = self.model((x - self.input_mean) / self.input_std)
        return out.float() * self.target_std + self.target_mean


def example_inputs(module: SurrogateModule, points: int = 64, seed: int = 0, batch: int = 2) -> Tensor:
    """Random raw inputs [batch, points, in_dim] spread like the training data (mean ± 2 std)."""
    gen = torch.Generator().manual_seed(seed)
    norm = module.input_norm
    u = torch.rand(batch, points, norm.mean.numel(), generator=gen) * 4 - 2
    return norm.mean + u * norm.std


def export_model(
    module: SurrogateModule, path: str | Path, fmt: str = "torch_export", mixer_backend: str = "sdpa"
) -> tuple[Path, float]:
    """Write ``module`` as a ``.pt2`` (``torch.export.save``) or ``.onnx`` file with a dynamic
    number of points (and batch size), and its largest difference from the module on 97 random
    points. The file is checked before it is renamed into place: a model whose outputs are not
    finite or differ from the module's (beyond float32 rounding) is refused and not written."""
    if fmt not in FORMATS:
        raise ValueError(f"export: format must be one of {sorted(FORMATS)}, got {fmt!r}")
    wrapper = ExportedSurrogate(module.cpu(), mixer_backend).eval()
    x = example_inputs(module)
    dims = {"x": {0: torch.export.Dim("batch", max=1024), 1: torch.export.Dim("points", min=2)}}
    path = Path(path)
    with atomic_path(path, suffix=FORMATS[fmt]) as tmp, torch.no_grad():
        if fmt == "torch_export":
            torch.export.save(torch.export.export(wrapper, (x,), dynamic_shapes=dims), tmp)
        else:
            torch.onnx.export(wrapper, (x,), tmp, dynamo=True, dynamic_shapes=dims, input_names=["x"],
                              output_names=["y"], external_data=False)
        probe = example_inputs(module, points=97, seed=1)
        want, got = module(probe), run_exported(tmp, probe)
        diff = (got - want).abs().max().item()
        scale = want.abs().max().item()
        if not (math.isfinite(diff) and math.isfinite(scale) and diff <= EXPORT_TOLERANCE * (1.0 + scale)):
            raise ValueError(
                f"export: the exported model differs from the checkpoint by {diff:.3g} (outputs up to {scale:.3g}) on "
                f"random inputs; {path} was not written"
            )
    return path, diff


def run_exported(path: str | Path, x: Tensor) -> Tensor:
    """Evaluate an exported file on x [B, N, in_dim] (onnxruntime for ``.onnx``)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    program = torch.export.load(str(path))
    with torch.no_grad():
        return program.module()(x)


def export_main(argv: list[str] | None = None) -> Path:
    """``flare export --ckpt_path CKPT --format torch_export|onnx [--output FILE]``."""
    parser = argparse.ArgumentParser(prog="flare export", description=__doc__)
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by flare fit")
    parser.add_argument("--format", default="torch_export", choices=sorted(FORMATS))
    parser.add_argument("--output", help="output file (default: next to the checkpoint, <stem>.pt2|.onnx)")
    parser.add_argument("--mixer_backend", default="sdpa", choices=EXPORT_BACKENDS,
                        help="plain-PyTorch mixer used in the exported graph (same weights)")
    args = parser.parse_args(argv)
    ckpt = Path(args.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"flare export: --ckpt_path {ckpt} is not a file")
    module = module_from_checkpoint(ckpt)  # checked: finite weights, usable statistics, trusted classes
    output = Path(args.output) if args.output else ckpt.with_suffix(FORMATS[args.format])
    path, diff = export_model(module, output, args.format, args.mixer_backend)
    print(f"wrote {path} ({args.format}); max difference from the checkpoint on 97 random points: {diff:.2e}")
    return path
