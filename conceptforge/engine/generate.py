"""Generate images with the base model plus a project's learned concepts."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConceptforgeError, InputError
from ..fsutil import atomic_write
from .backbone import ModelSource, first_line, load_pipeline, pick_device
from .export import LORA_FILE, read_index
from .outputs import check_output_dir
from .prompts import prompt_tokens
from .tokens import install_pipeline_concepts, load_concept_files


MAX_SEED = 2**63 - 1


@dataclass
class GenerateSettings:
    n: int = 4
    steps: int = 30
    guidance: float = 5.0
    seed: int = 0
    height: int | None = None
    width: int | None = None
    device: str = "auto"


def check_settings(settings: GenerateSettings) -> None:
    """Refuse sampling settings no sampler can use, naming the value."""
    if settings.n < 1:
        raise InputError(f"-n {settings.n} asks for no images; give 1 or more.")
    if settings.steps < 1:
        raise InputError(f"--steps {settings.steps} is not a number of sampling steps; give 1 or more.")
    if not math.isfinite(settings.guidance) or settings.guidance < 0:
        raise InputError(f"--guidance {settings.guidance} is not a guidance scale; give a number of 0 or more (5 to 8 is usual).")
    if settings.seed < 0 or settings.seed + settings.n - 1 > MAX_SEED:
        raise InputError(f"--seed {settings.seed} is out of range; seeds run from 0 to {MAX_SEED} (image i uses seed + i).")
    for name, value in (("height", settings.height), ("width", settings.width)):
        if value is not None and (value < 8 or value % 8):
            raise InputError(f"The {name} {value} is not a positive multiple of 8.")


def check_prompt_text(prompt: str) -> None:
    if not prompt.strip():
        raise InputError('The prompt is empty; write what to draw, such as "a <v1> on a beach".')


def check_prompt(prompt: str, known: list[str]) -> list[str]:
    """The prompt's concept tokens; an empty prompt or an unknown token is an input error."""
    check_prompt_text(prompt)
    used = prompt_tokens(prompt)
    unknown = [t for t in used if t not in known]
    if unknown:
        listed = ", ".join(known) if known else "none yet"
        raise InputError(f"The prompt uses {unknown[0]}, which this project has not learned (learned: {listed}).")
    return used


def check_prompt_fits(tokenizer, prompt: str, tokens: list[str]) -> None:
    """Refuse a prompt so long that the text encoder would cut off one of its concept tokens."""
    limit = int(getattr(tokenizer, "model_max_length", 77) or 77)
    ids = tokenizer(prompt, truncation=False).input_ids
    if len(ids) <= limit:
        return
    kept = set(ids[: limit - 1])
    for token in tokens:
        if tokenizer.convert_tokens_to_ids(token) not in kept:
            raise InputError(
                f"The prompt is {len(ids)} tokens long and the model reads only the first {limit}, which leaves out {token}; shorten it."
            )


def concept_files(concepts_dir: Path, index: dict) -> dict[str, Path]:
    """Token -> its concept file, named after the token."""
    return {t: concepts_dir / f"{t[1:-1]}.safetensors" for t in index["tokens"]}


