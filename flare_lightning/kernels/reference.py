"""Plain PyTorch formulations of the FLARE token mixer.

The mixer routes N tokens through M latent queries per head:
``z = softmax_N(s q kᵀ) v`` (encode) and ``y = softmax_M(s k qᵀ) z`` (decode).
``explicit`` materialises the weights (the ground truth, and what analysis needs);
``sdpa`` is the paper's two fused ``scaled_dot_product_attention`` calls.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from flare_lightning.kernels.mixer_math import latent_logits, mask_keys


def check_mixer_inputs(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
    """Fail early, naming the argument, when mixer inputs have inconsistent shapes."""
    if q.dim() != 3 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"FLARE mixer expects q [H, M, D], k and v [B, H, N, D]; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(f"FLARE mixer: k {tuple(k.shape)} and v {tuple(v.shape)} must match")
    if q.shape[0] != k.shape[1] or q.shape[2] != k.shape[3]:
        raise ValueError(
            f"FLARE mixer: q {tuple(q.shape)} must be [H, M, D] with H={k.shape[1]}, D={k.shape[3]}"
        )
    if mask is not None and (mask.dtype != torch.bool or mask.shape != (k.shape[0], k.shape[2])):
        raise ValueError(
            f"FLARE mixer: mask must be bool [B, N] = {(k.shape[0], k.shape[2])}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )


def flare_weights(
    q: Tensor, k: Tensor, mask: Tensor | None = None, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Encode and decode weights of one mixer.

    Args:
        q: latent queries [H, M, D].
        k: keys [B, H, N, D].
        mask: [B, N] bool, True on real points; padded keys get zero encode weight.
        scale: logit scale s (the paper uses 1.0).

    Returns:
        ``W_enc`` [B, H, M, N] (softmax over points) and ``W_dec`` [B, H, N, M]
        (softmax over latents); ``W_dec @ W_enc`` is the [N, N] token mixing.
    """
    logits = latent_logits(q, k, scale)  # [B, H, M, N]
    w_enc = torch.softmax(mask_keys(logits, mask), dim=-1)
    w_dec = torch.softmax(logits.transpose(-1, -2), dim=-1)  # [B, H, N, M]
    return w_enc, w_dec


def flare_mix_explicit(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float = 1.0
) -> Tensor:
    """FLARE mixer with materialised weights; returns y [B, H, N, D]."""
    check_mixer_inputs(q, k, v, mask)
    w_enc, w_dec = flare_weights(q, k, mask, scale)
    z = w_enc @ v  # [B, H, M, D]
    return w_dec @ z


def flare_mix_sdpa(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float = 1.0
) -> Tensor:
    """The paper's formulation: two ``scaled_dot_product_attention`` calls.

    In half precision without a mask the flash backend is forced, since the
    memory-efficient one PyTorch would otherwise pick is an order of magnitude slower
    at N = 1M. A mask rules flash out (it takes no mask), so SDPA chooses then.
    """
    check_mixer_inputs(q, k, v, mask)
    batch = k.shape[0]
    latents = q.unsqueeze(0).expand(batch, -1, -1, -1)  # [B, H, M, D]
    enc_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, N]
    use_flash = mask is None and k.is_cuda and k.dtype in (torch.float16, torch.bfloat16)
    with flash_only(use_flash):
        z = F.scaled_dot_product_attention(latents, k, v, attn_mask=enc_mask, scale=scale)
        return F.scaled_dot_product_attention(k, latents, z, scale=scale)


def flash_only(enabled: bool):
    """Context forcing the flash SDPA kernel when ``enabled`` (half precision, no mask), else
    leaving PyTorch's choice."""
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION]) if enabled else nullcontext()
