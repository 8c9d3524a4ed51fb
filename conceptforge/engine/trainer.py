"""The trainer: M-steps on union samples, E-steps on schedule, the two phases,
the optimiser, and events for its subscribers (run writer, progress display).

It is given the model, the images and the mask estimator; it builds none of
them and writes nothing itself.  The loss is `losses.method_loss`.
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import torch

from ..errors import InputError, TrainingDiverged
from .bundle import ModelBundle
from .config import LearnConfig
from .data import Conditioning, ImageData, Prompts, encode_image
from .estep import ErrorSignal, EStepResult, MaskEstimator
from .events import Event, EventBus
from .losses import method_loss
from .parallel import Parallel

PHASES = ("em", "joint")
# a concept row or trained weight beyond this magnitude has diverged (text
# embedding entries are of order 0.01-1)
MAX_PARAMETER_MAGNITUDE = 1e3
CROP_SCALE = (0.6, 1.0)  # side of the random crop of `augment: full`, as a fraction of the image


class Trainer:
    """Runs the method on prepared images with a loaded model."""

    def __init__(
        self,
        model: ModelBundle,
        images: list[ImageData],
        cfg: LearnConfig,
        estimator: MaskEstimator | None = None,
        parallel: Parallel | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.model = model
        self.images = images
        self.cfg = cfg
        self.par = parallel or Parallel()
        self.estimator = estimator or MaskEstimator(model, images, cfg, self.par)
        self.prompts = Prompts(model)
        self.emit = (events if self.par.is_main else None) or EventBus()
        self.rng = random.Random(self.par.seed(cfg.seed))
        self.gen = torch.Generator().manual_seed(self.par.seed(cfg.seed))
        self.estep_result: EStepResult | None = None
        self.phase = "em"
        self.step = 0
        self.last_checkpoint: tuple[str, int] | None = None
        self.weights: list[torch.nn.Parameter] = []
        self.opt: torch.optim.Optimizer | None = None
        self.scaler = torch.amp.GradScaler(model.device.type, enabled=cfg.mixed_precision == "fp16")
        self.timing: dict[str, float] = {
            "first_estep_seconds": 0.0, "em_seconds": 0.0, "estep_seconds": 0.0, "joint_seconds": 0.0, "em_steps_timed": 0, "joint_steps_timed": 0,
        }

    # -- masks ---------------------------------------------------------------------
    @property
    def masks(self) -> dict[tuple[int, str], np.ndarray]:
        return self.estep_result.masks if self.estep_result else {}

    @property
    def iteration(self) -> int:
        return self.estep_result.iteration if self.estep_result else -1

    @property
    def converged(self) -> bool:
        return bool(self.estep_result and self.estep_result.converged)

    def run_estep(self) -> EStepResult:
        """Re-estimate every concept's mask and report it."""
        started = time.perf_counter()
        result = self.estimator.estimate(self.iteration + 1, self.estep_result, step=self.step)  # E-steps run in the EM phase only
        self.estep_result = result
        self.timing["estep_seconds" if result.iteration > 0 else "first_estep_seconds"] += time.perf_counter() - started
        rec = {"kind": "estep", "phase": "em", "step": self.step, "iteration": result.iteration, "converged": result.converged, "masks": result.records}
        self.emit(Event("estep", "em", self.step, self.cfg.em_steps, rec, payload=result))
        return result

    def estep_due(self, step: int) -> bool:
        return self.cfg.masks == "em" and not self.converged and step in self._estep_steps

    # -- one M-step ----------------------------------------------------------------
    def sample_subset(self) -> tuple[int, list[int]]:
        """Union sampling: an image and a random non-empty subset of its concepts."""
        image = self.rng.randrange(len(self.images))
        n = len(self.images[image].tokens)
        k = self.rng.randint(1, n)
        return image, sorted(self.rng.sample(range(n), k))

    def train_step(self, attn_weight: float | None = None) -> dict[str, float]:
        """One optimiser step on `batch_size` union samples; `attn_weight` overrides the setting."""
        cfg, model = self.cfg, self.model
        attn_weight = cfg.attn_weight if attn_weight is None else attn_weight
        batch = [self.sample() for _ in range(cfg.batch_size)]
        kmax = max(len(s["tokens"]) for s in batch)
        z = torch.cat([s["latent"] for s in batch])
        with model.autocast():
            encoded = [self.prompts.encode(s["tokens"], s["background"]) for s in batch]
        cond = Conditioning.cat([c for c, _ in encoded])
        positions = torch.stack([_pad(p[0], kmax) for _, p in encoded])
        valid = torch.stack([_pad(torch.ones(len(s["tokens"])), kmax, 0.0) for s in batch]).to(model.device)
        masks = torch.stack([_pad_masks(s["masks"], kmax) for s in batch]).to(model.device)
        noise = torch.randn(z.shape, generator=self.gen).to(model.device)
        t = torch.randint(0, model.num_train_timesteps, (len(batch),), generator=self.gen).to(model.device)
        zt = model.scheduler.add_noise(z, noise, t)
        target = model.target(z, noise, t)
        model.store.reset()
        model.store.token_index = positions
        with model.autocast():
            pred = model.unet(zt, t, **cond.unet_kwargs()).sample
        maps = model.store.mean_maps(model.att, model.att)
        for b, s in enumerate(batch):
            if not s["cropped"]:
                self.estimator.record(s["image"], s["tokens"], maps[b, : len(s["tokens"])], s["flipped"], int(t[b]))
        terms = method_loss(pred, target, maps, masks, valid, attn_weight, cfg.objective)
        if not torch.isfinite(terms.total):
            model.store.token_index = None
            raise TrainingDiverged(self._diverged_message("The loss became NaN or infinite"))
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()  # checkpointing recomputes with the token index still set
        model.store.token_index = None
        model.store.reset()
        self.par.average_gradients(self.trainable)
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.scaler.step(self.opt)
        self.scaler.update()
        return terms.as_floats()

    def sample(self) -> dict[str, Any]:
        """One union sample with its augmentation: latent, tokens and full-size masks."""
        cfg = self.cfg
        image, subset = self.sample_subset()
        data = self.images[image]
        tokens = [data.tokens[k] for k in subset]
        stack = np.stack([self.masks[(image, t)] for t in tokens])
        flip = cfg.augment != "none" and self.rng.random() < 0.5
        if cfg.augment == "full":
            box = self._crop_box()
            rgb = _crop_resize(data.rgb[:, ::-1] if flip else data.rgb, box, self.model.size)
            latent = encode_image(self.model, rgb)
            stack = np.stack([_crop_resize_mask(m[:, ::-1] if flip else m, box, self.model.size) for m in stack])
        else:
            latent = data.latents[flip]
            if flip:
                stack = stack[:, :, ::-1]
        return {
            "image": image,
            "flipped": flip,
            "cropped": cfg.augment == "full",
            "latent": latent,
            "tokens": tokens,
            "background": [data.background[k] for k in subset],
            "masks": torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32)),
        }

    def _crop_box(self) -> tuple[int, int, int]:
        """(top, left, side) of a random square crop of `augment: full`."""
        size = self.model.size
        side = max(8, round(size * self.rng.uniform(*CROP_SCALE)))
        return self.rng.randint(0, size - side), self.rng.randint(0, size - side), side

    # -- optimiser -----------------------------------------------------------------
    def make_optimizer(self, phase: str) -> None:
        cfg = self.cfg
        rows = self.model.concept_parameters
        groups = [{"params": rows, "lr": cfg.token_lr if phase == "em" else cfg.joint_token_lr, "weight_decay": 0.0}]
        self.weights = []
        if phase == "joint" and cfg.finetune != "none":
            self.weights = self._weights_to_tune()
            groups.append({"params": self.weights, "lr": cfg.weight_lr, "weight_decay": 1e-2})
        self.trainable = rows + self.weights
        self.par.broadcast_parameters(self.trainable)
        self.opt = make_optimizer(cfg.optimizer, groups)

    def _weights_to_tune(self) -> list[torch.nn.Parameter]:
        unet = self.model.unet
        if self.cfg.finetune == "full":
            unet.requires_grad_(True)
            return list(unet.parameters())
        if not getattr(unet, "peft_config", None):
            from peft import LoraConfig

            # LoRA's random initialisation draws from torch's global generator: seed it
            # from the run's seed so that the same seed gives the same weights
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.seed)
                unet.add_adapter(
                    LoraConfig(r=self.cfg.lora_rank, lora_alpha=self.cfg.lora_rank, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])
                )
        for n, p in unet.named_parameters():
            p.requires_grad_("lora_" in n)
        return [p for n, p in unet.named_parameters() if "lora_" in n]

    # -- the loop ------------------------------------------------------------------
    def start(self) -> None:
        """A fresh run: optional unmasked warm-up, then the initial masks (E-step 0)."""
        if self.cfg.init_steps:
            self._textual_inversion(self.cfg.init_steps)
        self.make_optimizer("em")
        self.phase, self.step = "em", 0
        self.run_estep()

    def run(self) -> dict[str, Any]:
        """Both phases from wherever the trainer stands (after `start` or `restore`)."""
        cfg = self.cfg
        self._estep_steps = set(cfg.estep_steps())
        if self.phase == "em":
            self.emit(Event("phase", "em", self.step, cfg.em_steps))
            self._run_phase("em", cfg.em_steps)
            self.phase, self.step = "joint", 0
            self.make_optimizer("joint")
        if cfg.finetune != "none" and cfg.joint_steps > 0:
            self.emit(Event("phase", "joint", self.step, cfg.joint_steps))
            self._run_phase("joint", cfg.joint_steps)
        self.check_parameters("the export")
        return {"iterations": self.iteration + 1, "converged": self.converged, "timing": self.timing}

    def _run_phase(self, phase: str, total: int) -> None:
        cfg = self.cfg
        while self.step < total:
            started = time.perf_counter()
            losses = self.train_step()
            self.timing[f"{phase}_seconds"] += time.perf_counter() - started
            self.timing[f"{phase}_steps_timed"] += 1
            self.step += 1
            self.emit(Event("step", phase, self.step, total, losses))
            if phase == "em" and self.estep_due(self.step):
                self.run_estep()
            if self.step % cfg.checkpoint_every == 0 or self.step == total:
                self.check_parameters(f"the checkpoint at step {self.step}")
                state = self.state_dict()  # every process: it gathers their random states
                self.emit(Event("checkpoint", phase, self.step, total, {"timing": dict(self.timing)}, payload=state))
                self.last_checkpoint = (phase, self.step)

    def _textual_inversion(self, steps: int) -> None:
        """Unmasked token warm-up: whole-image masks for every concept."""
        whole = {(i, t): np.ones((self.model.size, self.model.size), dtype=bool) for i, d in enumerate(self.images) for t in d.tokens}
        self.estep_result = EStepResult(-1, whole, {})
        self.make_optimizer("em")
        for _ in range(steps):
            self.train_step(attn_weight=0.0)
        self.estep_result = None

    # -- divergence ----------------------------------------------------------------
    def check_parameters(self, before: str) -> None:
        """Refuse non-finite or absurdly large concept rows or trained weights."""
        for name, tensor in [("the concept tokens", r) for r in self.model.concept_parameters] + [("the fine-tuned weights", w) for w in self.weights]:
            t = tensor.detach()
            if not torch.isfinite(t).all() or t.abs().max() > MAX_PARAMETER_MAGNITUDE:
                raise TrainingDiverged(self._diverged_message(f"Before {before}, {name} diverged (values non-finite or above {MAX_PARAMETER_MAGNITUDE:g})"))

    def _diverged_message(self, what: str) -> str:
        where = f"{self.phase} step {self.step + 1}"
        kept = (
            f"its last good checkpoint ({self.last_checkpoint[0]} step {self.last_checkpoint[1]}) is kept"
            if self.last_checkpoint
            else "no checkpoint had been written yet"
        )
        return f"{what} at {where}; the run stopped and {kept}. Lower the learning rate and start a new run with --no-resume."

    # -- checkpoints ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "phase": self.phase,
            "step": self.step,
            "iteration": self.iteration,
            "converged": self.converged,
            "rows": self.model.rows.rows.detach().cpu(),
            **({"rows_2": self.model.rows_2.rows.detach().cpu()} if self.model.rows_2 is not None else {}),
            "opt": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "masks": {f"{i}|{t}": m for (i, t), m in self.masks.items()},
            "soft": {f"{i}|{t}": m for (i, t), m in self.estep_result.soft.items()} if self.estep_result else {},
            "error_signal": self._error_state(),
            "streams": self.par.gather([list(_jsonable_random_state(self.rng.getstate())), self.gen.get_state()]),
        }
        if self.weights:
            state["weights"] = {n: p.detach().cpu() for n, p in self.model.unet.named_parameters() if p.requires_grad}
        return state

    def _error_state(self) -> dict[str, Any]:
        """What the E-step budget carries between E-steps (see estep.plan_refresh)."""
        r = self.estep_result
        if r is None:
            return {}
        return {
            "step": r.step,
            "credit": r.credit,
            "refreshed": {str(i): n for i, n in r.refreshed.items()},
            "maps": {str(i): e.raw for i, e in r.error.items()},
            "weights": {str(i): e.weight for i, e in r.error.items()},
            "settled": sorted(r.settled),
            "steady": {str(i): n for i, n in r.steady.items()},
        }

    def _restore_error_state(self, saved: dict[str, Any] | None) -> None:
        if not saved:  # a checkpoint from before the E-step budget: every error signal is recomputed
            return
        r = self.estep_result
        r.step, r.credit = int(saved["step"]), float(saved["credit"])
        r.refreshed = {int(i): int(n) for i, n in saved["refreshed"].items()}
        weights = saved.get("weights", {})  # absent before error_memory: each signal counts as one full pass
        r.error = {int(i): ErrorSignal(np.asarray(m, np.float32), float(weights.get(i, self.cfg.mask_timesteps))) for i, m in saved["maps"].items()}
        r.settled = {int(i) for i in saved.get("settled", [])}
        # before estep_settle_passes a checkpoint kept only which images had settled: each counts as settled enough
        r.steady = {int(i): int(n) for i, n in saved["steady"].items()} if "steady" in saved else {i: self.cfg.estep_settle_passes for i in r.settled}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint (as `state_dict` wrote it)."""
        try:
            self._restore(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise InputError(f"The checkpoint does not fit this run ({type(exc).__name__}); start a new run with --no-resume.") from None

    def _restore(self, state: dict[str, Any]) -> None:
        self.phase, self.step = state["phase"], int(state["step"])
        with torch.no_grad():
            self.model.rows.rows.copy_(state["rows"])
            if self.model.rows_2 is not None:
                self.model.rows_2.rows.copy_(state["rows_2"])
        masks = {_key(k): np.asarray(v, bool) for k, v in state["masks"].items()}
        soft = {_key(k): np.asarray(v, np.float32) for k, v in state["soft"].items()}
        self.estep_result = EStepResult(int(state["iteration"]), masks, soft, converged=bool(state["converged"]))
        self._restore_error_state(state.get("error_signal"))
        streams = state["streams"]
        if len(streams) == self.par.world or self.par.is_main:  # each process continues its own stream
            rng_state, gen_state = streams[self.par.rank if len(streams) == self.par.world else 0]
            self.rng.setstate(_random_state(rng_state))
            self.gen.set_state(gen_state)
        else:  # another group size: fresh streams for the other processes
            self.rng.seed(self.par.seed(self.cfg.seed) + self.step)
            self.gen.manual_seed(self.par.seed(self.cfg.seed) + self.step)
        if self.phase == "em" and self.step >= self.cfg.em_steps:
            self.phase, self.step = "joint", 0
            self.make_optimizer("joint")
            return
        self.make_optimizer(self.phase)
        if "weights" in state:
            params = dict(self.model.unet.named_parameters())
            with torch.no_grad():
                for n, v in state["weights"].items():
                    params[n].copy_(v)
        self.opt.load_state_dict(state["opt"])
        self.scaler.load_state_dict(state["scaler"])
        self.last_checkpoint = (self.phase, self.step)


def make_optimizer(name: str, groups: list[dict]) -> torch.optim.Optimizer:
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise InputError("--optimizer adamw8bit needs bitsandbytes: pip install 'conceptforge[bnb]'.") from None
        return bnb.optim.AdamW8bit(groups)
    return torch.optim.AdamW(groups)


def _key(text: str) -> tuple[int, str]:
    i, t = text.split("|", 1)
    return int(i), t


def _pad(values: torch.Tensor, length: int, fill: float | int | None = None) -> torch.Tensor:
    """A 1-D tensor padded to `length` (with its first value, or `fill`)."""
    if len(values) == length:
        return values
    pad = values[:1] if fill is None else torch.full((1,), fill, dtype=values.dtype)
    return torch.cat([values, pad.expand(length - len(values))])


def _pad_masks(masks: torch.Tensor, length: int) -> torch.Tensor:
    """(K, H, W) masks padded with empty masks to (length, H, W)."""
    if len(masks) == length:
        return masks
    return torch.cat([masks, masks.new_zeros((length - len(masks),) + tuple(masks.shape[1:]))])


def _crop_resize(rgb: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    from PIL import Image

    top, left, side = box
    crop = np.ascontiguousarray(rgb[top : top + side, left : left + side])
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))


def _crop_resize_mask(mask: np.ndarray, box: tuple[int, int, int], size: int) -> np.ndarray:
    from .masks import resize_mask

    top, left, side = box
    return resize_mask(np.ascontiguousarray(mask[top : top + side, left : left + side]), size, size)


def _jsonable_random_state(state: tuple) -> tuple:
    """random.Random's state as nested lists and numbers."""
    version, internal, gauss = state
    return version, list(internal), gauss


def _random_state(saved: Any) -> tuple:
    version, internal, gauss = saved
    return int(version), tuple(int(v) for v in internal), gauss
