"""The staged training recipe of the built-in model, read from a JSON file.

A recipe gives the seed, the thread count and, for each of the three trainers
(`vae`, `unet` for the UNet with the text encoder, `decoder` for the decoder
fine-tune), its settings and its stages.  A stage is a range of steps
[start, end) run under one learning-rate schedule and, for the UNet, one
colour-word dropout: what one run of the old command line (`--unet-steps N
--color-dropout P`, resumed from a checkpoint at `start`) did.  Its learning
rate at step s is

    lr * min(1, (s + 1) / warmup) * (floor + (1 - floor) * (1 + cos(pi * s / cosine_over)) / 2)

with s counted from step 0 of the whole run, so a stage resumed with a longer
`cosine_over` jumps to that longer cosine at its first step, as the
hand-resumed runs did.  Each stage starts its random streams from
seed + its first step (what a resumed run did); inside a stage a resumed run
continues the streams saved in its checkpoint.

The file is plain JSON, read with `json`: reading a recipe never runs code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InputError

RECIPE_FILE = Path(__file__).resolve().parent / "tiny_shapes" / "recipe.json"

TRAINERS = ("vae", "unet", "decoder")
_COMMON = {"lr", "batch", "scenes", "warmup", "lr_floor", "checkpoint_every", "stages"}
_KEYS = {
    "vae": _COMMON | {"sample_steps"},
    "unet": _COMMON | {"attn_weight", "caption_dropout"},
    "decoder": _COMMON,
}
_STAGE_KEYS = {"steps", "cosine_over", "color_dropout", "note"}


class RecipeError(InputError):
    """A recipe file that cannot be used (unreadable, unknown keys, values out of range, stages not contiguous)."""


@dataclass(frozen=True)
class Stage:
    """Steps [start, end) under one cosine (`cosine_over` steps from step 0) and one colour-word dropout."""

    start: int
    end: int
    cosine_over: float
    color_dropout: float = 0.0
    note: str = ""

    def key(self) -> dict[str, Any]:
        """What a checkpoint records of its stage: a resumed run continues its random streams only in the same stage."""
        return {"start": self.start, "cosine_over": float(self.cosine_over), "color_dropout": float(self.color_dropout)}


@dataclass(frozen=True)
class Trainer:
    """One trainer's settings and stages."""

    lr: float
    batch: int
    scenes: int
    stages: tuple[Stage, ...]
    warmup: float = 0.0
    lr_floor: float = 0.0
    checkpoint_every: int = 500
    sample_steps: int = 0  # vae: steps that decode a posterior sample before decoding the mean
    attn_weight: float = 0.0  # unet: weight of the cross-attention grounding term
    caption_dropout: float = 0.0  # unet: share of captions replaced by the empty one

    @property
    def steps(self) -> int:
        return self.stages[-1].end if self.stages else 0

    def stage_at(self, step: int) -> Stage:
        """The stage that runs `step` (the last stage for a step at or past the end)."""
        for stage in self.stages:
            if stage.start <= step < stage.end:
                return stage
        if self.stages and step >= self.steps:
            return self.stages[-1]
        raise ValueError(f"step {step} is in no stage")

    def lr_in(self, stage: Stage, step: int) -> float:
        """The learning rate of `step` under `stage`'s schedule."""
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0
        return self.lr * warm * (self.lr_floor + (1 - self.lr_floor) * 0.5 * (1 + math.cos(math.pi * step / stage.cosine_over)))

    def lr_at(self, step: int) -> float:
        """The learning rate the recipe trains `step` with."""
        return self.lr_in(self.stage_at(step), step)


@dataclass(frozen=True)
class Recipe:
    seed: int
    threads: int
    vae: Trainer
    unet: Trainer
    decoder: Trainer
    about: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as its file holds it."""
        out: dict[str, Any] = {}
        if self.about:
            out["about"] = self.about
        out["seed"], out["threads"] = self.seed, self.threads
        for name in TRAINERS:
            t: Trainer = getattr(self, name)
            d: dict[str, Any] = {"lr": t.lr, "batch": t.batch, "scenes": t.scenes}
            if t.warmup:
                d["warmup"] = t.warmup
            if t.lr_floor:
                d["lr_floor"] = t.lr_floor
            d["checkpoint_every"] = t.checkpoint_every
            if name == "vae":
                d["sample_steps"] = t.sample_steps
            if name == "unet":
                d["attn_weight"], d["caption_dropout"] = t.attn_weight, t.caption_dropout
            stages = []
            for s in t.stages:
                sd: dict[str, Any] = {"steps": [s.start, s.end], "cosine_over": _plain(s.cosine_over)}
                if name == "unet":
                    sd["color_dropout"] = s.color_dropout
                if s.note:
                    sd["note"] = s.note
                stages.append(sd)
            d["stages"] = stages
            out[name] = d
        return out


def _plain(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def load_recipe(path: Path) -> Recipe:
    """The recipe in the JSON file `path`; RecipeError, naming the file, when it cannot be used."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"There is no recipe file {path}.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecipeError(f"The recipe file {path} cannot be read ({exc}).") from None
    try:
        return recipe_from_dict(raw)
    except RecipeError as exc:
        raise RecipeError(f"The recipe file {path}: {exc}") from None


