"""Learn settings: one validated model (pydantic), one table of defaults per
model family, and the layering defaults -> conceptforge.yaml -> options.

Every setting is type- and range-checked before anything runs; a bad value is
an `InputError` naming the setting, the value and what it must be.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from ..errors import InputError

MaskMode = Literal["em", "fixed", "given"]
MaskSignal = Literal["attention", "error", "both"]
ErrorReference = Literal["drop", "init"]
Finetune = Literal["lora", "full", "none"]
Precision = Literal["no", "fp16", "bf16"]
Augment = Literal["none", "flip", "full"]
Optimizer = Literal["adamw", "adamw8bit"]
Device = Annotated[str, StringConstraints(pattern=r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")]
Objective = Literal["reference", "area"]
AttentionSource = Literal["pass", "harvest"]
CrfMethod = Literal["photo", "flat"]
Assignment = Literal["independent", "same-word", "joint"]
AssignmentRegions = Literal["maps", "image"]
AssignmentScore = Literal["explained", "mass"]

MAX_STEPS = 1_000_000


class LearnConfig(BaseModel):
    """Every setting of a learn run (written resolved to runs/<id>/config.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    masks: MaskMode
    em_steps: int = Field(ge=0, le=MAX_STEPS)
    joint_steps: int = Field(ge=0, le=MAX_STEPS)
    finetune: Finetune
    seed: int = Field(ge=0, lt=2**63)
    device: Device
    mixed_precision: Precision
    gradient_checkpointing: bool
    optimizer: Optimizer
    init_steps: int = Field(ge=0, le=MAX_STEPS, description="unmasked textual inversion before the mask init")
    token_lr: float = Field(gt=0, le=1.0)
    joint_token_lr: float = Field(gt=0, le=1.0)
    weight_lr: float = Field(gt=0, le=1.0)
    lora_rank: int = Field(ge=1, le=1024)
    attn_weight: float = Field(ge=0, le=1000)
    objective: Objective = Field(description="reference: Break-a-Scene's loss; area: masked loss per mask pixel, attention loss per concept")
    attention_resolution: int = Field(ge=1, le=512)
    init_mask_timesteps: int = Field(ge=1, le=1000)
    mask_timesteps: int = Field(ge=1, le=1000)
    mask_t_min: int = Field(ge=0, le=100_000)
    mask_t_max: int = Field(ge=0, le=100_000)
    threshold: float = Field(gt=0, lt=1)
    crf: bool
    crf_method: CrfMethod = Field(description="photo: DenseCRF chosen on real photographs; flat: tuned on the built-in world")
    em_warmup: int | None = Field(default=None, ge=0, le=MAX_STEPS, description="M-steps before the second E-step; None: estep_warmup_fraction of em_steps")
    mask_every: int | None = Field(default=None, ge=1, le=MAX_STEPS, description="steps between E-steps; None: estep_every_fraction of em_steps")
    estep_warmup_fraction: float = Field(ge=0, le=1)
    estep_every_fraction: float = Field(gt=0, le=1)
    mask_assignment: Assignment = Field(
        description="independent: each concept's map on its own; same-word: an image's object concepts that share an init word "
        "compete for its regions; joint: all its object concepts do"
    )
    assignment_regions: AssignmentRegions = Field(
        description="what competing concepts are assigned: maps: regions where their maps are high, cut in two when too few; "
        "image: the image's objects (superpixels grouped as `discover` groups them; made for flat-colour scenes such as the "
        "built-in world's, and where an image yields no objects, as photos usually do, the maps' regions are used)"
    )
    assignment_score: AssignmentScore = Field(
        description="a competing concept's score for a region: explained: its share of the region's evidence (its mean map "
        "value there over the competing concepts' sum); mass: the share of its own map's mass the region holds"
    )
    assignment_stay: float = Field(
        ge=0, le=10, description="in a joint assignment, a concept's score for a region gains this x the share of "
        "the region its last mask covered (tokens trade objects only on clear evidence); 0: no pull"
    )
    mask_momentum: float = Field(ge=0, lt=1, description="weight of the previous soft maps in each E-step")
    error_memory: float = Field(
        ge=0, le=1, description="an image's error signal pools its passes so far: at each new pass the older "
        "timesteps count this much (1: all alike); 0: the latest pass alone"
    )
    area_change_max: float = Field(ge=1, le=1e6, description="a new mask more than this factor larger/smaller than the last is refused")
    mask_converged: float = Field(gt=0, le=1)
    init_mask_signal: MaskSignal
    mask_signal: MaskSignal
    error_reference: ErrorReference
    attention_source: AttentionSource = Field(description="pass: a dedicated UNet pass per E-step; harvest: the maps of the training steps since the last E-step")
    estep_skip_settled: bool = Field(description="E-steps skip images whose masks stopped moving")
    estep_settle_passes: int = Field(ge=1, le=1000, description="fresh re-estimates in a row that must leave an image's masks steady before it has settled")
    estep_passes_per_step: float = Field(
        gt=0, description="UNet samples later E-steps may spend on error passes per training sample; inf: every image every E-step"
    )
    augment: Augment
    checkpoint_every: int = Field(ge=1, le=MAX_STEPS)
    batch_size: int = Field(ge=1, le=256)
    image_size: int = Field(ge=0, le=8192, description="0: the model's native resolution")

    @model_validator(mode="after")
    def _consistent(self) -> "LearnConfig":
        if self.mask_t_min > self.mask_t_max:
            raise ValueError(f"mask_t_min ({self.mask_t_min}) must not exceed mask_t_max ({self.mask_t_max})")
        if self.image_size % 8:
            raise ValueError(f"image_size must be 0 or a multiple of 8, not {self.image_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    # -- the E-step schedule ----------------------------------------------------
    @property
    def estep_warmup(self) -> int:
        """M-steps on the initial masks before the second E-step."""
        if self.em_warmup is not None:
            return self.em_warmup
        return max(1, round(self.estep_warmup_fraction * self.em_steps))

    @property
    def estep_every(self) -> int:
        """M-steps between later E-steps."""
        if self.mask_every is not None:
            return self.mask_every
        return max(1, round(self.estep_every_fraction * self.em_steps))

    def estep_steps(self) -> list[int]:
        """The EM-phase steps after which an E-step runs (before convergence stops them)."""
        if self.masks != "em" or self.em_steps == 0:
            return []
        return list(range(self.estep_warmup, self.em_steps + 1, self.estep_every)) if self.estep_warmup >= 1 else list(
            range(self.estep_every, self.em_steps + 1, self.estep_every)
        )

    def schedule_warning(self) -> str | None:
        """A sentence when an EM run would get fewer than two E-steps after the first."""
        if self.masks == "em" and self.em_steps > 0 and len(self.estep_steps()) < 2:
            return (
                f"With em_steps {self.em_steps}, em_warmup {self.estep_warmup} and mask_every {self.estep_every} "
                f"this run re-estimates the masks {len(self.estep_steps())} time(s) after the first E-step, "
                "so --masks em works almost like --masks fixed."
            )
        return None


# One row per setting: its default for Stable-Diffusion-family models and for the
# built-in model, and why they differ where they do.
DEFAULTS: dict[str, tuple[Any, Any]] = {
    # setting: (SD family, builtin:tiny-shapes)
    "masks": ("em", "em"),
    "em_steps": (400, 200),  # the paper's ~400 for SD; minutes on 2 CPU cores for the built-in model
    "joint_steps": (400, 100),
    "finetune": ("lora", "lora"),
    "seed": (0, 0),
    "device": ("auto", "auto"),
    "mixed_precision": ("no", "no"),
    "gradient_checkpointing": (False, False),
    "optimizer": ("adamw", "adamw"),
    "init_steps": (0, 0),
    # Break-a-Scene's rates for SD; built-in: benchmarks/masks.py, 12 scenes, token_lr 5e-3
    # drifted the tokens far from their init words and E-steps made masks worse (0.397 vs fixed
    # 0.441); 1e-3 gave 0.532
    "token_lr": (5e-4, 1e-3),
    "joint_token_lr": (5e-5, 1e-3),
    "weight_lr": (1e-4, 1e-3),
    "lora_rank": (4, 4),
    "attn_weight": (0.01, 0.05),  # Break-a-Scene's lambda for SD
    # SD: Break-a-Scene's objective exactly (the lambda and rates above were tuned with it);
    # built-in: the per-pixel / per-concept normalisation every built-in figure was measured with
    "objective": ("reference", "area"),
    "attention_resolution": (16, 16),
    # built-in (error signal, 24 dev scenes, benchmarks/results/first_masks.md): object IoU 0.384 / 0.389 / 0.309 with
    # 50 / 32 / 24 timesteps; 32 keeps the first E-step within 30 training steps per image
    "init_mask_timesteps": (50, 32),
    # built-in: 12 scenes IoU-only, em 0.733 / 0.734 / 0.779 with 10 / 8 / 6 at 1.28x / 1.19x /
    # 1.15x fixed's cost; with fidelity 6 gave 0.76 / 0.85 of given's, 10 gave 0.87 / 0.93
    "mask_timesteps": (10, 8),
    "mask_t_min": (100, 100),
    "mask_t_max": (800, 800),
    "threshold": (0.5, 0.5),
    "crf": (True, True),
    # photo: kernels relative to the image, chosen on the Break-a-Scene photos (benchmarks/results/
    # crf_real.md); flat: the refinement every built-in figure was measured with (64 px flat colours)
    "crf_method": ("photo", "flat"),
    "em_warmup": (None, None),
    "mask_every": (None, None),
    # 50 and 25 of the SD's 400 steps / the built-in 200 steps: the schedule follows the budget
    "estep_warmup_fraction": (0.125, 0.25),
    "estep_every_fraction": (0.0625, 0.125),
    # built-in: the image's objects (regions.py's chord rule) are near-exact on the built-in world, so
    # every object concept competes for them: dev1 / dev2 final IoU, run seeds 0 and 1, em only,
    # 0.844 / 0.768 / 0.732 / 0.670 joint vs 0.773 / 0.700 / 0.654 / 0.682 same-word
    # (benchmarks/results/ablation_joint_chord/); with the earlier region rules joint was worse (0.682 vs
    # 0.773, ablation_joint.md). SD: same-word (image regions are not made for photos)
    "mask_assignment": ("same-word", "joint"),
    # built-in, 12 dev scenes whose objects all start from "shape": em 0.983 / 100% clean with the
    # image's objects vs 0.882 / 83% with the maps' regions (benchmarks/results/same_word_dev.md);
    # SD: the image rule (benchmarks/discover.py) has not been measured on photos
    "assignment_regions": ("maps", "image"),
    # built-in, first masks of the 48 dev scenes (benchmarks/results/first_masks_assignment.md): object IoU
    # 0.763 explained vs 0.707 mass, on another object 0.18 vs 0.25; SD: its competing concepts share an
    # init word (twins), whose maps explain no region better than each other: mass, as before
    "assignment_score": ("mass", "explained"),
    # built-in: with regions scored by the share of their evidence a concept explains, later E-steps
    # traded exact masks on noise (dev2 em 0.762 vs fixed 0.864); stay 0.3 keeps them
    # (benchmarks/results/ablation_assignment/). Earlier, with mass shares: no gain (ablation_joint_chord/)
    "assignment_stay": (0.0, 0.3),
    # built-in, error_reference drop, same runs: 0.5 gave 0.841 / 0.768 / 0.805 / 0.808 (mean 0.806),
    # 1.0 gave 0.799, 0 (the latest pass alone) 0.798 (benchmarks/results/ablation_reference/); SD: unmeasured
    "error_memory": (0.0, 0.5),
    "mask_momentum": (0.5, 0.0),  # built-in: undamped E-steps gave final IoU 0.433 vs 0.399 damped (6 scenes)
    # built-in: no bound on mask growth per E-step; with 2.5x a wrong or tiny first mask
    # stays (24 scenes, final mean IoU 0.589 vs 0.517)
    "area_change_max": (2.5, 1000.0),
    "mask_converged": (0.97, 0.97),
    # built-in: bare init words' attention put 60% of first object masks on another object
    # (24 scenes; object IoU 0.22 vs 0.38 from the denoising-error rise); SD: the paper's
    "init_mask_signal": ("attention", "error"),
    "mask_signal": ("attention", "both"),  # built-in: attention + error 0.611 vs attention alone 0.532
    # built-in, joint assignment, dev1 / dev2 x run seeds 0, 1, em only: drop 0.822 / 0.759 / 0.804 / 0.808
    # vs init 0.844 / 0.732 / 0.768 / 0.670 (mean 0.798 vs 0.754; benchmarks/results/ablation_reference/):
    # a token's gain over its init word is small and spread early in the EM phase, and min-max
    # normalisation blows that noise up to the full range (init was chosen before the joint assignment)
    "error_reference": ("drop", "drop"),
    # the maps the training steps computed anyway, instead of a UNet pass per E-step: built-in,
    # mask_signal attention, dev1 final IoU 0.649 harvested vs 0.658 with the pass
    # (benchmarks/results/ablation_attention_*.md)
    # (`both`, the built-in default, reads attention from its error pass at no extra cost)
    "attention_source": ("harvest", "harvest"),
    # 12 single-image scenes: identical figures (em 0.734 either way); saves E-steps on several images
    "estep_skip_settled": (True, True),
    # built-in 2: one steady pass at the 0.3 budget (often 4-5 timesteps after 75 steps) ended EM on
    # most single-image scenes before a second pass could repair a mask; dev1-dev6 em 0.866 vs 0.863
    # (dev2 0.881 vs 0.864; dev6 0.877 vs 0.891), 3 gives the same masks as 2
    # (ablation_budget/settle3_*.md, floor_kept_*.md)
    "estep_settle_passes": (1, 2),
    # built-in: 0.3, the budget with which later E-steps add at most 10% to the EM training time of a
    # 10-image project (4% vs 15% at 1.0, benchmarks/results/speed.md; before images kept their masks
    # between passes 9% / 11.5% at 0.5 / 17% at 1.0); dev1-dev4, em: mean 0.853 at 0.3 and at 1.0, 0.856
    # at 0.5 (ablation_budget/shipped_*); with images that keep their masks between passes, dev1-dev6
    # 0.863 (ablation_budget/README.md). Its price: on 10 images it pays for passes for only a few images
    # in 200 steps, so wrong first masks of the others stay (final IoU 0.877 vs 1.000 at 1.0 before the
    # lost-ground raise made that project's first masks right; 1.000 at both since, speed.md)
    # (Under earlier defaults half the budget had lowered dev IoU: ablation_budget/r05_*, ablation_reference/.)
    # SD: its default signal (harvested attention) needs no pass
    "estep_passes_per_step": (float("inf"), 0.3),
    "augment": ("none", "none"),
    "checkpoint_every": (50, 50),
    "batch_size": (1, 1),
    "image_size": (0, 0),
}


def family_defaults(builtin: bool) -> dict[str, Any]:
    """Every setting's default for the built-in model or for SD-family models."""
    return {key: pair[1 if builtin else 0] for key, pair in DEFAULTS.items()}


def resolve_config(builtin: bool, manifest_settings: dict[str, Any], overrides: dict[str, Any]) -> LearnConfig:
    """Model defaults, then the manifest's settings, then explicit overrides (None = not given)."""
    values = family_defaults(builtin)
    for source, label in ((manifest_settings, "conceptforge.yaml settings"), (overrides, "options")):
        if not isinstance(source, dict):
            raise InputError(f"The {label} must be a mapping of setting names to values.")
        for key, value in source.items():
            if value is None:
                continue
            if key not in values:
                raise InputError(f"Unknown setting {key!r} in {label}; see `conceptforge learn --help` for the settings.")
            values[key] = value
    return validate_settings(values)


def validate_settings(values: dict[str, Any]) -> LearnConfig:
    """A LearnConfig from complete values, or InputError with one sentence."""
    try:
        return LearnConfig(**values)
    except ValidationError as exc:
        raise InputError(_sentence(exc)) from None


def _sentence(exc: ValidationError) -> str:
    """One sentence for the first validation error."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    message = err.get("msg", "is not valid")
    message = message.removeprefix("Value error, ")
    if not where:
        return f"Settings are not valid: {message}."
    given = err.get("input")
    return f"Setting {where} = {given!r} is not valid: {message[0].lower() + message[1:]}."


def parse_set_option(pairs: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` options as settings; VALUE is read as YAML (3, 1e-3, true, em)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--set takes KEY=VALUE, not {pair!r}.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out[key] = _number(value) if isinstance(value, str) else value
    return out


def _number(text: str) -> Any:
    """'1e-3' as 0.001 (YAML 1.1 reads exponents without a dot as text)."""
    try:
        return float(text) if any(c.isdigit() for c in text) else text
    except ValueError:
        return text
