"""Learn settings: defaults scaled to the model, manifest overrides, CLI overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import InputError

MASK_MODES = ("em", "fixed", "given")
MASK_SIGNALS = ("attention", "error", "both")
ERROR_REFERENCES = ("drop", "init")
FINETUNE_MODES = ("lora", "full", "none")
PRECISIONS = ("no", "fp16", "bf16")
AUGMENT_MODES = ("none", "flip", "full")
OPTIMIZERS = ("adamw", "adamw8bit")


@dataclass
class LearnConfig:
    """Every setting of a learn run (written resolved to runs/<id>/config.yaml)."""

    masks: str = "em"
    em_steps: int = 400
    joint_steps: int = 400
    finetune: str = "lora"
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    init_steps: int = 0  # unmasked textual inversion before the mask init
    token_lr: float = 5e-4
    joint_token_lr: float = 5e-5
    weight_lr: float = 1e-4
    lora_rank: int = 4
    attn_weight: float = 0.01
    attention_resolution: int = 16
    init_mask_timesteps: int = 50
    mask_timesteps: int = 10
    mask_t_min: int = 100
    mask_t_max: int = 800
    threshold: float = 0.5
    crf: bool = True
    mask_every: int = 25
    em_warmup: int = 50  # M-steps on the initial masks before the first E-step
    mask_momentum: float = 0.5  # weight of the previous soft maps in each E-step
    area_change_max: float = 2.5  # a new mask more than this factor larger/smaller than the last is refused
    mask_converged: float = 0.97
    init_mask_signal: str = "attention"  # the first E-step (initial masks): attention | error | both
    mask_signal: str = "attention"  # E-steps after the first: attention | error (Eq. 3 per pixel) | both
    error_reference: str = "drop"  # the error signal compares against the prompt without k (drop) or with k's init word (init)
    augment: str = "none"
    checkpoint_every: int = 50
    batch_size: int = 1
    image_size: int = 0  # 0: the model's native resolution

    def validate(self) -> "LearnConfig":
        checks = [
            ("masks", self.masks, MASK_MODES),
            ("init_mask_signal", self.init_mask_signal, MASK_SIGNALS),
            ("mask_signal", self.mask_signal, MASK_SIGNALS),
            ("error_reference", self.error_reference, ERROR_REFERENCES),
            ("finetune", self.finetune, FINETUNE_MODES),
            ("mixed_precision", self.mixed_precision, PRECISIONS),
            ("augment", self.augment, AUGMENT_MODES),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("device", self.device, ("auto", "cpu", "cuda", "mps")),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise InputError(f"Setting {name} must be one of {', '.join(allowed)}, not {value!r}.")
        for name in ("em_steps", "joint_steps", "init_steps", "mask_every", "checkpoint_every", "init_mask_timesteps", "mask_timesteps", "batch_size"):
            if getattr(self, name) < 0 or (name in ("mask_every", "checkpoint_every", "init_mask_timesteps", "mask_timesteps", "batch_size") and getattr(self, name) < 1):
                raise InputError(f"Setting {name} must be a positive whole number, not {getattr(self, name)!r}.")
        if not 0 < self.threshold < 1:
            raise InputError(f"Setting threshold must lie between 0 and 1, not {self.threshold!r}.")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Defaults scaled to the model: SD-size models get the paper's schedule; the
# built-in model gets what lets the example finish in minutes on 2 CPU cores.
BUILTIN_DEFAULTS: dict[str, Any] = dict(
    em_steps=200,
    joint_steps=100,
    # benchmarks/masks.py, 12 scenes, final mean IoU (fixed: 0.441): token_lr 5e-3
    # drifted the tokens far from their init words (cosine 0.2-0.4, norm 3x a
    # word's) and E-steps made masks worse (0.397); 1e-3 gave 0.532
    token_lr=1e-3,
    # first masks from the denoising-error rise when a concept's init word is dropped:
    # bare init words' attention put 60% of object masks on another object (24
    # scenes; object IoU 0.22 vs 0.38); 12 scenes final mean IoU em 0.733 vs 0.592
    init_mask_signal="error",
    mask_signal="both",  # attention + denoising-error reduction: 0.611 vs attention alone 0.532
    # timesteps per later E-step (each: K+1 prompts in one batch): 12 scenes IoU-only,
    # em 0.733 / 0.734 / 0.779 with 10 / 8 / 6 at 1.28x / 1.19x / 1.15x fixed's cost;
    # with fidelity (both 12-scene sets) 6 gave 0.76 / 0.85 of given's, 10 gave 0.87 / 0.93
    mask_timesteps=8,
    # the error signal's reference puts k's init word in k's place: the causal text
    # encoder then encodes the other tokens as in the full prompt (drop changes them)
    error_reference="init",
    # no bound on how much an E-step may grow or shrink a mask: with the bound (2.5x)
    # a wrong or tiny first mask stays; 24 scenes, final mean IoU 0.589 vs 0.517
    area_change_max=1000.0,
    joint_token_lr=1e-3,
    weight_lr=1e-3,
    attn_weight=0.05,
    mask_every=25,
    em_warmup=50,
    mask_momentum=0.0,  # measured: undamped E-steps gave final IoU 0.433 vs 0.399 damped (6 scenes)
    checkpoint_every=50,
)


def resolve_config(builtin: bool, manifest_settings: dict[str, Any], overrides: dict[str, Any]) -> LearnConfig:
    """Model defaults, then the manifest's settings, then explicit overrides."""
    known = {f.name: f for f in fields(LearnConfig)}
    values: dict[str, Any] = dict(BUILTIN_DEFAULTS) if builtin else {}
    for source, label in ((manifest_settings, "conceptforge.yaml settings"), (overrides, "options")):
        for key, value in source.items():
            if value is None:
                continue
            if key not in known:
                raise InputError(f"Unknown setting {key!r} in {label}.")
            values[key] = _coerce(key, value, known[key].type)
    return LearnConfig(**values).validate()


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(str(type_name), None)
    if kind is None:
        return value
    if kind is bool and isinstance(value, bool):
        return value
    try:
        if kind is bool:
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        raise InputError(f"Setting {key} must be a {kind.__name__}, not {value!r}.") from None
