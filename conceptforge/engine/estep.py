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
from .data import Conditioning, ImageData, Prompts
from .parallel import Parallel

MaskKey = tuple[int, str]  # (image index, token)
BATCH_TARGET = 16  # UNet batch of an E-step pass: timesteps x prompts (CPU throughput levels off above)


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
        self.harvested: dict[MaskKey, tuple[np.ndarray, int]] = {}  # attention of training steps since the last E-step

    # -- attention harvested from the training steps -------------------------------
    def record(self, image: int, tokens: list[str], maps: torch.Tensor, flipped: bool, t: int) -> None:
        """Keep the cross-attention a training step computed anyway (K, att, att),
        when its noise level lies in the E-step's timestep range."""
        if not self.cfg.mask_t_min <= t <= self.cfg.mask_t_max:
            return
        maps = maps.detach().float().cpu().numpy()
        if flipped:
            maps = maps[:, :, ::-1]
        for token, m in zip(tokens, maps):
            total, count = self.harvested.get((image, token), (0.0, 0))
            self.harvested[(image, token)] = (total + m, count + 1)

    def harvested_maps(self, image: int) -> np.ndarray | None:
        """Mean harvested attention of every concept of an image (K, att, att),
        or None when a concept has none since the last E-step."""
        entries = [self.harvested.get((image, t)) for t in self.images[image].tokens]
        if any(e is None for e in entries):
            return None
        return np.stack([total / count for total, count in entries]).astype(np.float32)

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
            if previous is not None and cfg.estep_skip_settled and self.settled(i, previous):
                mine[i] = (np.stack([previous.soft[(i, t)] for t in data.tokens]), [previous.masks[(i, t)] for t in data.tokens])
                continue
            maps = self.signal(i, iteration, n_timesteps, seed=cfg.seed * 1000 + iteration)
            if previous is not None and cfg.masks == "em" and cfg.mask_momentum > 0:
                prev = np.stack([previous.soft[(i, t)] for t in data.tokens])
                maps = cfg.mask_momentum * prev + (1 - cfg.mask_momentum) * maps
            if cfg.masks == "given":
                new = [given_mask(data, k) for k in range(len(data.tokens))]
            else:
                new = list(
                    mask_ops.refine_masks(
                        data.rgb, maps, threshold=cfg.threshold, use_crf=cfg.crf, has_background=data.has_background, method=cfg.crf_method
                    )
                )
            mine[i] = (maps, new)
        self.harvested.clear()
        return {i: v for part in self.par.gather(mine) for i, v in part.items()}

    def settled(self, image: int, previous: EStepResult) -> bool:
        """Whether an image's masks stopped moving: at the previous E-step every one
        of its concepts kept at least `mask_converged` IoU and none was refused."""
        stem = self.images[image].stem
        mine = [r for r in previous.records if r["image"] == stem]
        return bool(mine) and all(r["iou_prev"] is not None and r["iou_prev"] >= self.cfg.mask_converged and not r.get("refused") for r in mine)

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
            harvested = self.harvested_maps(image) if iteration > 0 and self.cfg.attention_source == "harvest" else None
            attention = harvested if harvested is not None else self.attention_maps(image, n_timesteps, seed)
            return normalize_minmax(torch.from_numpy(attention)).numpy()
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
        cond, positions = self.prompts.encode(data.tokens, data.background)
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
                model.unet(zt, t, **cond.expand(b).unet_kwargs())
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
        cond_all, positions = self.prompts.encode(data.tokens, data.background)
        cond = Conditioning.cat([cond_all] + [self.prompts.reference(data, k, use_init) for k in range(len(data.tokens))])
        n = cond.hidden.shape[0]
        gen = torch.Generator().manual_seed(seed)
        z = data.latents[False]
        draws = [(self._timesteps(1, gen), torch.randn(z.shape, generator=gen)) for _ in range(n_timesteps)]
        errors = torch.zeros(n, z.shape[-2], z.shape[-1])
        attention = torch.zeros(len(data.tokens), model.att, model.att)
        per_call = max(1, BATCH_TARGET // n)  # timesteps per UNet call: batches of about BATCH_TARGET
        for start in range(0, n_timesteps, per_call):
            chunk = draws[start : start + per_call]
            t = torch.cat([d[0] for d in chunk]).to(model.device)
            noise = torch.cat([d[1] for d in chunk]).to(model.device)
            zt = model.scheduler.add_noise(z.expand(len(chunk), -1, -1, -1), noise, t)
            target = model.target(z.expand(len(chunk), -1, -1, -1), noise, t)
            model.store.reset()
            model.store.token_index = positions.expand(n * len(chunk), -1)  # rows of the reference prompts are read but not used
            with model.autocast():
                pred = model.unet(
                    zt.repeat_interleave(n, dim=0), t.repeat_interleave(n), **cond.repeat(len(chunk)).unet_kwargs()
                ).sample
            maps = model.store.mean_maps(model.att, model.att).float().cpu()
            attention += maps[::n].sum(dim=0)  # the full prompt of each timestep
            sq = ((pred.float() - target.repeat_interleave(n, dim=0).float()) ** 2).sum(dim=1).cpu()
            errors += sq.reshape(len(chunk), n, *sq.shape[-2:]).sum(dim=0)
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
