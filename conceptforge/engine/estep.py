"""The E-step: each concept's mask re-estimated from the model (step 2 and the
E-step of step 3 in DESIGN.md).

Per image: a soft map per concept from the chosen signal (cross-attention,
the per-pixel rise of the denoising error when the concept is left out of the
prompt, or their mean), momentum across E-steps, a joint assignment of the
object concepts that compete for the image's regions (`assign.assign_regions`,
`mask_assignment`), threshold + DenseCRF (`masks.refine_masks`; once more with
the image's ground raised in the map of a background concept that lost it,
`assign.raise_lost_ground`), then guards:
a new mask whose area changes by more than `area_change_max` is refused and
the previous one kept.  Masks converge when every image has settled: at
`estep_settle_passes` fresh re-estimates in a row, every concept's new mask
overlapped its previous one by at least `mask_converged` IoU and no update was
refused.  Writes nothing to disk.

Cost: the attention signal of later E-steps is harvested from the training
steps (no UNet pass).  The error signal needs a dedicated pass per image
(`mask_timesteps` x (K + 1) UNet samples); with `estep_passes_per_step` set,
later E-steps spend at most that many samples per training sample since the
previous E-step (unspent credit carries over), refreshing the images whose
error maps are oldest first (with fewer timesteps, down to
MIN_REFRESH_TIMESTEPS, where the credit does not pay for all); the others keep
their masks until their turn (their last error signal with the attention
harvested since made masks flip between E-steps without ever settling).  So
the E-step cost follows the training steps, not the number of images.  With
`error_memory` an image's error signal pools its passes so far (`ErrorSignal`),
so a short later pass does not outweigh the first E-step's longer one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from . import masks as mask_ops
from .assign import assign_regions, image_parts, raise_lost_ground
from .attention import normalize_minmax
from .bundle import ModelBundle
from .config import LearnConfig
from .data import Conditioning, ImageData, Prompts
from .parallel import Parallel

MaskKey = tuple[int, str]  # (image index, token)
MIN_REFRESH_TIMESTEPS = 4  # fewest timesteps of a budgeted error pass (fewer give a noisy signal)
BATCH_TARGET = 16  # UNet batch of an E-step pass: timesteps x prompts (CPU throughput levels off above)


@dataclass
class ErrorSignal:
    """An image's error signal: the mean rise of the denoising error per concept
    (K, att, att), pooled over `weight` timesteps (`error_memory`)."""

    raw: np.ndarray
    weight: float

    @property
    def normalized(self) -> np.ndarray:
        """Min-max normalised per concept: the signal's maps."""
        return normalize_minmax(torch.from_numpy(self.raw)).numpy()

    def pooled(self, older: ErrorSignal | None, keep: float) -> ErrorSignal:
        """This pass pooled with an `older` signal whose timesteps count `keep` times each."""
        if older is None or keep <= 0:
            return self
        w = keep * older.weight
        return ErrorSignal(((w * older.raw + self.weight * self.raw) / (w + self.weight)).astype(np.float32), w + self.weight)


@dataclass
class EStepResult:
    """Masks and soft maps of every concept after one E-step, with per-concept figures."""

    iteration: int
    masks: dict[MaskKey, np.ndarray]
    soft: dict[MaskKey, np.ndarray]
    records: list[dict[str, Any]] = field(default_factory=list)
    converged: bool = False
    refused: int = 0
    step: int = 0  # EM-phase training steps done when this E-step ran
    error: dict[int, ErrorSignal] = field(default_factory=dict)  # per image: its error signal as last computed
    refreshed: dict[int, int] = field(default_factory=dict)  # per image: E-step of that error signal
    credit: float = 0.0  # UNet samples later E-steps may still spend on error passes
    settled: set[int] = field(default_factory=set)  # images whose masks stopped moving (see MaskEstimator.estimate)
    steady: dict[int, int] = field(default_factory=dict)  # per image: fresh re-estimates in a row that left its masks steady
    drawn: dict[MaskKey, np.ndarray] = field(default_factory=dict)  # the maps the masks were refined from (after the joint assignment)


