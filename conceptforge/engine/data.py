"""Training data of a project: its images at the model's resolution with their
latents and GT masks, and the prompts that name their concepts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..project import Project
from . import masks as mask_ops
from .bundle import ModelBundle
from .prompts import training_prompt


@dataclass
class ImageData:
    """One project image prepared for training."""

    stem: str
    file: str
    tokens: list[str]
    background: list[bool]
    inits: list[str | None]
    rgb: np.ndarray  # S x S x 3 uint8 at the model's resolution
    original_size: tuple[int, int]  # (width, height)
    latents: dict[bool, torch.Tensor]  # flipped? -> (1, C, h, w), scaled
    gt: list[np.ndarray | None]  # per concept, S x S bool

    @property
    def has_background(self) -> bool:
        return any(self.background)


def prepare_images(project: Project, model: ModelBundle) -> list[ImageData]:
    """Every image of the project, read as a viewer shows it and encoded."""
    return [_prepare(project, index, model) for index in range(len(project.images))]


def _prepare(project: Project, index: int, model: ModelBundle) -> ImageData:
    from PIL import Image

    from ..imageio import open_mask, open_rgb

    entry = project.images[index]
    im = open_rgb(project.image_path(entry))
    original = im.size
    rgb = np.asarray(im.resize((model.size, model.size), Image.BICUBIC))
    gt = []
    for c in entry.concepts:
        path = project.gt_mask_path(c)
        gt.append(mask_ops.resize_mask(open_mask(path), model.size, model.size) if path else None)
    return ImageData(
        stem=entry.stem,
        file=entry.file,
        tokens=[c.token for c in entry.concepts],
        background=[c.background for c in entry.concepts],
        inits=[project.concept_init(c.token) for c in entry.concepts],
        rgb=rgb,
        original_size=original,
        latents={flip: encode_image(model, rgb[:, ::-1] if flip else rgb) for flip in (False, True)},
        gt=gt,
    )


@torch.no_grad()
def encode_image(model: ModelBundle, rgb: np.ndarray) -> torch.Tensor:
    """The scaled VAE latent mean of an S x S x 3 uint8 image: (1, C, h, w)."""
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).float().permute(2, 0, 1)[None] / 127.5 - 1
    dist = model.vae.encode(x.to(model.device, model.vae.dtype)).latent_dist
    return (dist.mean * model.vae.config.scaling_factor).float()


@dataclass
class Conditioning:
    """What the UNet reads of a batch of prompts: `hidden` (B, L, D) text states,
    and for SDXL `added` ({"text_embeds": (B, P) pooled, "time_ids": (B, 6)},
    the UNet's `added_cond_kwargs`; empty for SD 1.x/2.x)."""

    hidden: torch.Tensor
    added: dict[str, torch.Tensor] = field(default_factory=dict)

    def unet_kwargs(self) -> dict:
        """Keyword arguments of the UNet call besides the latents and timesteps."""
        out: dict = {"encoder_hidden_states": self.hidden}
        if self.added:
            out["added_cond_kwargs"] = self.added
        return out

    def map(self, fn) -> "Conditioning":
        """`fn` applied to every tensor along the batch dimension."""
        return Conditioning(fn(self.hidden), {k: fn(v) for k, v in self.added.items()})

    def expand(self, b: int) -> "Conditioning":
        """One prompt's conditioning for a batch of b."""
        return self.map(lambda x: x.expand(b, *x.shape[1:]))

    def repeat(self, n: int) -> "Conditioning":
        """The batch repeated n times (as torch.Tensor.repeat along dimension 0)."""
        return self.map(lambda x: x.repeat(n, *([1] * (x.dim() - 1))))

    @staticmethod
    def cat(parts: list["Conditioning"]) -> "Conditioning":
        """Batches concatenated in order."""
        first = parts[0]
        return Conditioning(torch.cat([p.hidden for p in parts]), {k: torch.cat([p.added[k] for p in parts]) for k in first.added})


class Prompts:
    """Prompts naming a subset of an image's concepts, as the UNet's conditioning."""

    def __init__(self, model: ModelBundle) -> None:
        self.model = model

    def ids(self, prompt: str, tokenizer=None) -> torch.Tensor:
        """The prompt's token ids, padded to the text encoder's length: (1, L)
        (of the first tokenizer, or of `tokenizer`)."""
        tok = tokenizer or self.model.tokenizer
        return tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids

    def positions(self, ids: torch.Tensor, tokens: list[str]) -> list[int]:
        """Where each concept token sits in the prompt."""
        out = []
        for t in tokens:
            hits = (ids[0] == self.model.token_ids[t]).nonzero()
            if len(hits) == 0:
                raise InputError(f"The prompt for {t} is longer than the model's {self.model.tokenizer.model_max_length} tokens.")
            out.append(int(hits[0]))
        return out

    def encode(self, tokens: list[str], background: list[bool]) -> tuple[Conditioning, torch.Tensor]:
        """Conditioning of the subset's prompt (batch 1) and the tokens' positions (1, K)."""
        prompt = training_prompt(tokens, background, self.model.is_builtin)
        ids = self.ids(prompt)
        positions = self.positions(ids, tokens)
        if self.model.text_encoder_2 is not None:
            ids_2 = self.ids(prompt, self.model.tokenizer_2)
            if any(int(ids_2[0, p]) != self.model.rows_2.ids[self.model.tokens.index(t)] for p, t in zip(positions, tokens)):
                raise InputError(f"The model's two tokenizers split the prompt {prompt!r} differently, so its concept tokens cannot be located.")
            return self._encode_xl(ids, ids_2), torch.tensor([positions])
        return Conditioning(self.model.text_encoder(ids.to(self.model.device))[0]), torch.tensor([positions])

    def _encode_xl(self, ids: torch.Tensor, ids_2: torch.Tensor) -> Conditioning:
        """SDXL, as StableDiffusionXLPipeline.encode_prompt: both encoders' penultimate
        hidden states side by side, the second encoder's projected (pooled) output,
        and the size/crop numbers."""
        device = self.model.device
        first = self.model.text_encoder(ids.to(device), output_hidden_states=True)
        second = self.model.text_encoder_2(ids_2.to(device), output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        pooled = second[0]
        return Conditioning(hidden, {"text_embeds": pooled, "time_ids": self.model.time_ids().to(pooled.dtype)})

    def reference(self, data: ImageData, k: int, use_init: bool) -> Conditioning:
        """Conditioning of the image's prompt without concept k, or (use_init) with
        k's init word in its place ("object" when it has none): batch 1."""
        if use_init:
            words = list(data.tokens)
            words[k] = data.inits[k] or "object"
            background = data.background
        else:
            words = [t for j, t in enumerate(data.tokens) if j != k]
            background = [b for j, b in enumerate(data.background) if j != k]
        prompt = training_prompt(words, background, self.model.is_builtin) if words else ""
        if self.model.text_encoder_2 is not None:
            return self._encode_xl(self.ids(prompt), self.ids(prompt, self.model.tokenizer_2))
        return Conditioning(self.model.text_encoder(self.ids(prompt).to(self.model.device))[0])
