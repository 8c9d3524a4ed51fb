"""Export a learned run: one textual-inversion file per token and the
fine-tuned weights (LoRA in the diffusers layout, or a full UNet)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..fsutil import write_text_atomic
from .tokens import save_concept_files

if TYPE_CHECKING:
    from .em import Learner

LORA_FILE = "pytorch_lora_weights.safetensors"
INDEX_FILE = "concepts.json"


def export_concepts(out_dir: Path, learner: "Learner") -> list[Path]:
    """Write DIR/concepts/: <name>.safetensors per token, LoRA or UNet, and an index."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = learner.rows.rows.detach().float().cpu()
    paths = save_concept_files(out_dir, {t: rows[k] for k, t in enumerate(learner.tokens)})
    finetune = learner.cfg.finetune if learner.cfg.joint_steps > 0 else "none"
    if finetune == "lora":
        paths.append(save_lora(out_dir, learner.unet))
    elif finetune == "full":
        learner.unet.save_pretrained(str(out_dir / "unet"))
        paths.append(out_dir / "unet")
    index = {"model": learner.project.model, "run": learner.run.id, "tokens": learner.tokens, "finetune": finetune}
    write_text_atomic(out_dir / INDEX_FILE, json.dumps(index, indent=2) + "\n")
    return paths


def save_lora(out_dir: Path, unet) -> Path:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(save_directory=str(out_dir), unet_lora_layers=layers, safe_serialization=True)
    return out_dir / LORA_FILE


def read_index(concepts_dir: Path) -> dict | None:
    path = concepts_dir / INDEX_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
