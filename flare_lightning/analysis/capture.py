"""Capture what each FLARE mixer sees during a forward pass, to rebuild its weights at
analysis precision (fp64) whatever precision the model runs in."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flare_lightning.kernels.reference import flare_weights
from flare_lightning.models.attention import FlareAttention


@dataclass
class MixerKeys:
    """The inputs of one FLARE mixer for a batch: enough to rebuild its weights.

    Attributes:
        latents: latent queries [H, M, D].
        keys: keys [B, H, N, D] in the model's dtype.
        mask: [B, N] bool (True on real points) or None.
        scale: logit scale of the mixer.
    """

    latents: Tensor
    keys: Tensor
    mask: Tensor | None
    scale: float

    @property
    def batch_size(self) -> int:
        return self.keys.shape[0]

    def num_points(self, sample: int) -> int:
        """Real points of one sample."""
        if self.mask is None:
            return self.keys.shape[2]
        return int(self.mask[sample].sum())

    def weights(self, sample: int | None = None, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        """``W_enc`` and ``W_dec`` computed in ``dtype``.

        Args:
            sample: if given, only that sample on its real points: [H, M, n] and [H, n, M];
                otherwise the whole padded batch: [B, H, M, N] and [B, H, N, M] (padded keys
                get zero encode weight; padded rows of ``W_dec`` are left as computed).
            dtype: precision of the logits and softmaxes.
        """
        q = self.latents.to(dtype)
        if sample is None:
            return flare_weights(q, self.keys.to(dtype), self.mask, self.scale)
        k = self.keys[sample : sample + 1]  # [1, H, N, D]
        if self.mask is not None:
            k = k[:, :, self.mask[sample]]
        w_enc, w_dec = flare_weights(q, k.to(dtype), None, self.scale)
        return w_enc[0], w_dec[0]


@torch.no_grad()
def capture_keys(model: nn.Module, x: Tensor, mask: Tensor | None = None) -> list[MixerKeys]:
    """Run ``model(x, mask)`` once in eval mode; return, per ``FlareAttention`` in call order,
    the keys it computed.

    Args:
        model: any module called as ``model(x, mask)`` that contains ``FlareAttention``
            layers: ``FLARE`` (normalised inputs) or ``SurrogateModule`` (raw inputs).
        x: inputs [B, N, in_dim].
        mask: [B, N] bool, True on real points.
    """
    captured: list[MixerKeys] = []

    def hook(attn: FlareAttention, args: tuple, kwargs: dict) -> None:
        h = args[0] if args else kwargs["x"]  # [B, N, C]
        m = args[1] if len(args) > 1 else kwargs.get("mask")
        k = attn.keys(h, kwargs.get("norm"), kwargs.get("fused", False))  # [B, H, N, D]
        captured.append(MixerKeys(attn.latents.detach(), k, m, float(attn.scale)))

    layers = [m for m in model.modules() if isinstance(m, FlareAttention)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no FlareAttention layer to analyse")
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in layers]
    # Chunked evaluation bypasses FlareAttention.forward; the analysis needs whole mixers.
    chunked = {m: m.eval_chunk_size for m in model.modules() if getattr(m, "eval_chunk_size", None) is not None}
    was_training = model.training
    try:
        model.eval()
        for m in chunked:
            m.eval_chunk_size = None
        model(x, mask)
    finally:
        for handle in handles:
            handle.remove()
        for m, size in chunked.items():
            m.eval_chunk_size = size
        model.train(was_training)
    if len(captured) != len(layers):
        raise RuntimeError(
            f"{type(model).__name__}: {len(captured)} of its {len(layers)} FlareAttention layers ran their "
            "forward; capture_keys needs each mixer called once as attn(x, mask)"
        )
    return captured


def latent_attention_maps(
    model: nn.Module, x: Tensor, mask: Tensor | None = None, sample: int = 0
) -> list[Tensor]:
    """Latent-to-point maps ``W_enc`` of one sample, per block: [H, M, n] on its real points,
    in fp64; row ``(h, m)`` is where latent m of head h gathers its information from."""
    return [keys.weights(sample)[0] for keys in capture_keys(model, x, mask)]
