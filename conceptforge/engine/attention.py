"""Cross-attention capture: a diffusers attention processor that records the
attention probabilities of selected text tokens at one UNet resolution.

Only the cross-attention layers at the capture resolution get the capturing
processor; every other layer keeps the stock SDPA processor.  The layer output
is computed by the stock processor, so the UNet's output is unchanged; the
probabilities are computed beside it (one extra query projection per captured
layer) and keep their gradients for the cross-attention loss.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0


class AttentionStore:
    """Collects per-token attention maps from the capturing processors.

    `token_index` is a LongTensor (B, K): for each sample of the batch, the
    positions in the text sequence of the K tracked tokens.
    """

    def __init__(self) -> None:
        self.token_index: torch.Tensor | None = None
        self.maps: list[torch.Tensor] = []  # each (B, HW, K), averaged over heads
        self.enabled = True

    def reset(self) -> None:
        self.maps = []

    def record(self, probs: torch.Tensor) -> None:
        """probs: (B, heads, HW, L) attention probabilities of one layer."""
        if not self.enabled or self.token_index is None:
            return
        b, _, hw, _ = probs.shape
        index = self.token_index.to(probs.device)
        if index.shape[0] != b:  # e.g. a batch repeated for guidance: track the last rows
            index = index[-b:] if index.shape[0] > b else index.repeat(math.ceil(b / index.shape[0]), 1)[:b]
        mean = probs.mean(dim=1)  # (B, HW, L)
        picked = torch.gather(mean, 2, index[:, None, :].expand(b, hw, index.shape[1]))
        self.maps.append(picked)

    def mean_maps(self, height: int, width: int) -> torch.Tensor:
        """Average of the recorded layers as (B, K, height, width)."""
        if not self.maps:
            raise RuntimeError("no cross-attention was captured")
        stacked = torch.stack(self.maps, dim=0).mean(dim=0)  # (B, HW, K)
        b, hw, k = stacked.shape
        if hw != height * width:
            raise RuntimeError(f"captured maps have {hw} positions, expected {height}x{width}")
        return stacked.permute(0, 2, 1).reshape(b, k, height, width)


class CaptureAttnProcessor:
    """Stock SDPA attention plus a record of the cross-attention probabilities."""

    def __init__(self, store: AttentionStore) -> None:
        self.store = store
        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if encoder_hidden_states is not None and self.store.enabled and self.store.token_index is not None:
            self.store.record(_attention_probs(attn, hidden_states, encoder_hidden_states, temb))
        return out


def _attention_probs(attn, hidden_states: torch.Tensor, context: torch.Tensor, temb) -> torch.Tensor:
    """softmax(QK^T / sqrt(d)) of a cross-attention layer as (B, heads, HW, L)."""
    return attention_logits(attn, hidden_states, context, temb).softmax(dim=-1)


def attention_logits(attn, hidden_states: torch.Tensor, context: torch.Tensor | None, temb) -> torch.Tensor:
    """QK^T / sqrt(d) of an attention layer as (B, heads, N, L), computed as the
    stock processor does; `context` None: self-attention (keys from the normed
    hidden states)."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if context is None:
        context = hidden_states
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query = attn.to_q(hidden_states)
    key = attn.to_k(context)
    b = query.shape[0]
    head_dim = key.shape[-1] // attn.heads
    query = query.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return torch.matmul(query.float(), key.float().transpose(-1, -2)) / math.sqrt(head_dim)


def cross_attention_factors(unet) -> dict[str, int]:
    """Map each cross-attention processor name to its downsampling factor.

    The factor follows from the block index alone, so blocks without
    cross-attention need no special case: SDXL's first down block
    (DownBlock2D) has none, its down blocks 1 and 2 sit at factors 2 and 4,
    the mid block at 4, up blocks 0 and 1 at 4 and 2.
    """
    n_blocks = len(unet.config.block_out_channels)
    factors: dict[str, int] = {}
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        parts = name.split(".")
        if parts[0] == "down_blocks":
            factors[name] = 2 ** int(parts[1])
        elif parts[0] == "up_blocks":
            factors[name] = 2 ** (n_blocks - 1 - int(parts[1]))
        else:  # mid block
            factors[name] = 2 ** (n_blocks - 1)
    return factors


def capture_factor(unet, latent_size: int, resolution: int) -> int:
    """The available downsampling factor whose map size is nearest `resolution`
    (the setting `attention_resolution`, 16 by default; ties go to the coarser maps).

    SD 1.x/2.x at 512 px (latent 64): factors 1, 2, 4 give 64, 32, 16; the
    default takes the 16x16 maps, 1/32 of the image side, as Break-a-Scene.
    SDXL at 1024 px (latent 128) has cross-attention only at factors 2 and 4,
    64x64 and 32x32 maps; the default 16 takes the 32x32 ones (factor 4: the
    mid block, down block 2 and up block 0, 60 cross-attention layers of the
    base model's 10-deep transformers), again 1/32 of the image side, the
    level where SD's semantic 16x16 maps sit.  They are also the cheaper
    ones to capture (1024 positions per layer instead of 4096) and match the
    scale DenseCRF refines from on SD.  `attention_resolution: 64` takes
    SDXL's 64x64 maps instead (10 layers, 2 deep).  At 512 px SDXL's factor 4
    gives 16x16 maps.
    """
    available = sorted(set(cross_attention_factors(unet).values()))
    if not available:
        raise ValueError("the UNet has no cross-attention layers")
    return min(available, key=lambda f: (abs(latent_size // f - resolution), f))


def install_capture(unet, store: AttentionStore, factor: int) -> dict:
    """Put capturing processors on the cross-attention layers of one factor;
    return the processors they replaced.  They record only while
    `store.token_index` is set, so they can stay installed."""
    original = dict(unet.attn_processors)
    chosen = {n for n, f in cross_attention_factors(unet).items() if f == factor}
    processor = CaptureAttnProcessor(store)
    unet.set_attn_processor({n: (processor if n in chosen else p) for n, p in original.items()})
    return original


@contextmanager
def capture_cross_attention(unet, store: AttentionStore, factor: int) -> Iterator[AttentionStore]:
    """Capturing processors installed for the duration of a block."""
    original = install_capture(unet, store, factor)
    try:
        yield store
    finally:
        unet.set_attn_processor(original)


def normalize_max(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Divide each (…, h, w) map by its maximum."""
    peak = maps.flatten(-2).amax(dim=-1)[..., None, None]
    return maps / (peak + eps)


def normalize_minmax(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each (…, h, w) map to [0, 1]."""
    flat = maps.flatten(-2)
    lo = flat.amin(dim=-1)[..., None, None]
    hi = flat.amax(dim=-1)[..., None, None]
    return (maps - lo) / (hi - lo + eps)


def resize_maps(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of (B, K, h, w) maps."""
    return F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
