"""Generate images with the base model plus a project's learned concepts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InputError
from ..fsutil import atomic_write
from .backbone import ModelSource, load_pipeline, pick_device
from .export import LORA_FILE, read_index
from .prompts import prompt_tokens
from .tokens import install_concepts, load_concept_files


@dataclass
class GenerateSettings:
    n: int = 4
    steps: int = 30
    guidance: float = 5.0
    seed: int = 0
    height: int | None = None
    width: int | None = None
    device: str = "auto"


def check_prompt(prompt: str, known: list[str]) -> list[str]:
    """The prompt's concept tokens; an unknown one is an input error."""
    used = prompt_tokens(prompt)
    unknown = [t for t in used if t not in known]
    if unknown:
        listed = ", ".join(known) if known else "none yet"
        raise InputError(f"The prompt uses {unknown[0]}, which this project has not learned (learned: {listed}).")
    return used


def load_concept_pipeline(source: ModelSource, concepts_dir: Path, device: torch.device):
    """The base pipeline with the learned tokens and fine-tuned weights installed."""
    index = read_index(concepts_dir)
    if index is None:
        raise InputError(f"No learned concepts in {concepts_dir}; run `conceptforge learn` first.")
    pipe = load_pipeline(source)
    files = [concepts_dir / f"{t[1:-1]}.safetensors" for t in index["tokens"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"The concept file {missing[0]} is missing; run `conceptforge learn` again.")
    install_concepts(pipe.tokenizer, pipe.text_encoder, load_concept_files(files))
    if index.get("finetune") == "lora" and (concepts_dir / LORA_FILE).is_file():
        pipe.load_lora_weights(str(concepts_dir), weight_name=LORA_FILE)
    elif index.get("finetune") == "full" and (concepts_dir / "unet").is_dir():
        from diffusers import UNet2DConditionModel

        pipe.unet = UNet2DConditionModel.from_pretrained(str(concepts_dir / "unet"))
    return pipe.to(device), index


def generate(
    source: ModelSource,
    concepts_dir: Path,
    prompt: str,
    out_dir: Path,
    settings: GenerateSettings,
    model_label: str,
    negative_prompt: str | None = None,
) -> list[Path]:
    """Write settings.n PNGs with prompt, seed and settings in their metadata."""
    from PIL.PngImagePlugin import PngInfo

    device = pick_device(settings.device)
    pipe, index = load_concept_pipeline(source, concepts_dir, device)
    check_prompt(prompt, index["tokens"])
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(settings.n):
        seed = settings.seed + i
        image = pipe(
            prompt,
            negative_prompt=negative_prompt,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            height=settings.height,
            width=settings.width,
            generator=torch.Generator(device="cpu").manual_seed(seed),
        ).images[0]
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
