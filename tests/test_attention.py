from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0

from conceptforge.engine.attention import (
    AttentionStore,
    CaptureAttnProcessor,
    capture_cross_attention,
    capture_factor,
    cross_attention_factors,
)


def _unet(tiny_model):
    return StableDiffusionPipeline.from_pretrained(str(tiny_model)).unet.eval()


def test_capture_leaves_unet_output_unchanged(tiny_model):
    unet = _unet(tiny_model)
    torch.manual_seed(0)
    z, ctx, t = torch.randn(2, 4, 16, 16), torch.randn(2, 24, 32), torch.tensor([10, 500])
    with torch.no_grad():
        stock = unet(z, t, encoder_hidden_states=ctx).sample
        store = AttentionStore()
        store.token_index = torch.tensor([[1, 2], [3, 4]])
        with capture_cross_attention(unet, store, factor=1):
            captured = unet(z, t, encoder_hidden_states=ctx).sample
    assert torch.equal(stock, captured)
    assert store.maps, "nothing was captured"
    maps = store.mean_maps(16, 16)
    assert maps.shape == (2, 2, 16, 16)
    assert torch.all(maps >= 0) and torch.all(maps <= 1)


def test_capture_only_on_chosen_resolution_and_restored(tiny_model):
    unet = _unet(tiny_model)
    store = AttentionStore()
    factors = cross_attention_factors(unet)
    with capture_cross_attention(unet, store, factor=1):
        procs = unet.attn_processors
        for name, proc in procs.items():
            if factors.get(name) == 1:
                assert isinstance(proc, CaptureAttnProcessor)
            else:
                assert isinstance(proc, AttnProcessor2_0), name
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())


def test_captured_maps_carry_gradients(tiny_model):
    unet = _unet(tiny_model)
    ctx = torch.randn(1, 24, 32, requires_grad=True)
    store = AttentionStore()
    store.token_index = torch.tensor([[2]])
    with capture_cross_attention(unet, store, factor=1):
        unet(torch.randn(1, 4, 16, 16), torch.tensor([100]), encoder_hidden_states=ctx)
    store.mean_maps(16, 16).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0


def test_capture_factor_picks_nearest_resolution(tiny_model):
    unet = _unet(tiny_model)
    assert capture_factor(unet, 16, 16) == 1
    assert capture_factor(unet, 32, 16) == 2
