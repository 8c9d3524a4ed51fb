"""The method's objective: masked diffusion loss (Eq. 3), cross-attention loss
(Eq. 4) and the union of a sample's masks, in one function the trainer calls.

Two normalisations (setting `objective`):

- ``reference`` (SD-family default) is Break-a-Scene's `train.py`: the union of
  the sample's masks, downsampled to the latent by nearest neighbour, multiplies
  prediction and target, and the MSE is taken over the whole latent (not divided
  by the mask's area); the attention loss is, per sample, the sum over its
  concepts of the MSE between the max-normalised map and the mask (nearest
  neighbour to the map size), divided by the batch size.  The λ = 0.01 and the
  learning rates of the SD defaults were tuned with exactly this.
- ``area`` (built-in default) divides the masked loss by the mask's pixels and
  averages the attention loss over concepts, with masks area-pooled; every
  built-in figure in the README was measured with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import normalize_max


@dataclass
class LossTerms:
    total: torch.Tensor
    diffusion: torch.Tensor
    attention: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {"loss": self.total.item(), "diffusion": self.diffusion.item(), "attention": self.attention.item()}


def downsample_masks(masks: torch.Tensor, size: int, objective: str) -> torch.Tensor:
    """(B, K, H, W) masks in [0, 1] at `size` x `size`: nearest for the reference
    objective (as Break-a-Scene's F.interpolate), area-pooled for `area`."""
    if objective == "reference":
        return F.interpolate(masks.float(), size=(size, size), mode="nearest")
    return F.adaptive_avg_pool2d(masks.float(), size)


def masked_diffusion_loss(pred: torch.Tensor, target: torch.Tensor, union: torch.Tensor, objective: str = "area") -> torch.Tensor:
    """Eq. 3: the squared error of prediction and target inside the union mask.

    pred, target: (B, C, h, w); union: (B, 1, h, w) in [0, 1] at latent size.
    """
    if objective == "reference":
        return F.mse_loss(pred.float() * union, target.float() * union, reduction="mean")
    sq = (pred.float() - target.float()) ** 2 * union
    denom = union.sum() * pred.shape[1]
    return sq.sum() / denom.clamp(min=1.0)


def attention_loss(maps: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None, objective: str = "area") -> torch.Tensor:
    """Eq. 4: MSE between max-normalised attention maps and the concept masks.

    maps, masks: (B, K, h, w); valid: (B, K) 1 for a sample's concepts, 0 for padding.
    """
    per_token = ((normalize_max(maps.float()) - masks.float()) ** 2).mean(dim=(-1, -2))
    if valid is None:
        valid = torch.ones_like(per_token)
    if objective == "reference":
        return (per_token * valid).sum() / per_token.shape[0]
    return (per_token * valid).sum() / valid.sum().clamp(min=1.0)


def method_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    maps: torch.Tensor,
    masks: torch.Tensor,
    valid: torch.Tensor,
    attn_weight: float,
    objective: str,
) -> LossTerms:
    """Eq. 3 + λ Eq. 4 for a batch of union samples.

    pred, target: (B, C, h, w) at latent size; maps: (B, K, a, a) cross-attention of
    the tracked tokens; masks: (B, K, H, W) the sample's concept masks at any size
    (zero rows where `valid` is 0); valid: (B, K).
    """
    latent = pred.shape[-1]
    weights = valid[:, :, None, None].to(masks.dtype)
    # per mask, then the union: nearest commutes with the max (Break-a-Scene takes
    # the max first); area pooling each mask is what the built-in figures used
    union = (downsample_masks(masks, latent, objective) * weights).amax(dim=1, keepdim=True)
    diffusion = masked_diffusion_loss(pred, target, union, objective)
    small = downsample_masks(masks, maps.shape[-1], objective)
    attention = attention_loss(maps, small, valid, objective)
    return LossTerms(diffusion + attn_weight * attention, diffusion, attention)
