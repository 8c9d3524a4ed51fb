"""Training data of a project: its images at the model's resolution with their
latents and GT masks, and the prompts that name their concepts."""

from __future__ import annotations

from dataclasses import dataclass

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


class Prompts:
    """Prompts naming a subset of an image's concepts, as text-encoder states."""

    def __init__(self, model: ModelBundle) -> None:
        self.model = model

    def ids(self, prompt: str) -> torch.Tensor:
        """The prompt's token ids, padded to the text encoder's length: (1, L)."""
        tok = self.model.tokenizer
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

    def encode(self, tokens: list[str], background: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text states of the subset's prompt (1, L, D) and the tokens' positions (1, K)."""
        ids = self.ids(training_prompt(tokens, background, self.model.is_builtin))
        positions = self.positions(ids, tokens)
        return self.model.text_encoder(ids.to(self.model.device))[0], torch.tensor([positions])

    def reference(self, data: ImageData, k: int, use_init: bool) -> torch.Tensor:
        """Text states of the image's prompt without concept k, or (use_init) with
        k's init word in its place ("object" when it has none): (1, L, D)."""
        if use_init:
            words = list(data.tokens)
            words[k] = data.inits[k] or "object"
            background = data.background
        else:
            words = [t for j, t in enumerate(data.tokens) if j != k]
            background = [b for j, b in enumerate(data.background) if j != k]
        prompt = training_prompt(words, background, self.model.is_builtin) if words else ""
        return self.model.text_encoder(self.ids(prompt).to(self.model.device))[0]
