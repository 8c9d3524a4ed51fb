"""Write a project's learned concepts in the layouts other tools read.

Formats (`export_project(project, fmt, out)`):

- ``diffusers``: copies of ``concepts/<name>.safetensors`` (``{token: tensor(1, dim)}``,
  read by ``load_textual_inversion``) and ``pytorch_lora_weights.safetensors``
  (read by ``load_lora_weights``); a full fine-tune's ``unet/`` folder is copied too.
- ``a1111`` (AUTOMATIC1111 / ComfyUI): ``<name>.safetensors`` per token holding
  ``{"emb_params": tensor(1, dim)}`` -- the layout kohya-ss ``train_textual_inversion``
  writes; A1111 accepts any safetensors file with exactly one tensor and names the
  embedding after the file, so the prompt word is ``<name>`` without brackets --
  and ``<project>_lora.safetensors`` with the LoRA in kohya-ss key names.
- ``kohya`` (kohya-ss sd-scripts): the a1111 files, plus ``images/`` (copies of
  the project's images) and ``masks/`` (one grayscale PNG per image, same stem and
  size, white = train: the union of the image's concept masks from the last E-step),
  the layout of sd-scripts' masked loss (``image_dir`` + ``conditioning_data_dir``).

Every check happens before the first write; every write is atomic; nothing is
deleted (files of an earlier export with the same names are replaced).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..errors import InputError
from ..fsutil import atomic_write
from .export import LORA_FILE, read_index

if TYPE_CHECKING:
    from ..project import Project

FORMATS = ("diffusers", "a1111", "kohya")
A1111_KEY = "emb_params"

# diffusers / PEFT names of a LoRA module's two matrices -> kohya-ss names
_LORA_KEY = re.compile(
    r"^(?P<part>unet|text_encoder)\.(?P<module>.+)\."
    r"(?P<kind>lora\.down|lora\.up|lora_A|lora_B|lora_linear_layer\.down|lora_linear_layer\.up)\.weight$"
)
_KOHYA_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te"}
_KOHYA_KIND = {
    "lora.down": "lora_down", "lora_A": "lora_down", "lora_linear_layer.down": "lora_down",
    "lora.up": "lora_up", "lora_B": "lora_up", "lora_linear_layer.up": "lora_up",
}


@dataclass
class ExportResult:
    format: str
    out: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"format": self.format, "out": str(self.out), "files": [str(p) for p in self.files], "notes": self.notes}


# --------------------------------------------------------------------------- conversions


def lora_to_kohya(state_dict: dict[str, torch.Tensor], scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A diffusers-layout LoRA state dict in kohya-ss key names.

    ``unet.<module>.lora.down.weight`` (or ``lora_A``) becomes
    ``lora_unet_<module with dots as underscores>.lora_down.weight``, ``up``/``lora_B``
    becomes ``lora_up``, and each module gets ``.alpha`` = rank x scale (kohya applies
    alpha / rank; diffusers applies lora_alpha / r, which is 1 when the file carries none).
    """
    out: dict[str, torch.Tensor] = {}
    alphas: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.endswith(".alpha"):
            part, _, module = key[: -len(".alpha")].partition(".")
            if part in _KOHYA_PREFIX:
                alphas[f"{_KOHYA_PREFIX[part]}_{module.replace('.', '_')}"] = tensor.reshape(())
                continue
        m = _LORA_KEY.match(key)
        if m is None:
            raise InputError(f"The LoRA key {key!r} is not in a layout conceptforge can convert to kohya-ss names.")
        name = f"{_KOHYA_PREFIX[m['part']]}_{m['module'].replace('.', '_')}"
        out[f"{name}.{_KOHYA_KIND[m['kind']]}.weight"] = tensor.contiguous()
    for key in list(out):
        name, _, rest = key.partition(".")
        if rest != "lora_down.weight":
            continue
        if f"{name}.lora_up.weight" not in out:
            raise InputError(f"The LoRA module {name} has a down matrix but no up matrix.")
        rank = out[key].shape[0]
        out[f"{name}.alpha"] = alphas.get(name, torch.tensor(float(rank) * scale)).to(torch.float32).reshape(())
    if any(k.endswith(".lora_up.weight") and k.replace("lora_up", "lora_down") not in out for k in out):
        raise InputError("The LoRA file has an up matrix without its down matrix.")
    return out


