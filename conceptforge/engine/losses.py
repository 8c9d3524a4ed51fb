"""The method's losses: masked diffusion loss (Eq. 3) and cross-attention loss (Eq. 4)."""

from __future__ import annotations

import torch

from .attention import normalize_max


def masked_diffusion_loss(pred: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of eps and eps_theta inside the union mask.

    pred, noise: (B, C, h, w); mask: (B, 1, h, w) in [0, 1] at latent size.
    """
    sq = (pred.float() - noise.float()) ** 2 * mask
    denom = mask.sum() * pred.shape[1]
    return sq.sum() / denom.clamp(min=1.0)


def attention_loss(maps: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between max-normalised attention maps and the concept masks.

    maps, masks: (B, K, h, w); valid: (B, K) weights of the tracked tokens.
    """
    per_token = ((normalize_max(maps.float()) - masks) ** 2).mean(dim=(-1, -2))
    if valid is None:
        return per_token.mean()
    return (per_token * valid).sum() / valid.sum().clamp(min=1.0)