def recipe_from_dict(raw: Any) -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError("a recipe is a JSON object.")
    unknown = set(raw) - {"about", "seed", "threads", *TRAINERS}
    if unknown:
        raise RecipeError(f"unknown key {sorted(unknown)[0]!r} (known: about, seed, threads, vae, unet, decoder).")
    for name in TRAINERS:
        if name not in raw:
            raise RecipeError(f"the section {name!r} is missing.")
    about = raw.get("about", "")
    if not isinstance(about, str):
        raise RecipeError("'about' is a string.")
    return Recipe(
        seed=_int(raw.get("seed", 0), "seed", 0),
        threads=_int(raw.get("threads", 1), "threads", 1),
        vae=_trainer("vae", raw["vae"]),
        unet=_trainer("unet", raw["unet"]),
        decoder=_trainer("decoder", raw["decoder"]),
        about=about,
    )


def _trainer(name: str, raw: Any) -> Trainer:
    if not isinstance(raw, dict):
        raise RecipeError(f"{name!r} is an object.")
    unknown = set(raw) - _KEYS[name]
    if unknown:
        raise RecipeError(f"unknown key {name}.{sorted(unknown)[0]} (known: {', '.join(sorted(_KEYS[name]))}).")
    for key in ("lr", "batch", "scenes", "stages"):
        if key not in raw:
            raise RecipeError(f"{name}.{key} is missing.")
    if not isinstance(raw["stages"], list):
        raise RecipeError(f"{name}.stages is a list.")
    stages = tuple(_stage(name, i, s) for i, s in enumerate(raw["stages"]))
    trainer = Trainer(
        lr=_float(raw["lr"], f"{name}.lr", 0, None, open_low=True),
        batch=_int(raw["batch"], f"{name}.batch", 1),
        scenes=_int(raw["scenes"], f"{name}.scenes", 1),
        stages=stages,
        warmup=_float(raw.get("warmup", 0.0), f"{name}.warmup", 0, None),
        lr_floor=_float(raw.get("lr_floor", 0.0), f"{name}.lr_floor", 0, 1),
        checkpoint_every=_int(raw.get("checkpoint_every", 500), f"{name}.checkpoint_every", 1),
        sample_steps=_int(raw.get("sample_steps", 0), f"{name}.sample_steps", 0),
        attn_weight=_float(raw.get("attn_weight", 0.0), f"{name}.attn_weight", 0, None),
        caption_dropout=_float(raw.get("caption_dropout", 0.0), f"{name}.caption_dropout", 0, 1),
    )
    check_stages(name, trainer.stages, allow_empty=name == "decoder")
    return trainer


def _stage(name: str, i: int, raw: Any) -> Stage:
    where = f"{name}.stages[{i}]"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} is an object.")
    allowed = _STAGE_KEYS if name == "unet" else _STAGE_KEYS - {"color_dropout"}
    unknown = set(raw) - allowed
    if unknown:
        raise RecipeError(f"unknown key {where}.{sorted(unknown)[0]} (known: {', '.join(sorted(allowed))}).")
    steps = raw.get("steps")
    if not (isinstance(steps, list) and len(steps) == 2 and all(type(s) is int for s in steps)):
        raise RecipeError(f"{where}.steps is [first step, end step], two whole numbers.")
    if "cosine_over" not in raw:
        raise RecipeError(f"{where}.cosine_over is missing.")
    note = raw.get("note", "")
    if not isinstance(note, str):
        raise RecipeError(f"{where}.note is a string.")
    return Stage(
        start=steps[0],
        end=steps[1],
        cosine_over=_float(raw["cosine_over"], f"{where}.cosine_over", 0, None, open_low=True),
        color_dropout=_float(raw.get("color_dropout", 0.0), f"{where}.color_dropout", 0, 1),
        note=note,
    )


def check_stages(name: str, stages: tuple[Stage, ...], allow_empty: bool = False) -> None:
    """Stages run from step 0 without gaps, each over at least one step, none past its cosine's end."""
    if not stages and not allow_empty:
        raise RecipeError(f"{name} has no stages.")
    at = 0
    for i, s in enumerate(stages):
        if s.start != at:
            raise RecipeError(f"{name}.stages[{i}] starts at step {s.start}, not at {at} where the stage before it ends.")
        if s.end <= s.start:
            raise RecipeError(f"{name}.stages[{i}] ends at step {s.end}, not after its first step {s.start}.")
        if s.cosine_over < s.end:
            raise RecipeError(f"{name}.stages[{i}] runs to step {s.end}, past the end of its cosine ({_plain(s.cosine_over)} steps).")
        at = s.end