def _lora_scale(metadata: dict[str, str] | None) -> float:
    """lora_alpha / r from the adapter metadata diffusers may store in the file (1 when absent)."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return 1.0
    meta = json.loads(raw)
    if meta.get("unet.alpha_pattern") or meta.get("unet.rank_pattern"):
        raise InputError("The LoRA file sets a per-module rank or alpha, which the kohya-ss export does not support.")
    r, alpha = meta.get("unet.r"), meta.get("unet.lora_alpha")
    return float(alpha) / float(r) if r and alpha else 1.0


# --------------------------------------------------------------------------- the export


def export_project(project: "Project", fmt: str, out: Path) -> ExportResult:
    """Write the project's learned concepts in format `fmt` under `out`."""
    if fmt not in FORMATS:
        raise InputError(f"Format {fmt!r} is not one of {', '.join(FORMATS)}.")
    index = read_index(project.concepts_dir)
    if index is None or not index.get("tokens"):
        raise InputError(f"No learned concepts in {project.concepts_dir}; run `conceptforge learn {project.root}` first.")
    _check_out(out)
    concept_files = {t: project.concepts_dir / f"{t[1:-1]}.safetensors" for t in index["tokens"]}
    missing = [p for p in concept_files.values() if not p.is_file()]
    if missing:
        raise InputError(f"The concept file {missing[0]} is missing; run `conceptforge learn {project.root}` again.")
    lora = project.concepts_dir / LORA_FILE
    finetune = index.get("finetune", "none")
    has_lora = finetune == "lora" and lora.is_file()
    unet_dir = project.concepts_dir / "unet"
    has_unet = finetune == "full" and unet_dir.is_dir()

    # plan every write (reading and converting first), then write
    plan: list[tuple[Path, Callable[[Path], None]]] = []
    result = ExportResult(format=fmt, out=out)
    if fmt == "diffusers":
        for src in concept_files.values():
            plan.append((out / src.name, _copier(src)))
        if has_lora:
            plan.append((out / LORA_FILE, _copier(lora)))
        if has_unet:
            for src in sorted(p for p in unet_dir.rglob("*") if p.is_file()):
                plan.append((out / "unet" / src.relative_to(unet_dir), _copier(src)))
    else:
        plan += _embedding_plan(concept_files, out)
        if has_lora:
            plan.append((out / f"{project_slug(project)}_lora.safetensors", _kohya_lora_writer(lora)))
        elif has_unet:
            result.notes.append("The project was fine-tuned in full (concepts/unet), which has no LoRA form; only the embeddings are exported.")
        if fmt == "kohya":
            pairs, skipped = _mask_plan(project, index, out)
            plan += pairs
            result.notes += skipped
    for path, write in plan:
        atomic_write(path, write)
        result.files.append(path)
    return result


def project_slug(project: "Project") -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", project.root.resolve().name).strip("_") or "project"


def _check_out(out: Path) -> None:
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise InputError(f"The output path {p} exists and is not a folder.")
            break


def _copier(src: Path) -> Callable[[Path], None]:
    return lambda tmp: shutil.copyfile(src, tmp)


def _embedding_plan(concept_files: dict[str, Path], out: Path) -> list[tuple[Path, Callable[[Path], None]]]:
    from safetensors.torch import load_file, save_file

    plan = []
    for src in concept_files.values():
        data = load_file(str(src))
        if len(data) != 1:
            raise InputError(f"The concept file {src} holds {len(data)} tensors, not one.")
        vec = next(iter(data.values())).float()
        vec = (vec.reshape(1, -1) if vec.dim() == 1 else vec).contiguous()
        plan.append((out / src.name, lambda tmp, v=vec: save_file({A1111_KEY: v}, str(tmp))))
    return plan


def _kohya_lora_writer(lora: Path) -> Callable[[Path], None]:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(lora), framework="pt") as fh:
        metadata = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    converted = lora_to_kohya(state, _lora_scale(metadata))
    return lambda tmp: save_file(converted, str(tmp), metadata={"format": "pt"})


def _mask_plan(project: "Project", index: dict, out: Path) -> tuple[list[tuple[Path, Callable[[Path], None]]], list[str]]:
    """Copies of the images in images/ and the union of each image's concept masks in masks/."""
    import numpy as np
    from PIL import Image

    from .masks import load_mask_png, resize_mask
    from .runs import RunDir, find_run

    run = RunDir(project.runs_dir / index["run"]) if index.get("run") else None
    if run is None or not run.iterations():
        run = find_run(project.runs_dir, None)  # the latest run
    iterations = run.iterations()
    if not iterations:
        raise InputError(f"The run {run.id} has no masks yet; run `conceptforge learn {project.root}` first.")
    folder = run.iteration_dir(iterations[-1])
    stems = [entry.stem for entry in project.images]
    clash = next((s for s in stems if stems.count(s) > 1), None)
    if clash is not None:
        raise InputError(f"Two images of the project share the name {clash!r}, so kohya-ss cannot pair them with their masks.")
    plan: list[tuple[Path, Callable[[Path], None]]] = []
    notes: list[str] = []
    for entry in project.images:
        src = project.image_path(entry)
        if not src.is_file():
            raise InputError(f"The image {src} is missing from the project.")
        with Image.open(src) as im:
            width, height = im.size
        union = np.zeros((height, width), dtype=bool)
        found = 0
        for concept in entry.concepts:
            path = folder / entry.stem / f"{concept.name}.png"
            if not path.is_file():
                continue
            mask = load_mask_png(path)
            if mask.shape != (height, width):
                mask = resize_mask(mask, height, width)
            union |= mask
            found += 1
        if not found:
            notes.append(f"The image {entry.file} has no masks in {folder}; it is left out of the kohya data set.")
            continue
        pixels = union.astype(np.uint8) * 255
        plan.append((out / "images" / entry.file, _copier(src)))
        plan.append((out / "masks" / f"{entry.stem}.png", lambda tmp, a=pixels: Image.fromarray(a, "L").save(tmp, format="PNG")))
    return plan, notes