def plan_refresh(
    candidates: list[int], prompts: dict[int, int], refreshed: dict[int, int], credit: float, timesteps: int
) -> tuple[dict[int, int], float]:
    """Images whose error signal an E-step recomputes, oldest first, with how
    many timesteps each (an image's pass costs timesteps x its prompts), and
    the credit left.  An image gets `timesteps` when the credit pays for them,
    else as many as it pays for down to MIN_REFRESH_TIMESTEPS; below that the
    plan stops (so a costly image is not passed over for ever)."""
    chosen: dict[int, int] = {}
    least = min(timesteps, MIN_REFRESH_TIMESTEPS)
    for i in sorted(candidates, key=lambda i: (refreshed.get(i, -1), i)):
        n = min(timesteps, int(credit // prompts[i]))
        if n < least:
            break
        chosen[i] = n
        credit -= n * prompts[i]
    return chosen, credit


class MaskEstimator:
    """Computes E-steps for a fixed set of images with the current tokens."""

    def __init__(self, model: ModelBundle, images: list[ImageData], cfg: LearnConfig, parallel: Parallel | None = None) -> None:
        self.model = model
        self.images = images
        self.cfg = cfg
        self.prompts = Prompts(model)
        self.par = parallel or Parallel()
        self.harvested: dict[MaskKey, tuple[np.ndarray, int]] = {}  # attention of training steps since the last E-step
        self._parts: dict[int, list[np.ndarray]] = {}  # per image: its objects on the maps' grid (assign.image_parts)

    # -- attention harvested from the training steps -------------------------------
    @property
    def harvests(self) -> bool:
        """Whether later E-steps read the training steps' attention: the `attention` signal
        with `attention_source: harvest` (`both` takes its attention from its own error pass)."""
        return self.cfg.masks == "em" and self.cfg.mask_signal == "attention" and self.cfg.attention_source == "harvest"

    def record(self, image: int, tokens: list[str], maps: torch.Tensor, flipped: bool, t: int) -> None:
        """Keep the cross-attention a training step computed anyway (K, att, att),
        when its noise level lies in the E-step's timestep range and a later E-step
        reads it (`harvests`)."""
        if not self.harvests or not self.cfg.mask_t_min <= t <= self.cfg.mask_t_max:
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
    def estimate(self, iteration: int, previous: EStepResult | None = None, step: int = 0) -> EStepResult:
        """E-step number `iteration` (0: the initial masks) given the previous one,
        after `step` EM-phase training steps."""
        cfg = self.cfg
        refresh, credit = self._refresh_plan(iteration, previous, step)
        maps_and_masks = self._all_images(iteration, previous, refresh)
        masks: dict[MaskKey, np.ndarray] = {}
        soft: dict[MaskKey, np.ndarray] = {}
        records: list[dict[str, Any]] = []
        refused = 0
        settled: set[int] = set()
        counts: dict[int, int] = {}
        drawn: dict[MaskKey, np.ndarray] = {}
        for i, data in enumerate(self.images):
            maps, new, _, refined_from = maps_and_masks[i]
            steady = previous is not None
            for k, t in enumerate(data.tokens):
                soft[(i, t)] = maps[k]
                drawn[(i, t)] = refined_from[k]
                prev = previous.masks.get((i, t)) if previous is not None else None
                mask = new[k]
                was_refused = prev is not None and cfg.masks == "em" and not area_change_ok(prev, mask, cfg.area_change_max)
                if was_refused:
                    mask = prev
                    refused += 1
                iou_prev = mask_ops.iou(prev, mask) if prev is not None else None
                steady = steady and not was_refused and iou_prev is not None and iou_prev >= cfg.mask_converged
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
            # an image without a fresh error pass only keeps the count it had: its kept
            # masks do not move, which says nothing about convergence
            fresh = refresh is None or i in refresh
            before = previous.steady.get(i, 0) if previous is not None else 0
            count = (before + 1 if fresh else before) if steady else 0
            if count:
                counts[i] = count
            if count >= cfg.estep_settle_passes:
                settled.add(i)
        converged = previous is not None and len(settled) == len(self.images)
        error = dict(previous.error) if previous is not None else {}
        refreshed = dict(previous.refreshed) if previous is not None else {}
        for i, (_, _, err, _) in maps_and_masks.items():
            if err is not None:
                error[i], refreshed[i] = err, iteration
        return EStepResult(iteration, masks, soft, records, converged, refused, step, error, refreshed, credit, settled, counts, drawn)

    def _refresh_plan(self, iteration: int, previous: EStepResult | None, step: int) -> tuple[dict[int, int] | None, float]:
        """The images whose error signal this E-step recomputes, with their
        timesteps (None: every image it re-estimates, with `mask_timesteps`) and
        the credit left; the same on every process."""
        rate = self.cfg.estep_passes_per_step
        if iteration == 0 or previous is None or math.isinf(rate) or self.cfg.mask_signal == "attention":
            return None, 0.0
        prompts = {i: len(d.tokens) + 1 for i, d in enumerate(self.images)}
        credit = previous.credit + rate * self.cfg.batch_size * max(0, step - previous.step)
        credit = min(credit, float(self.cfg.mask_timesteps * sum(prompts.values())))  # at most one round of every image
        candidates = [i for i in range(len(self.images)) if not (self.cfg.estep_skip_settled and self.settled(i, previous))]
        return plan_refresh(candidates, prompts, previous.refreshed, credit, self.cfg.mask_timesteps)

    def _all_images(
        self, iteration: int, previous: EStepResult | None, refresh: dict[int, int] | None = None
    ) -> dict[int, tuple[np.ndarray, list[np.ndarray], ErrorSignal | None, np.ndarray]]:
        """Soft maps, refined masks, (where recomputed) the error signal and the
        maps the masks were refined from, of every image (each process does its share)."""
        cfg = self.cfg
        mine = {}
        n_timesteps = cfg.init_mask_timesteps if iteration == 0 else cfg.mask_timesteps
        for i in self.par.mine(len(self.images)):
            data = self.images[i]
            if previous is not None and cfg.estep_skip_settled and self.settled(i, previous):
                mine[i] = self._unchanged(i, previous)
                continue
            seed = cfg.seed * 1000 + iteration
            if refresh is None or i in refresh:
                older = previous.error.get(i) if previous is not None and cfg.masks == "em" else None
                maps, err = self.signal_and_error(i, iteration, n_timesteps if refresh is None else refresh[i], seed, older)
            else:  # no fresh error pass: the image keeps its masks until one comes
                mine[i] = self._unchanged(i, previous)
                continue
            if previous is not None and cfg.masks == "em" and cfg.mask_momentum > 0:
                prev = np.stack([previous.soft[(i, t)] for t in data.tokens])
                maps = cfg.mask_momentum * prev + (1 - cfg.mask_momentum) * maps
            drawn = maps
            if cfg.masks == "given":
                new = [given_mask(data, k) for k in range(len(data.tokens))]
            else:
                backgrounds = [k for k, bg in enumerate(data.background) if bg]
                for group in assignment_groups(data, cfg.mask_assignment):
                    last = [previous.masks[(i, data.tokens[k])] for k in group] if previous is not None and cfg.masks == "em" else None
                    drawn = assign_regions(
                        drawn, group, cfg.threshold, self.image_objects(i, drawn.shape[-1]) if cfg.assignment_regions == "image" else None,
                        previous=last, stay=cfg.assignment_stay, backgrounds=backgrounds,
                        score=cfg.assignment_score,
                    )
                new = self._refine(i, drawn)
                if cfg.assignment_regions == "image":  # a background that lost the image's ground to an object gets it back
                    raised = raise_lost_ground(drawn, new, self.image_objects(i, drawn.shape[-1]), backgrounds, cfg.threshold)
                    if raised is not None:
                        drawn, new = raised, self._refine(i, raised)
            mine[i] = (maps, new, err, drawn)
        self.harvested.clear()
        return {i: v for part in self.par.gather(mine) for i, v in part.items()}

    def _refine(self, image: int, maps: np.ndarray) -> list[np.ndarray]:
        """An image's masks from its maps: threshold + DenseCRF (`masks.refine_masks`)."""
        cfg, data = self.cfg, self.images[image]
        return list(mask_ops.refine_masks(data.rgb, maps, threshold=cfg.threshold, use_crf=cfg.crf, has_background=data.has_background, method=cfg.crf_method))

    def image_objects(self, image: int, side: int) -> list[np.ndarray]:
        """An image's objects on the maps' side x side grid, cut once per run (`assign.image_parts`)."""
        if image not in self._parts:
            self._parts[image] = image_parts(self.images[image].rgb, side)
        return self._parts[image]

    def _unchanged(self, image: int, previous: EStepResult) -> tuple[np.ndarray, list[np.ndarray], None, np.ndarray]:
        """An image's soft maps, masks and the maps they were refined from, as the previous E-step left them."""
        tokens = self.images[image].tokens
        soft = np.stack([previous.soft[(image, t)] for t in tokens])
        drawn = np.stack([previous.drawn[(image, t)] for t in tokens]) if previous.drawn else soft
        return soft, [previous.masks[(image, t)] for t in tokens], None, drawn

    def settled(self, image: int, previous: EStepResult) -> bool:
        """Whether an image's masks stopped moving: at its last `estep_settle_passes`
        re-estimates (with a fresh error pass, where the signal has one) every one of
        its concepts kept at least `mask_converged` IoU and none was refused."""
        return image in previous.settled

    # -- signals -------------------------------------------------------------------
    def signal(self, image: int, iteration: int, n_timesteps: int, seed: int) -> np.ndarray:
        """Per-concept soft maps of one image, min-max normalised: (K, att, att)
        (see `signal_and_error`)."""
        return self.signal_and_error(image, iteration, n_timesteps, seed)[0]

    def signal_and_error(
        self, image: int, iteration: int, n_timesteps: int, seed: int, older: ErrorSignal | None = None
    ) -> tuple[np.ndarray, ErrorSignal | None]:
        """Per-concept soft maps of one image, min-max normalised: (K, att, att),
        and the error signal computed on the way, pooled with the `older` one
        as `error_memory` says (None for `attention`).

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
            return normalize_minmax(torch.from_numpy(attention)).numpy(), None
        gain, attention = self.error_maps(image, n_timesteps, seed, use_init=self._init_reference(iteration))
        fresh = ErrorSignal(torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(gain), self.model.att).numpy(), float(n_timesteps))
        signal = fresh.pooled(older, self.cfg.error_memory)
        err = signal.normalized
        return (err if kind == "error" else combine(err, attention)), signal

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
            model.store.reset()
            model.store.token_index = positions.expand(n * len(chunk), -1)  # rows of the reference prompts are read but not used
            errors += denoising_errors(model, z, cond, t, noise)
            maps = model.store.mean_maps(model.att, model.att).float().cpu()
            attention += maps[::n].sum(dim=0)  # the full prompt of each timestep
        model.store.token_index = None
        gain = (errors[1:] - errors[:1]) / n_timesteps  # error without k minus error with all
        return gain.clamp(min=0).numpy(), (attention / n_timesteps).numpy()


def denoising_errors(model: ModelBundle, z: torch.Tensor, cond: Conditioning, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Squared denoising error per prompt and latent pixel (P, h, w), summed over the
    timesteps `t` (B,) and their `noise` (B, C, h, w), of latents `z` (1, C, h, w) under
    each of the P prompts of `cond`: one UNet call of batch B x P (the caller sets up
    the attention store around it)."""
    n, b = cond.hidden.shape[0], len(t)
    zt = model.scheduler.add_noise(z.expand(b, -1, -1, -1), noise, t)
    target = model.target(z.expand(b, -1, -1, -1), noise, t)
    with model.autocast():
        pred = model.unet(zt.repeat_interleave(n, dim=0), t.repeat_interleave(n), **cond.repeat(b).unet_kwargs()).sample
    sq = ((pred.float() - target.repeat_interleave(n, dim=0).float()) ** 2).sum(dim=1).cpu()
    return sq.reshape(b, n, *sq.shape[-2:]).sum(dim=0)


def assignment_groups(data: ImageData, mode: str) -> list[list[int]]:
    """The groups of an image's object concepts that compete for its regions:
    all of them (`joint`), those sharing an init word (`same-word`), none
    (`independent`)."""
    objects = [k for k, bg in enumerate(data.background) if not bg]
    if mode == "joint":
        return [objects]
    if mode == "same-word":
        by_word: dict[str, list[int]] = {}
        for k in objects:
            if data.inits[k]:
                by_word.setdefault(data.inits[k].lower(), []).append(k)
        return [g for g in by_word.values() if len(g) > 1]
    return []


def combine(error: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """The `both` signal: mean of the min-max normalised error signal and attention."""
    att = normalize_minmax(torch.from_numpy(np.asarray(attention, np.float32)))
    return normalize_minmax((torch.from_numpy(error) + att) / 2).numpy()


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
