"""A tiny random Stable-Diffusion-XL pipeline built in code (no network).

The layout is SDXL's at a small size: two text encoders (CLIPTextModel and
CLIPTextModelWithProjection, whose projection gives the pooled embedding), one
tokenizer vocabulary for both, a UNet with SDXL's block types (no
cross-attention in the first down block), `transformer_layers_per_block`,
linear projections, `addition_embed_type="text_time"` and a cross-attention
width equal to the two encoders' hidden sizes together.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny_models import write_vocab_files

HIDDEN_1, HIDDEN_2, POOLED = 32, 48, 40  # text_encoder, text_encoder_2 widths, text_encoder_2's projection
TIME_DIM = 8  # addition_time_embed_dim: each of the 6 size/crop numbers is embedded this wide


def build_tiny_sdxl(out: Path, seed: int = 0) -> Path:
    """Save a random tiny StableDiffusionXLPipeline to `out` and return it."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    tok_dir = out.parent / f"{out.name}-tokenizer-src"
    write_vocab_files(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=24, pad_token="<|endoftext|>")
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=24, pad_token="<|endoftext|>")

    def text_config(hidden: int, act: str, projection: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=2, max_position_embeddings=24, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, projection_dim=projection,
            hidden_act=act,
        )

    text_encoder = CLIPTextModel(text_config(HIDDEN_1, "quick_gelu", HIDDEN_1))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(HIDDEN_2, "gelu", POOLED))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16, 32), layers_per_block=1, norm_num_groups=8,
        attention_head_dim=(2, 2, 4), transformer_layers_per_block=(1, 1, 2), use_linear_projection=True,
        cross_attention_dim=HIDDEN_1 + HIDDEN_2,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=POOLED + 6 * TIME_DIM,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32,
        scaling_factor=0.13025,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
        prediction_type="epsilon",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(str(out))
    return out


def write_sdxl_checkpoint(folder: Path, out: Path) -> Path:
    """Save the tiny SDXL pipeline `folder` as an SDXL single-file (SGM) checkpoint:
    `model.diffusion_model.*` (the add embedding as `label_emb.0.*`), `first_stage_model.*`,
    `conditioner.embedders.0.transformer.text_model.*` (CLIP) and
    `conditioner.embedders.1.model.*` (OpenCLIP, with its text projection)."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    from ldm_checkpoint import CLIP, OPEN_CLIP, UNET, clip_to_ldm, open_clip_to_ldm, unet_to_ldm, vae_to_ldm

    pipe = StableDiffusionXLPipeline.from_pretrained(str(folder))
    unet = dict(pipe.unet.state_dict())
    added = {k: unet.pop(k) for k in list(unet) if k.startswith("add_embedding.")}
    state = unet_to_ldm(unet, pipe.unet.config)
    for key, value in added.items():  # add_embedding.linear_1/2 -> label_emb.0.0/0.2
        state[UNET + key.replace("add_embedding.linear_1", "label_emb.0.0").replace("add_embedding.linear_2", "label_emb.0.2")] = value
    state.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    state.update({k.replace(CLIP, "conditioner.embedders.0.transformer.", 1): v for k, v in clip_to_ldm(pipe.text_encoder.state_dict()).items()})
    second = dict(pipe.text_encoder_2.state_dict())
    projection = second.pop("text_projection.weight")  # (projection, hidden); OpenCLIP stores (hidden, projection)
    for key, value in open_clip_to_ldm(second).items():
        state[key.replace(OPEN_CLIP, "conditioner.embedders.1.model.", 1)] = value
    state["conditioner.embedders.1.model.text_projection"] = projection.T
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out))
    return out
