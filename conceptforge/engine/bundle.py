"""The model as the learner uses it: the pipeline's parts on one device, the
concept tokens added and trainable, and cross-attention capture installed.

Families: Stable Diffusion 1.x/2.x ("sd": one text encoder, the UNet reads its
last hidden states) and Stable Diffusion XL ("sdxl": a concept learns a row in
both text encoders; the UNet reads both encoders' penultimate hidden states
side by side, plus the pooled text embedding of the second encoder's
projection and the size/crop numbers, `added_cond_kwargs`, as the stock
StableDiffusionXLPipeline passes them).  The differences live here and in
`data.Prompts`; the trainer and the E-step pass on what `Prompts.encode` gives.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .attention import AttentionStore, capture_factor, install_capture
from .config import LearnConfig
from .tokens import ConceptRows, add_concept_tokens

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class ModelBundle:
    """Tokenizer, text encoder, UNet, VAE and training scheduler, plus the
    trainable concept rows and the attention store."""

    tokenizer: object
    text_encoder: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object  # DDPM with the pipeline's noise schedule
    device: torch.device
    is_builtin: bool
    tokens: list[str]
    token_ids: dict[str, int]
    rows: ConceptRows
    size: int  # image side in pixels
    latent: int  # latent side
    att: int  # attention map side
    store: AttentionStore
    precision: str = "no"
    family: str = "sd"  # "sd" (1.x/2.x) or "sdxl"
    tokenizer_2: object | None = None  # SDXL's second tokenizer and text encoder, and the concepts' rows in it
    text_encoder_2: torch.nn.Module | None = None
    rows_2: ConceptRows | None = None

    @property
    def concept_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable concept rows: one (K, D) parameter per text encoder."""
        return [self.rows.rows] + ([self.rows_2.rows] if self.rows_2 is not None else [])

    def concept_embeddings(self) -> dict[str, Any]:
        """Token -> its learned row (SD), or {"clip_l": row, "clip_g": row} (SDXL:
        the first and the second text encoder's, the keys of SDXL embedding files)."""
        rows = self.rows.rows.detach()
        if self.rows_2 is None:
            return {t: rows[k] for k, t in enumerate(self.tokens)}
        rows_2 = self.rows_2.rows.detach()
        return {t: {"clip_l": rows[k], "clip_g": rows_2[k]} for k, t in enumerate(self.tokens)}

    def time_ids(self) -> torch.Tensor:
        """SDXL's size and crop conditioning of a training image, (1, 6): original
        size, crop top-left, target size, as the stock pipeline builds it when it
        draws a `size` x `size` image.  Images are resized whole to `size`; the
        random crops of `augment: full` are conditioned as uncropped too, so the
        tokens are learned under the conditioning they are sampled with."""
        return torch.tensor([[self.size, self.size, 0, 0, self.size, self.size]], dtype=torch.float32, device=self.device)

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet is trained to predict: the noise or the velocity."""
        if self.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(latents, noise, t)

    def autocast(self) -> AbstractContextManager:
        if self.precision == "no":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)


def bundle_from_pipeline(pipe, is_builtin: bool, tokens: list[str], inits: dict[str, str | None], cfg: LearnConfig, device: torch.device) -> ModelBundle:
    """A loaded StableDiffusionPipeline's parts, prepared for learning `tokens`."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    check_model_settings(scheduler.config, cfg)
    tokenizer, text_encoder, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
    tokenizer_2, text_encoder_2 = getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)
    family = "sdxl" if text_encoder_2 is not None else "sd"
    for module in (text_encoder, text_encoder_2, unet, vae):
        if module is not None:
            module.requires_grad_(False)
            module.to(device)
    ids = add_concept_tokens(tokenizer, text_encoder, tokens, inits, seed=cfg.seed)
    rows = ConceptRows(text_encoder, ids).to(device)
    rows_2 = None
    if family == "sdxl":
        # each concept also learns a row of the second encoder, initialised from the init word there
        ids_2 = add_concept_tokens(tokenizer_2, text_encoder_2, tokens, inits, seed=cfg.seed + 1)
        rows_2 = ConceptRows(text_encoder_2, ids_2).to(device)
    size = cfg.image_size or unet.config.sample_size * pipe.vae_scale_factor
    latent = size // pipe.vae_scale_factor
    factor = capture_factor(unet, latent, cfg.attention_resolution)
    store = AttentionStore()
    # installed for the learner's life: recording happens only while store.token_index
    # is set, and gradient checkpointing's recomputation sees the same processors
    install_capture(unet, store, factor)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        text_encoder.gradient_checkpointing_enable()
        if text_encoder_2 is not None:
            text_encoder_2.gradient_checkpointing_enable()
    return ModelBundle(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae, scheduler=scheduler, device=device,
        is_builtin=is_builtin, tokens=list(tokens), token_ids=dict(zip(tokens, ids)), rows=rows,
        size=size, latent=latent, att=latent // factor, store=store, precision=cfg.mixed_precision,
        family=family, tokenizer_2=tokenizer_2, text_encoder_2=text_encoder_2, rows_2=rows_2,
    )


def check_model_settings(scheduler_config, cfg: LearnConfig) -> None:
    """Settings that depend on the model: the prediction type and the timestep range."""
    kind = scheduler_config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise InputError(f"The model predicts {kind!r}; conceptforge trains models that predict epsilon or v_prediction.")
    steps = int(scheduler_config.get("num_train_timesteps", 1000))
    if cfg.mask_t_max >= steps:
        raise InputError(f"Setting mask_t_max = {cfg.mask_t_max} is not valid: the model has timesteps 0 to {steps - 1}.")
