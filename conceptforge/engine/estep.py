"""The E-step: each concept's mask re-estimated from the model (step 2 and the
E-step of step 3 in DESIGN.md).

Per image: a soft map per concept from the chosen signal (cross-attention, the
per-pixel rise of the denoising error when the concept is left out of the
prompt, or their mean), momentum across E-steps, threshold + DenseCRF
(`masks.refine_masks`), then guards: a new mask whose area changes by more
than `area_change_max` is refused and the previous one kept.  Masks converge
when every concept's accepted new mask overlaps its previous one by at least
`mask_converged` IoU and no update was refused.  Writes nothing to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from . import masks as mask_ops
from .attention import normalize_minmax
from .bundle import ModelBundle
from .config import LearnConfig
from .data import ImageData, Prompts
from .parallel import Parallel

MaskKey = tuple[int, str]  # (image index, token)


@dataclass
class EStepResult:
    """Masks and soft maps of every concept after one E-step, with per-concept figures."""

    iteration: int
    masks: dict[MaskKey, np.ndarray]
    soft: dict[MaskKey, np.ndarray]
    records: list[dict[str, Any]] = field(default_factory=list)
    converged: bool = False
    refused: int = 0


class MaskEstimator:
    """Computes E-steps for a fixed set of images with the current tokens."""

    def __init__(self, model: ModelBundle, images: list[ImageData], cfg: LearnConfig, parallel: Parallel | None = None) -> None:
        self.model = model
        self.images = images
        self.cfg = cfg
        self.prompts = Prompts(model)
        self.par = parallel or Parallel()

    # -- the E-step ----------------------------------------------------------------
    def estimate(self, iteration: int, previous: EStepResult | None = None) -> EStepResult:
        """E-step number `iteration` (0: the initial masks) given the previous one."""
        cfg = self.cfg
        maps_and_masks = self._all_images(iteration, previous)
        masks: dict[MaskKey, np.ndarray] = {}
        soft: dict[MaskKey, np.ndarray] = {}
        records: list[dict[str, Any]] = []
        changes: list[float] = []
        refused = 0
        for i, data in enumerate(self.images):
            maps, new = maps_and_masks[i]
            for k, t in enumerate(data.tokens):
                soft[(i, t)] = maps[k]
                prev = previous.masks.get((i, t)) if previous is not None else None
                mask = new[k]
                was_refused = prev is not None and cfg.masks == "em" and not area_change_ok(prev, mask, cfg.area_change_max)
                if was_refused:
                    mask = prev
                    refused += 1
                iou_prev = mask_ops.iou(prev, mask) if prev is not None else None
                if iou_prev is not None and not was_refused:
                    changes.append(iou_prev)
                masks[(i, t)] = mask
                gt = data.gt[k]
                records.append(
                    {
                        "image": data.stem,
                        "token": t,
                        "area": round(float(mask.mean()), 5),
                        "iou_prev": None if iou_prev is None else round(iou_prev, 5),
                        "iou_gt": None if gt is None else round(mask_ops.iou(mask, gt), 5),
                        "refused": was_refused,
                    }
                )
        converged = bool(changes) and refused == 0 and min(changes) >= cfg.mask_converged
        return EStepResult(iteration, masks, soft, records, converged, refused)

    def _all_images(self, iteration: int, previous: EStepResult | None) -> dict[int, tuple[np.ndarray, list[np.ndarray]]]:
        """Soft maps and refined masks of every image (each process does its share)."""
        cfg = self.cfg
        mine = {}
        n_timesteps = cfg.init_mask_timesteps if iteration == 0 else cfg.mask_timesteps
        for i in self.par.mine(len(self.images)):
            data = self.images[i]
            maps = self.signal(i, iteration, n_timesteps, seed=cfg.seed * 1000 + iteration)
            if previous is not None and cfg.masks == "em" and cfg.mask_momentum > 0:
                prev = np.stack([previous.soft[(i, t)] for t in data.tokens])
                maps = cfg.mask_momentum * prev + (1 - cfg.mask_momentum) * maps
            if cfg.masks == "given":
                new = [given_mask(data, k) for k in range(len(data.tokens))]
            else:
                new = list(mask_ops.refine_masks(data.rgb, maps, threshold=cfg.threshold, use_crf=cfg.crf, has_background=data.has_background))
            mine[i] = (maps, new)
        return {i: v for part in self.par.gather(mine) for i, v in part.items()}

    # -- signals -------------------------------------------------------------------
    def signal(self, image: int, iteration: int, n_timesteps: int, seed: int) -> np.ndarray:
        """Per-concept soft maps of one image, min-max normalised: (K, att, att).

        The first E-step reads `init_mask_signal`, later ones `mask_signal`: the
        tokens' cross-attention (`attention`), the denoising-error rise without
        each token (`error`) or the mean of both (`both`).  Min-max, not max
        alone: attention maps have a floor (a background token's is high
        everywhere) that max-normalisation would leave above the threshold.
        """
        kind = self.cfg.mask_signal if iteration > 0 else self.cfg.init_mask_signal
        if kind == "attention":
            return normalize_minmax(torch.from_numpy(self.attention_maps(image, n_timesteps, seed))).numpy()
        gain, attention = self.error_maps(image, n_timesteps, seed, use_init=self._init_reference(iteration))
        err = normalize_minmax(torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(gain), self.model.att))
        if kind == "error":
            return err.numpy()
        return normalize_minmax((err + normalize_minmax(torch.from_numpy(attention))) / 2).numpy()

    def _init_reference(self, iteration: int) -> bool:
        """`error_reference: init` in E-steps after the first; the first always drops
        the concept (without `init_steps` its tokens still equal their init words,
        so the init reference would measure nothing)."""
        return self.cfg.error_reference == "init" and iteration > 0

    def _timesteps(self, n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(self.cfg.mask_t_min, self.cfg.mask_t_max + 1, (n,), generator=gen)

    @torch.no_grad()
    def attention_maps(self, image: int, n_timesteps: int, seed: int) -> np.ndarray:
        """Cross-attention of each concept token, averaged over random timesteps: (K, att, att)."""
        model, data = self.model, self.images[image]
        ctx, positions = self.prompts.encode(data.tokens, data.background)
        gen = torch.Generator().manual_seed(seed)
        ts = self._timesteps(n_timesteps, gen)
        z = data.latents[False]
        total = torch.zeros(len(data.tokens), model.att, model.att)
        chunk = 8
        for start in range(0, n_timesteps, chunk):
            t = ts[start : start + chunk].to(model.device)
            b = len(t)
            noise = torch.randn((b,) + tuple(z.shape[1:]), generator=gen).to(model.device)
            zt = model.scheduler.add_noise(z.expand(b, -1, -1, -1), noise, t)
            model.store.reset()
            model.store.token_index = positions.expand(b, -1)
            with model.autocast():
                model.unet(zt, t, encoder_hidden_states=ctx.expand(b, -1, -1))
            total += model.store.mean_maps(model.att, model.att).float().sum(dim=0).cpu()
        model.store.token_index = None
        return (total / n_timesteps).numpy()

    @torch.no_grad()
    def error_maps(self, image: int, n_timesteps: int, seed: int, use_init: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """How much each concept token lowers the denoising error, per latent
        pixel (K, h, w), and the tokens' cross-attention in the same passes (K, att, att).

        The prompt naming all of the image's concepts against the same prompt
        without concept k (or with its init word: `use_init`), on shared noise and
        timesteps, all K+1 prompts in one UNet batch; a pixel belongs to the token
        whose removal costs most.  (A leave-one-out reading of the masked
        diffusion loss per pixel, not the paper's Eq. 3 itself.)
        """
        model, data = self.model, self.images[image]
        ctx_all, positions = self.prompts.encode(data.tokens, data.background)
        ctx = torch.cat([ctx_all] + [self.prompts.reference(data, k, use_init) for k in range(len(data.tokens))])
        n = ctx.shape[0]
        gen = torch.Generator().manual_seed(seed)
        z = data.latents[False]
        errors = torch.zeros(n, z.shape[-2], z.shape[-1])
        attention = torch.zeros(len(data.tokens), model.att, model.att)
        for _ in range(n_timesteps):
            t = self._timesteps(1, gen).to(model.device)
            noise = torch.randn(z.shape, generator=gen).to(model.device)
            zt = model.scheduler.add_noise(z, noise, t)
            target = model.target(z, noise, t)
            model.store.reset()
            model.store.token_index = positions.expand(n, -1)  # rows 1.. are read but not used
            with model.autocast():
                pred = model.unet(zt.expand(n, -1, -1, -1), t.expand(n), encoder_hidden_states=ctx).sample
            attention += model.store.mean_maps(model.att, model.att)[0].float().cpu()
            errors += ((pred.float() - target.float()) ** 2).sum(dim=1).cpu()
        model.store.token_index = None
        gain = (errors[1:] - errors[:1]) / n_timesteps  # error without k minus error with all
        return gain.clamp(min=0).numpy(), (attention / n_timesteps).numpy()


def given_mask(data: ImageData, k: int) -> np.ndarray:
    """The user's GT mask of concept k (`--masks given`)."""
    gt = data.gt[k]
    if gt is None:
        raise InputError(f"--masks given needs a --gt-mask for every concept; {data.tokens[k]} on image {data.file} has none.")
    return gt


def area_change_ok(prev: np.ndarray, new: np.ndarray, factor: float) -> bool:
    """Whether a new mask's area is within `factor` of the previous one (never empty)."""
    a, b = float(prev.sum()), float(new.sum())
    if b == 0:
        return False
    if a == 0:
        return True
    return 1 / factor <= b / a <= factor
