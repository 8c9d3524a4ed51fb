"""The learning loop: token init, mask init from cross-attention, the EM phase
(M-step every step, E-step every `mask_every` steps) and the joint phase.

Knows nothing of the CLI: it reports through an `on_event` callback and writes
only inside its run folder (plus the exported concepts at the end).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InputError, TrainingDiverged
from ..fsutil import append_jsonl, write_yaml_atomic
from ..project import Project
from .attention import AttentionStore, capture_factor, install_capture, normalize_minmax
from .backbone import ModelSource, load_pipeline, pick_device
from .config import LearnConfig
from .losses import attention_loss, masked_diffusion_loss
from .prompts import training_prompt
from .runs import RunDir
from .tokens import ConceptRows, add_concept_tokens
from . import masks as mask_ops
from .checkpoint import load_checkpoint, save_checkpoint
from .export import export_concepts
from .parallel import Parallel

PHASES = ["em", "joint"]


@dataclass
class Event:
    """Progress report: kind is phase | step | estep | checkpoint | done."""

    kind: str
    phase: str = ""
    step: int = 0
    total: int = 0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageData:
    """One project image prepared for training."""

    stem: str
    tokens: list[str]
    background: list[bool]
    rgb: np.ndarray  # S x S x 3 uint8 at the model's resolution
    original_size: tuple[int, int]  # (width, height)
    latents: dict[bool, torch.Tensor]  # flipped? -> (1, C, h, w), scaled
    gt: list[np.ndarray | None]  # per concept, S x S bool


class Learner:
    """Runs the method on a project into a run folder."""

    def __init__(
        self,
        project: Project,
        run: RunDir,
        config: LearnConfig,
        source: ModelSource,
        on_event: Callable[[Event], None] | None = None,
        parallel: Parallel | None = None,
    ):
        self.project = project
        self.run = run
        self.cfg = config
        self.source = source
        self.par = parallel or Parallel()
        self.main = self.par.is_main  # only the main process writes and reports
        self.emit = (on_event if self.main else None) or (lambda e: None)
        self.device = self.par.device(pick_device(config.device))
        self.rng = random.Random(self.par.seed(config.seed))
        self.gen = torch.Generator().manual_seed(self.par.seed(config.seed))
        self.masks: dict[tuple[int, str], np.ndarray] = {}
        self.soft: dict[tuple[int, str], np.ndarray] = {}
        self.iteration = -1
        self.converged = False
        self.timing: dict[str, float] = {"em_seconds": 0.0, "estep_seconds": 0.0, "joint_seconds": 0.0, "em_steps_timed": 0, "joint_steps_timed": 0}

    # -- set-up --------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.cfg
        self.pipe = load_pipeline(self.source)
        pipe = self.pipe
        self.tokenizer, self.text_encoder, self.unet, self.vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
        self.scheduler = _training_scheduler(pipe.scheduler)
        for module in (self.text_encoder, self.unet, self.vae):
            module.requires_grad_(False)
            module.to(self.device)
        self.tokens = self.project.tokens()
        inits = {t: self.project.concept_init(t) for t in self.tokens}
        ids = add_concept_tokens(self.tokenizer, self.text_encoder, self.tokens, inits, seed=cfg.seed)
        self.token_ids = dict(zip(self.tokens, ids))
        self.rows = ConceptRows(self.text_encoder, ids).to(self.device)
        self.size = cfg.image_size or self.unet.config.sample_size * pipe.vae_scale_factor
        self.latent = self.size // pipe.vae_scale_factor
        self.factor = capture_factor(self.unet, self.latent, cfg.attention_resolution)
        self.att = self.latent // self.factor
        self.store = AttentionStore()
        # installed once for the learner's life: recording happens only while
        # store.token_index is set, and gradient checkpointing's recomputation
        # sees the same processors as the forward pass
        install_capture(self.unet, self.store, self.factor)
        self.images = [self._prepare(i) for i in range(len(self.project.images))]
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.text_encoder.gradient_checkpointing_enable()

    def _prepare(self, index: int) -> ImageData:
        from PIL import Image

        entry = self.project.images[index]
        with Image.open(self.project.image_path(entry)) as im:
            im = im.convert("RGB")
            original = im.size
            rgb = np.asarray(im.resize((self.size, self.size), Image.BICUBIC))
        latents = {flip: self._encode(rgb[:, ::-1] if flip else rgb) for flip in (False, True)}
        gt = []
        for c in entry.concepts:
            path = self.project.gt_mask_path(c)
            gt.append(mask_ops.resize_mask(mask_ops.load_mask_png(path), self.size, self.size) if path else None)
        return ImageData(
            stem=entry.stem,
            tokens=[c.token for c in entry.concepts],
            background=[c.background for c in entry.concepts],
            rgb=rgb,
            original_size=original,
            latents=latents,
            gt=gt,
        )

    @torch.no_grad()
    def _encode(self, rgb: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(rgb.copy()).float().permute(2, 0, 1)[None] / 127.5 - 1
        dist = self.vae.encode(x.to(self.device, self.vae.dtype)).latent_dist
        return (dist.mean * self.vae.config.scaling_factor).float()

    # -- text ------------------------------------------------------------------
    def _encode_prompt(self, tokens: list[str], background: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-encoder states of the subset's prompt and the tokens' positions."""
        ids = self._token_ids(training_prompt(tokens, background, self.source.is_builtin))
        positions = []
        for t in tokens:
            hits = (ids[0] == self.token_ids[t]).nonzero()
            if len(hits) == 0:
                raise InputError(f"The prompt for {t} is longer than the model's {self.tokenizer.model_max_length} tokens.")
            positions.append(int(hits[0]))
        return self.text_encoder(ids.to(self.device))[0], torch.tensor([positions])

    def _token_ids(self, prompt: str) -> torch.Tensor:
        """The prompt's token ids, padded to the text encoder's length: (1, L)."""
        return self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids

    # -- masks -----------------------------------------------------------------
    def _mask_tensor(self, image: int, tokens: list[str], size: int, flip: bool) -> torch.Tensor:
        """Masks of tokens area-pooled to size x size: (1, K, size, size)."""
        stack = np.stack([self.masks[(image, t)] for t in tokens]).astype(np.float32)
        if flip:
            stack = stack[:, :, ::-1]
        t = torch.from_numpy(np.ascontiguousarray(stack))[None]
        return torch.nn.functional.adaptive_avg_pool2d(t, size).to(self.device)

    @torch.no_grad()
    def _attention_maps(self, image: int, n_timesteps: int, seed: int) -> np.ndarray:
        """Cross-attention of each concept token, averaged over random timesteps: (K, att, att)."""
        data = self.images[image]
        ctx, positions = self._encode_prompt(data.tokens, data.background)
        gen = torch.Generator().manual_seed(seed)
        ts = torch.randint(self.cfg.mask_t_min, self.cfg.mask_t_max + 1, (n_timesteps,), generator=gen)
        z = data.latents[False]
        total = torch.zeros(len(data.tokens), self.att, self.att)
        chunk = 8
        for start in range(0, n_timesteps, chunk):
            t = ts[start : start + chunk].to(self.device)
            b = len(t)
            noise = torch.randn((b,) + tuple(z.shape[1:]), generator=gen).to(self.device)
            zt = self.scheduler.add_noise(z.expand(b, -1, -1, -1), noise, t)
            self.store.reset()
            self.store.token_index = positions.expand(b, -1)
            with self._autocast():
                self.unet(zt, t, encoder_hidden_states=ctx.expand(b, -1, -1))
            total += self.store.mean_maps(self.att, self.att).float().sum(dim=0).cpu()
        self.store.token_index = None
        return (total / n_timesteps).numpy()

    @torch.no_grad()
    def _error_maps(self, image: int, n_timesteps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """How much each concept token lowers the denoising error, per latent
        pixel (K, h, w), and the tokens' cross-attention in the same passes (K, att, att).

        Eq. 3 read per pixel: the prompt naming all of the image's concepts
        against the same prompt without concept k (see `_reference_context`),
        on shared noise and timesteps; a pixel belongs to the token whose
        removal costs most.
        """
        data = self.images[image]
        ctx_all, full_positions = self._encode_prompt(data.tokens, data.background)
        ctx = torch.cat([ctx_all] + [self._reference_context(data, k) for k in range(len(data.tokens))])
        n = ctx.shape[0]
        gen = torch.Generator().manual_seed(seed)
        z = data.latents[False]
        errors = torch.zeros(n, z.shape[-2], z.shape[-1])
        attention = torch.zeros(len(data.tokens), self.att, self.att)
        for _ in range(n_timesteps):
            t = torch.randint(self.cfg.mask_t_min, self.cfg.mask_t_max + 1, (1,), generator=gen).to(self.device)
            noise = torch.randn(z.shape, generator=gen).to(self.device)
            zt = self.scheduler.add_noise(z, noise, t)
            target = noise if self.scheduler.config.prediction_type == "epsilon" else self.scheduler.get_velocity(z, noise, t)
            self.store.reset()
            self.store.token_index = full_positions.expand(n, -1)  # rows 1.. are read but not used
            with self._autocast():
                pred = self.unet(zt.expand(n, -1, -1, -1), t.expand(n), encoder_hidden_states=ctx).sample
            attention += self.store.mean_maps(self.att, self.att)[0].float().cpu()
            errors += ((pred.float() - target.float()) ** 2).sum(dim=1).cpu()
        self.store.token_index = None
        gain = (errors[1:] - errors[:1]) / n_timesteps  # error without k minus error with all
        return gain.clamp(min=0).numpy(), (attention / n_timesteps).numpy()

    def _reference_context(self, data: ImageData, k: int) -> torch.Tensor:
        """Text states of the image's prompt without concept k (`error_reference: drop`)
        or with k's init word in its place (`init`; "object" when it has none).
        The first E-step always drops k: without `init_steps` its tokens still
        equal their init words, and the init reference would measure nothing."""
        if self.cfg.error_reference == "init" and self.iteration > 0:
            words = list(data.tokens)
            words[k] = self.project.concept_init(data.tokens[k]) or "object"
            background = data.background
        else:
            words = [t for j, t in enumerate(data.tokens) if j != k]
            background = [b for j, b in enumerate(data.background) if j != k]
        prompt = training_prompt(words, background, self.source.is_builtin) if words else ""
        return self.text_encoder(self._token_ids(prompt).to(self.device))[0]

    def _mask_signal(self, image: int, n_timesteps: int, seed: int) -> np.ndarray:
        """The E-step's per-concept soft maps, min-max normalised: (K, att, att).

        The first E-step reads `init_mask_signal`, later ones `mask_signal`:
        the tokens' cross-attention (`attention`), the denoising-error
        reduction of each token (`error`) or the mean of both (`both`).  Min-max, not max
        alone: attention maps have a floor (a background token's is high
        everywhere) that max-normalisation would leave above the threshold.
        """
        signal = self.cfg.mask_signal if self.iteration > 0 else self.cfg.init_mask_signal
        if signal == "attention":
            return normalize_minmax(torch.from_numpy(self._attention_maps(image, n_timesteps, seed))).numpy()
        gain, attention = self._error_maps(image, n_timesteps, seed)
        err = normalize_minmax(torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(gain), self.att))
        if signal == "error":
            return err.numpy()
        return normalize_minmax((err + normalize_minmax(torch.from_numpy(attention))) / 2).numpy()

    def _estep(self, step: int, n_timesteps: int) -> None:
        """Re-estimate every concept's mask; write them as the next iteration."""
        self.iteration += 1
        records = []
        changes = []
        estimates = self._estimate_masks(n_timesteps)
        for i, data in enumerate(self.images):
            maps, new = estimates[i]
            for t, m in zip(data.tokens, maps):
                self.soft[(i, t)] = m
            for k, t in enumerate(data.tokens):
                prev_mask = self.masks.get((i, t))
                mask = new[k]
                if prev_mask is not None and self.cfg.masks == "em" and not _area_ok(prev_mask, mask, self.cfg.area_change_max):
                    mask = prev_mask
                iou_prev = mask_ops.iou(prev_mask, mask) if prev_mask is not None else None
                if iou_prev is not None:
                    changes.append(iou_prev)
                self.masks[(i, t)] = mask
                gt = data.gt[k]
                records.append(
                    {
                        "image": data.stem,
                        "token": t,
                        "area": round(float(mask.mean()), 5),
                        "iou_prev": None if iou_prev is None else round(iou_prev, 5),
                        "iou_gt": None if gt is None else round(mask_ops.iou(mask, gt), 5),
                    }
                )
            if self.main:
                self._write_iteration(i)
        if changes and min(changes) >= self.cfg.mask_converged:
            self.converged = True
        rec = {"kind": "estep", "phase": "em", "step": step, "iteration": self.iteration, "converged": self.converged, "masks": records}
        if self.main:
            append_jsonl(self.run.metrics_path, rec)
        self.emit(Event("estep", "em", step, self.cfg.em_steps, rec))

    def _estimate_masks(self, n_timesteps: int) -> dict[int, tuple[np.ndarray, list[np.ndarray]]]:
        """Soft maps and refined masks of every image (each process does its share)."""
        mine = {}
        for i in self.par.mine(len(self.images)):
            data = self.images[i]
            maps = self._mask_signal(i, n_timesteps, self.cfg.seed * 1000 + self.iteration)
            if self.iteration > 0 and self.cfg.masks == "em":
                prev = np.stack([self.soft[(i, t)] for t in data.tokens])
                maps = self.cfg.mask_momentum * prev + (1 - self.cfg.mask_momentum) * maps
            if self.cfg.masks == "given":
                new = [self._given_mask(i, k) for k in range(len(data.tokens))]
            else:
                new = list(mask_ops.refine_masks(data.rgb, maps, threshold=self.cfg.threshold, use_crf=self.cfg.crf, has_background=any(data.background)))
            mine[i] = (maps, new)
        return {i: v for part in self.par.gather(mine) for i, v in part.items()}

    def _given_mask(self, image: int, k: int) -> np.ndarray:
        gt = self.images[image].gt[k]
        if gt is None:
            data = self.images[image]
            raise InputError(f"--masks given needs a --gt-mask for every concept; {data.tokens[k]} on image {data.stem} has none.")
        return gt

    def _write_iteration(self, image: int) -> None:
        from PIL import Image

        data = self.images[image]
        folder = self.run.iteration_dir(self.iteration) / data.stem
        folder.mkdir(parents=True, exist_ok=True)
        w, h = data.original_size
        full_masks = []
        for t in data.tokens:
            name = t[1:-1]
            mask = mask_ops.resize_mask(self.masks[(image, t)], h, w)
            full_masks.append(mask)
            mask_ops.save_mask_png(mask, folder / f"{name}.png")
            mask_ops.save_soft_png(self.soft[(image, t)], folder / f"{name}_attn.png", size=(w, h))
        with Image.open(self.project.image_path(self.project.images[image])) as im:
            mask_ops.overlay(im.convert("RGB"), full_masks).save(folder / "overlay.png")

    # -- training --------------------------------------------------------------
    def _autocast(self):
        if self.cfg.mixed_precision == "no":
            return torch.autocast(self.device.type, enabled=False)
        dtype = torch.float16 if self.cfg.mixed_precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def _sample_subset(self) -> tuple[int, list[int]]:
        """Union sampling: an image and a random non-empty subset of its concepts."""
        image = self.rng.randrange(len(self.images))
        n = len(self.images[image].tokens)
        k = self.rng.randint(1, n)
        return image, sorted(self.rng.sample(range(n), k))

    def _train_step(self, attn_weight: float | None = None) -> dict[str, float]:
        """One optimiser step on a union sample; `attn_weight` overrides the setting."""
        cfg = self.cfg
        attn_weight = cfg.attn_weight if attn_weight is None else attn_weight
        image, subset = self._sample_subset()
        data = self.images[image]
        tokens = [data.tokens[k] for k in subset]
        flip = cfg.augment != "none" and self.rng.random() < 0.5
        z = data.latents[flip]
        with self._autocast():
            ctx, positions = self._encode_prompt(tokens, [data.background[k] for k in subset])
        noise = torch.randn(z.shape, generator=self.gen).to(self.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (1,), generator=self.gen).to(self.device)
        zt = self.scheduler.add_noise(z, noise, t)
        target = noise if self.scheduler.config.prediction_type == "epsilon" else self.scheduler.get_velocity(z, noise, t)
        self.store.reset()
        self.store.token_index = positions
        with self._autocast():
            pred = self.unet(zt, t, encoder_hidden_states=ctx).sample
        union = self._mask_tensor(image, tokens, self.latent, flip).amax(dim=1, keepdim=True)
        diff = masked_diffusion_loss(pred, target, union)
        maps = self.store.mean_maps(self.att, self.att)
        attn = attention_loss(maps, self._mask_tensor(image, tokens, self.att, flip))
        loss = diff + attn_weight * attn
        if not torch.isfinite(loss):
            raise TrainingDiverged("The loss became NaN; the run stopped and its last good checkpoint is kept (try a lower learning rate).")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # checkpointing recomputes with the token index still set
        self.store.token_index = None
        self.store.reset()
        self.par.average_gradients(self.trainable)
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.opt.step()
        return {"loss": loss.item(), "diffusion": diff.item(), "attention": attn.item()}

    def _make_optimizer(self, phase: str) -> None:
        cfg = self.cfg
        groups = [{"params": [self.rows.rows], "lr": cfg.token_lr if phase == "em" else cfg.joint_token_lr, "weight_decay": 0.0}]
        self.trainable = [self.rows.rows]
        if phase == "joint" and cfg.finetune != "none":
            weights = self._weights_to_tune()
            groups.append({"params": weights, "lr": cfg.weight_lr, "weight_decay": 1e-2})
            self.trainable = self.trainable + weights
        self.par.broadcast_parameters(self.trainable)  # LoRA's random init differs per process
        self.opt = _optimizer(cfg.optimizer, groups)

    def _weights_to_tune(self) -> list[torch.nn.Parameter]:
        if self.cfg.finetune == "full":
            self.unet.requires_grad_(True)
            return [p for p in self.unet.parameters()]
        if not getattr(self.unet, "peft_config", None):
            from peft import LoraConfig

            self.unet.add_adapter(
                LoraConfig(r=self.cfg.lora_rank, lora_alpha=self.cfg.lora_rank, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
            )
        for n, p in self.unet.named_parameters():
            p.requires_grad_("lora_" in n)
        return [p for n, p in self.unet.named_parameters() if "lora_" in n]

    # -- the loop ----------------------------------------------------------------
    def learn(self) -> dict[str, Any]:
        cfg = self.cfg
        self._setup()
        if self.main:
            write_yaml_atomic(self.run.config_path, {"model": self.project.model, "run": self.run.id, **cfg.to_dict()})
        phase, step = "em", 0
        ckpt = load_checkpoint(self.run.checkpoints_dir)
        if ckpt is not None:
            phase, step = self._restore(ckpt)
            if self.main:
                self.run.truncate_metrics(PHASES, phase, step)
            self.emit(Event("resumed", phase, step, cfg.em_steps if phase == "em" else cfg.joint_steps))
        else:
            if cfg.init_steps:
                self._textual_inversion(cfg.init_steps)
            self._make_optimizer("em")
            self._estep(0, cfg.init_mask_timesteps)
        if phase == "em":
            self.emit(Event("phase", "em", step, cfg.em_steps))
            step = self._run_phase("em", step, cfg.em_steps)
            phase, step = "joint", 0
            self._make_optimizer("joint")
        if cfg.finetune != "none" and cfg.joint_steps > 0:
            self.emit(Event("phase", "joint", step, cfg.joint_steps))
            self._run_phase("joint", step, cfg.joint_steps)
        paths = export_concepts(self.project.concepts_dir, self) if self.main else []
        if self.main:
            self.run.set_state(status="finished")
        result = {"run": self.run.id, "iterations": self.iteration, "converged": self.converged, "exported": [str(p) for p in paths], "timing": self.timing}
        self.emit(Event("done", data=result))
        return result

    def _run_phase(self, phase: str, step: int, total: int) -> int:
        cfg = self.cfg
        while step < total:
            started = time.perf_counter()
            losses = self._train_step()
            self.timing[f"{phase}_seconds"] += time.perf_counter() - started
            self.timing[f"{phase}_steps_timed"] += 1
            step += 1
            if self.main:
                append_jsonl(self.run.metrics_path, {"kind": "step", "phase": phase, "step": step, **{k: round(v, 6) for k, v in losses.items()}})
            self.emit(Event("step", phase, step, total, losses))
            if phase == "em" and self._estep_due(step):
                started = time.perf_counter()
                self._estep(step, cfg.mask_timesteps)
                self.timing["estep_seconds"] += time.perf_counter() - started
            if step % cfg.checkpoint_every == 0 or step == total:
                state = self._state(phase, step)  # every process: it gathers their random states
                if self.main:
                    save_checkpoint(self.run.checkpoints_dir, state)
                self.emit(Event("checkpoint", phase, step, total))
        return step

    def _estep_due(self, step: int) -> bool:
        cfg = self.cfg
        if cfg.masks != "em" or self.converged or step < cfg.em_warmup:
            return False
        return (step - cfg.em_warmup) % cfg.mask_every == 0

    def _textual_inversion(self, steps: int) -> None:
        """Unmasked token warm-up: whole-image masks for every concept."""
        for i, data in enumerate(self.images):
            for t in data.tokens:
                self.masks[(i, t)] = np.ones((self.size, self.size), dtype=bool)
        self._make_optimizer("em")
        for _ in range(steps):
            self._train_step(attn_weight=0.0)
        self.masks.clear()

    # -- checkpoints -------------------------------------------------------------
    def _state(self, phase: str, step: int) -> dict[str, Any]:
        state = {
            "phase": phase,
            "step": step,
            "iteration": self.iteration,
            "converged": self.converged,
            "rows": self.rows.rows.detach().cpu(),
            "opt": self.opt.state_dict(),
            "masks": {f"{i}|{t}": m for (i, t), m in self.masks.items()},
            "soft": {f"{i}|{t}": m for (i, t), m in self.soft.items()},
            "streams": self.par.gather((self.rng.getstate(), self.gen.get_state())),  # per process, rank order
        }
        if phase == "joint" and self.cfg.finetune != "none":
            state["weights"] = {n: p.detach().cpu() for n, p in self.unet.named_parameters() if p.requires_grad}
        return state

    def _restore(self, state: dict[str, Any]) -> tuple[str, int]:
        phase, step = state["phase"], state["step"]
        with torch.no_grad():
            self.rows.rows.copy_(state["rows"])
        self.iteration, self.converged = state["iteration"], state["converged"]
        self.masks = {_key(k): v for k, v in state["masks"].items()}
        self.soft = {_key(k): v for k, v in state["soft"].items()}
        streams = state.get("streams") or [(state["rng"], state["gen"])]  # older checkpoints: rank 0's only
        if len(streams) == self.par.world or self.main:  # each process continues its own stream
            rng_state, gen_state = streams[self.par.rank if len(streams) == self.par.world else 0]
            self.rng.setstate(rng_state)
            self.gen.set_state(gen_state)
        else:  # another group size: fresh streams for the other processes
            self.rng.seed(self.par.seed(self.cfg.seed) + state["step"])
            self.gen.manual_seed(self.par.seed(self.cfg.seed) + state["step"])
        if phase == "em" and step >= self.cfg.em_steps:
            phase, step = "joint", 0
            self._make_optimizer("joint")
            return phase, step
        self._make_optimizer(phase)
        if "weights" in state:
            params = dict(self.unet.named_parameters())
            with torch.no_grad():
                for n, v in state["weights"].items():
                    params[n].copy_(v)
        self.opt.load_state_dict(state["opt"])
        return phase, step


def _key(text: str) -> tuple[int, str]:
    i, t = text.split("|", 1)
    return int(i), t


def _area_ok(prev: np.ndarray, new: np.ndarray, factor: float) -> bool:
    a, b = float(prev.sum()), float(new.sum())
    if b == 0:
        return False
    if a == 0:
        return True
    return 1 / factor <= b / a <= factor


def _training_scheduler(scheduler):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config)


def _optimizer(name: str, groups: list[dict]) -> torch.optim.Optimizer:
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise InputError("--optimizer adamw8bit needs bitsandbytes: pip install 'conceptforge[bnb]'.") from None
        return bnb.optim.AdamW8bit(groups)
    return torch.optim.AdamW(groups)