def load_concept_pipeline(source: ModelSource, concepts_dir: Path, device: torch.device):
    """The base pipeline with the learned tokens and fine-tuned weights installed.

    Every concept file is checked (see `tokens.load_concept_file`) before the
    model is loaded, and against the model's embedding width after."""
    index = read_index(concepts_dir)
    if index is None or not index["tokens"]:
        raise InputError(f"No learned concepts in {concepts_dir}; run `conceptforge learn` first.")
    files = concept_files(concepts_dir, index)
    embeddings = load_concept_files(files)
    lora, unet_dir = concepts_dir / LORA_FILE, concepts_dir / "unet"
    if index["finetune"] == "lora" and not lora.is_file():
        raise InputError(f"The LoRA file {lora} is missing (concepts.json says the concepts were learned with one); run `conceptforge learn` again.")
    if index["finetune"] == "full" and not unet_dir.is_dir():
        raise InputError(f"The fine-tuned UNet folder {unet_dir} is missing (concepts.json says the model was fine-tuned); run `conceptforge learn` again.")
    pipe = load_pipeline(source)  # StableDiffusionPipeline, or StableDiffusionXLPipeline for SDXL
    install_pipeline_concepts(pipe, embeddings, files)
    if index["finetune"] == "lora":
        _check_finite_lora(lora)
        try:
            pipe.load_lora_weights(str(concepts_dir), weight_name=LORA_FILE)
        except Exception as exc:  # noqa: BLE001 - safetensors, peft and diffusers each raise their own kinds
            detail = first_line(exc) if str(lora) not in str(exc) else "unreadable"
            raise InputError(f"The LoRA file {lora} is damaged or does not fit the model {source.spec} ({detail}).") from None
    elif index["finetune"] == "full":
        from diffusers import UNet2DConditionModel

        try:
            pipe.unet = UNet2DConditionModel.from_pretrained(str(unet_dir))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"The fine-tuned UNet folder {unet_dir} is damaged ({first_line(exc)}).") from None
    return pipe.to(device), index


def _check_finite_lora(path: Path) -> None:
    """Refuse a LoRA file whose values are not all finite (it would make every sample black)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            bad = next((k for k in fh.keys() if not bool(torch.isfinite(fh.get_tensor(k).float()).all())), None)
    except Exception:  # noqa: BLE001 - a damaged file: load_lora_weights names it below
        return
    if bad is not None:
        raise InputError(f"The LoRA file {path} holds NaN or infinite values (in {bad}); run `conceptforge learn` again.")


def generate(
    source: ModelSource,
    concepts_dir: Path,
    prompt: str,
    out_dir: Path,
    settings: GenerateSettings,
    model_label: str,
    negative_prompt: str | None = None,
) -> list[Path]:
    """Write settings.n PNGs with prompt, seed and settings in their metadata.

    Every input is checked before the model is loaded; an image the model
    produces with NaN or infinite values is refused, never written black."""
    from PIL.PngImagePlugin import PngInfo

    check_settings(settings)
    check_prompt_text(prompt)
    check_output_dir(out_dir)
    device = pick_device(settings.device)
    pipe, index = load_concept_pipeline(source, concepts_dir, device)
    used = check_prompt(prompt, index["tokens"])
    check_prompt_fits(pipe.tokenizer, prompt, used)
    paths: list[Path] = []
    for i in range(settings.n):
        seed = settings.seed + i
        pixels = pipe(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            height=settings.height,
            width=settings.width,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            output_type="np",
        ).images
        if not np.isfinite(pixels).all():
            raise ConceptforgeError(
                f"The model produced NaN or infinite values for seed {seed}, so no image was written for it "
                f"({len(paths)} written before); the model or its fine-tuned weights are damaged or overflow at this precision."
            )
        image = pipe.numpy_to_pil(pixels)[0]
        meta = PngInfo()
        info = {"prompt": prompt, "seed": seed, "steps": settings.steps, "guidance": settings.guidance, "model": model_label, "run": index.get("run")}
        for key, value in info.items():
            meta.add_text(f"conceptforge:{key}", str(value))
        meta.add_text("parameters", json.dumps(info))
        path = _free_path(out_dir, prompt, seed)
        atomic_write(path, lambda tmp, im=image, m=meta: im.save(tmp, format="PNG", pnginfo=m))
        paths.append(path)
    return paths


def _free_path(out_dir: Path, prompt: str, seed: int) -> Path:
    import re

    slug = re.sub(r"[^A-Za-z0-9]+", "-", prompt).strip("-").lower()[:48] or "sample"
    path = out_dir / f"{slug}-s{seed}.png"
    n = 1
    while path.exists():
        n += 1
        path = out_dir / f"{slug}-s{seed}-{n}.png"
    return path
