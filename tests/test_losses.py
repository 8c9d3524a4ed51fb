"""The objective: Eq. 3 and Eq. 4 by value and by gradient, and the SD default
against Break-a-Scene's loss computed independently from its formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from conceptforge.engine.losses import attention_loss, masked_diffusion_loss, method_loss


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    target = torch.randn(2, 4, 8, 8, generator=g)
    masks = torch.zeros(2, 3, 32, 32)
    masks[0, 0, 2:14, 3:12] = 1
    masks[0, 1, 18:30, 16:28] = 1
    masks[0, 2, 0:6, 20:32] = 1
    masks[1, 0, 8:24, 8:20] = 1
    masks[1, 1, 0:8, 0:8] = 1  # sample 1 has two concepts: row 2 is padding
    valid = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    maps = torch.rand(2, 3, 4, 4, generator=g).requires_grad_(True)
    return pred, target, maps, masks, valid


def _break_a_scene(pred, target, maps, masks, valid, weight):
    """Break-a-Scene's train.py: union of the sample's masks, nearest to the latent,
    times prediction and target, MSE over everything; attention: per sample the sum
    over its concepts of MSE(mask nearest to 16x16, map / max), divided by the batch."""
    unions = []
    for b in range(len(masks)):
        chosen = masks[b][valid[b] > 0]
        unions.append(F.interpolate(chosen.max(dim=0, keepdim=True).values[None], size=pred.shape[-2:]))
    union = torch.cat(unions)
    diffusion = F.mse_loss(pred * union, target * union, reduction="mean")
    attn = 0.0
    for b in range(len(masks)):
        small = F.interpolate(masks[b][None], size=maps.shape[-2:])[0]
        for k in range(masks.shape[1]):
            if valid[b, k] > 0:
                attn = attn + F.mse_loss(small[k], maps[b, k] / maps[b, k].max(), reduction="mean")
    return diffusion + weight * attn / len(masks)


def test_reference_objective_is_break_a_scene_loss():
    pred, target, maps, masks, valid = _batch()
    ours = method_loss(pred, target, maps, masks, valid, 0.01, "reference").total
    theirs = _break_a_scene(pred, target, maps, masks, valid, 0.01)
    assert abs(ours.item() - theirs.item()) < 1e-6
    # and the area objective is a different number (the normalisation differs by about K / area)
    assert abs(method_loss(pred, target, maps, masks, valid, 0.01, "area").total.item() - theirs.item()) > 1e-3


def test_masked_loss_ignores_pixels_outside_the_union():
    pred, target, maps, masks, valid = _batch(1)
    for objective in ("reference", "area"):
        pred.grad = None
        method_loss(pred, target, maps, masks, valid, 0.0, objective).total.backward()
        full = masks.amax(dim=1, keepdim=True)  # the padding row is empty anyway
        union = F.interpolate(full, size=(8, 8)) if objective == "reference" else F.adaptive_avg_pool2d(full, 8)
        outside = (union == 0).expand_as(pred)
        assert (pred.grad[outside] == 0).all() and (pred.grad[~outside] != 0).any()


def test_masked_loss_value_by_hand():
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 2.0]]]])
    union = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # inside: channel 0 pixels 1 and 4 -> 1 + 16; channel 1 pixels 0 and 2 -> 0 + 4; 21 in all
    assert masked_diffusion_loss(pred, target, union, "reference").item() == 21 / 8  # over the whole latent
    assert masked_diffusion_loss(pred, target, union, "area").item() == 21 / 4  # over the union's pixels


def test_attention_loss_value_and_padding():
    maps = torch.tensor([[[[1.0, 3.0], [0.0, 4.0]], [[2.0, 2.0], [2.0, 2.0]]]], requires_grad=True)
    masks = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]]])
    # token 0: max-normalised [.25 .75 0 1] vs [0 1 0 1] -> (0.0625 + 0.0625) / 4
    # token 1: [1 1 1 1] vs [1 0 0 0] -> 3 / 4
    both = attention_loss(maps, masks, torch.tensor([[1.0, 1.0]]), "reference")
    assert abs(both.item() - (0.125 / 4 + 0.75)) < 1e-6  # summed over concepts, one sample
    assert abs(attention_loss(maps, masks, torch.tensor([[1.0, 1.0]]), "area").item() - (0.125 / 4 + 0.75) / 2) < 1e-6
    only_first = attention_loss(maps, masks, torch.tensor([[1.0, 0.0]]), "area")
    only_first.backward()
    assert abs(only_first.item() - 0.125 / 4) < 1e-6
    assert (maps.grad[0, 1] == 0).all() and (maps.grad[0, 0] != 0).any()  # padding gets no gradient
