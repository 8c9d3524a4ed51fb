"""Export a learned run: one textual-inversion file per token and the
fine-tuned weights (LoRA in the diffusers layout, or a full UNet)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..fsutil import write_text_atomic
from .tokens import save_concept_files

LORA_FILE = "pytorch_lora_weights.safetensors"
INDEX_FILE = "concepts.json"


def export_concepts(out_dir: Path, embeddings: dict[str, torch.Tensor], unet, finetune: str, model: str, run_id: str) -> list[Path]:
    """Write DIR/concepts/: <name>.safetensors per token, LoRA or UNet (`finetune`), and an index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = save_concept_files(out_dir, {t: _to_cpu(v) for t, v in embeddings.items()})
    if finetune == "lora":
        paths.append(save_lora(out_dir, unet, xl=isinstance(next(iter(embeddings.values()), None), dict)))
    elif finetune == "full":
        unet.save_pretrained(str(out_dir / "unet"))
        paths.append(out_dir / "unet")
    index = {"model": model, "run": run_id, "tokens": list(embeddings), "finetune": finetune}
    write_text_atomic(out_dir / INDEX_FILE, json.dumps(index, indent=2) + "\n")
    return paths


def _to_cpu(vec):
    """A learned row (or an SDXL concept's {"clip_l", "clip_g"} rows) as float on the CPU."""
    if isinstance(vec, dict):
        return {k: v.detach().float().cpu() for k, v in vec.items()}
    return vec.detach().float().cpu()


def save_lora(out_dir: Path, unet, xl: bool = False) -> Path:
    """The UNet's LoRA as the stock pipeline saves it (StableDiffusionXLPipeline's for `xl`)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    pipeline_class = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    pipeline_class.save_lora_weights(save_directory=str(out_dir), unet_lora_layers=layers, safe_serialization=True)
    return out_dir / LORA_FILE


def read_index(concepts_dir: Path) -> dict | None:
    """The checked concepts.json of a concepts folder (see `check_concept_index`), or None when there is none."""
    path = concepts_dir / INDEX_FILE
    if not path.is_file():
        return None
    from .tokens import check_concept_index

    return check_concept_index(path)