def _int(value: Any, what: str, low: int) -> int:
    if type(value) is not int or value < low:
        raise RecipeError(f"{what} is a whole number of at least {low}, not {value!r}.")
    return value


def _float(value: Any, what: str, low: float, high: float | None, open_low: bool = False) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise RecipeError(f"{what} is a number, not {value!r}.")
    value = float(value)
    if value < low or (open_low and value == low) or (high is not None and value > high):
        bound = f"above {low}" if open_low else f"at least {low}"
        raise RecipeError(f"{what} is {bound}{'' if high is None else f' and at most {high}'}, not {value!r}.")
    return value


def single_stage(steps: int, color_dropout: float = 0.0) -> tuple[Stage, ...]:
    """One stage of `steps` steps under a cosine over `steps`: what one uninterrupted run of the old flags did."""
    return (Stage(0, steps, float(steps), color_dropout),) if steps > 0 else ()


def with_flags(
    recipe: Recipe,
    *,
    seed: int | None = None,
    threads: int | None = None,
    vae_steps: int | None = None,
    vae_sample_steps: int | None = None,
    decoder_steps: int | None = None,
    unet_steps: int | None = None,
    color_dropout: float | None = None,
    lr: float | None = None,
    batch: int | None = None,
    scenes: int | None = None,
    attn_weight: float | None = None,
) -> Recipe:
    """The recipe with the command line's settings in place of its own.

    `--unet-steps N` and/or `--color-dropout P` replace the UNet's stages by one
    stage of N steps (default: the recipe's total) under a cosine over N with
    colour dropout P (default 0); `--vae-steps` and `--decoder-steps` do the same
    for their trainers.  `--lr`, `--batch` and `--attn-weight` are the UNet's;
    `--scenes` is the UNet's scene count and caps the VAE's and the decoder's."""
    vae, unet, decoder = recipe.vae, recipe.unet, recipe.decoder
    if vae_steps is not None:
        if vae_steps < 1:
            raise RecipeError("--vae-steps is at least 1.")
        vae = replace(vae, stages=single_stage(vae_steps))
    if vae_sample_steps is not None:
        vae = replace(vae, sample_steps=vae_sample_steps)
    if decoder_steps is not None:
        if decoder_steps < 0:
            raise RecipeError("--decoder-steps is at least 0.")
        decoder = replace(decoder, stages=single_stage(decoder_steps))
    if unet_steps is not None or color_dropout is not None:
        n = unet.steps if unet_steps is None else unet_steps
        p = 0.0 if color_dropout is None else color_dropout
        if n < 1:
            raise RecipeError("--unet-steps is at least 1.")
        if not 0 <= p <= 1:
            raise RecipeError("--color-dropout is between 0 and 1.")
        unet = replace(unet, stages=single_stage(n, p))
    if lr is not None:
        unet = replace(unet, lr=_float(lr, "--lr", 0, None, open_low=True))
    if batch is not None:
        unet = replace(unet, batch=_int(batch, "--batch", 1))
    if attn_weight is not None:
        unet = replace(unet, attn_weight=_float(attn_weight, "--attn-weight", 0, None))
    if scenes is not None:
        _int(scenes, "--scenes", 1)
        unet = replace(unet, scenes=scenes)
        vae = replace(vae, scenes=min(scenes, vae.scenes))
        decoder = replace(decoder, scenes=min(scenes, decoder.scenes))
    return replace(
        recipe,
        seed=recipe.seed if seed is None else seed,
        threads=recipe.threads if threads is None else _int(threads, "--threads", 1),
        vae=vae,
        unet=unet,
        decoder=decoder,
    )


def scaled(recipe: Recipe, factor: float) -> Recipe:
    """The recipe with every step count of its schedule times `factor`: stage bounds
    (rounded, empty stages dropped), cosine lengths, warm-ups and the VAE's sample
    steps.  Checkpoint intervals stay.  `scaled(recipe, 0.001)` runs every stage of
    the recipe in a few dozen steps."""
    if not (math.isfinite(factor) and factor > 0):
        raise RecipeError(f"--scale is a number above 0, not {factor!r}.")

    def steps(n: int) -> int:
        return int(math.floor(n * factor + 0.5))

    def trainer(t: Trainer, keep_one: bool) -> Trainer:
        stages = []
        for s in t.stages:
            start, end = steps(s.start), steps(s.end)
            if end > start:
                stages.append(replace(s, start=start, end=end, cosine_over=max(s.cosine_over * factor, float(end))))
        if not stages and keep_one and t.stages:
            last = t.stages[-1]
            stages = [replace(last, start=0, end=1, cosine_over=max(last.cosine_over * factor, 1.0))]
        return replace(t, stages=tuple(stages), warmup=t.warmup * factor, sample_steps=steps(t.sample_steps))

    return replace(recipe, vae=trainer(recipe.vae, True), unet=trainer(recipe.unet, True), decoder=trainer(recipe.decoder, False))
