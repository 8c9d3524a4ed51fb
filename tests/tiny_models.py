"""Tiny random Stable-Diffusion-architecture pipelines built in code (no network)."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["a", "photo", "of", "and", "on", "the", "person", "dog", "cat", "shape", "object", "background", "red", "blue", "beach"]


def write_vocab_files(out_dir: Path) -> None:
    """vocab.json and merges.txt of a tiny BPE where every word is one token."""
    from conceptforge.shapes.model import write_tokenizer_files

    write_tokenizer_files(out_dir, WORDS)


def build_tiny_pipeline(out: Path, flavor: str = "sd15", seed: int = 0) -> Path:
    """Save a random tiny StableDiffusionPipeline to `out` and return it.

    flavor "sd15": cross_attention_dim 32, attention_head_dim int;
    flavor "sd21": wider text states (48), attention_head_dim per block list,
    use_linear_projection, v-prediction, as SD 2.x configures them.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tok_dir = out.parent / f"{out.name}-tokenizer-src"
    write_vocab_files(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=24, pad_token="<|endoftext|>")
    sd21 = flavor == "sd21"
    ctx_dim = 48 if sd21 else 32
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=ctx_dim, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=24, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id, projection_dim=ctx_dim,
            hidden_act="gelu" if sd21 else "quick_gelu",
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=ctx_dim,
        attention_head_dim=[2, 4] if sd21 else 2, use_linear_projection=sd21, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        prediction_type="v_prediction" if sd21 else "epsilon", steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out))
    return out
