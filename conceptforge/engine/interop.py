"""Write a project's learned concepts in the layouts other tools read.

Formats (`export_project(project, fmt, out)`):

- ``diffusers``: copies of ``concepts/<name>.safetensors`` (``{token: tensor(1, dim)}``,
  read by ``load_textual_inversion``) and ``pytorch_lora_weights.safetensors``
  (read by ``load_lora_weights``); a full fine-tune's ``unet/`` folder is copied too.
- ``a1111`` (AUTOMATIC1111 / ComfyUI): ``<name>.safetensors`` per token holding
  ``{"emb_params": tensor(1, dim)}`` -- the layout kohya-ss ``train_textual_inversion``
  writes; A1111 accepts any safetensors file with exactly one tensor and names the
  embedding after the file, so the prompt word is ``<name>`` without brackets --
  and ``<project>_lora.safetensors`` with the LoRA in kohya-ss key names.  SDXL
  concepts are written as A1111 and ComfyUI read SDXL embeddings:
  ``{"clip_l": tensor(1, 768), "clip_g": tensor(1, 1280)}`` per file, and an
  SDXL LoRA with the module names kohya-ss uses for SDXL, those of the original
  (SGM) UNet: ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``.
- ``kohya`` (kohya-ss sd-scripts): the a1111 files, plus ``images/`` (copies of
  the project's images, each with a caption ``<stem>.txt``: the training prompt
  naming the image's concept tokens) and ``masks/`` (one grayscale PNG per image,
  same stem and size, white = train: the union of the image's concept masks from
  the last E-step, the layout of sd-scripts' masked loss, ``image_dir`` +
  ``conditioning_data_dir``; and ``masks/<stem>/<name>.png``, one mask per concept).
  See docs/export.md.

Every check happens before the first write; every write is atomic and stays
inside the output folder (file names from the project are reduced to plain
names); nothing is deleted (files of an earlier export with the same names are
replaced).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from ..errors import ConceptforgeError, InputError
from ..fsutil import atomic_write
from .export import LORA_FILE, read_index
from .outputs import check_output_dir, check_outside_project_data
from .tokens import embedding_tensors, load_concept_files

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


def lora_to_kohya(state_dict: dict[str, torch.Tensor], scale: float = 1.0, sgm_layers: int | None = None) -> dict[str, torch.Tensor]:
    """A diffusers-layout LoRA state dict in kohya-ss key names.

    ``unet.<module>.lora.down.weight`` (or ``lora_A``) becomes
    ``lora_unet_<module with dots as underscores>.lora_down.weight``, ``up``/``lora_B``
    becomes ``lora_up``, and each module gets ``.alpha`` = rank x scale (kohya applies
    alpha / rank; diffusers applies lora_alpha / r, which is 1 when the file carries none).
    With `sgm_layers` (the UNet's layers_per_block) the UNet modules get the
    original UNet's names, as kohya-ss writes SDXL LoRAs (`sgm_module_name`).
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
        module = sgm_module_name(m["module"], sgm_layers) if sgm_layers and m["part"] == "unet" else m["module"]
        name = f"{_KOHYA_PREFIX[m['part']]}_{module.replace('.', '_')}"
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


def sgm_module_name(module: str, layers: int) -> str:
    """A diffusers UNet attention module's name in the original (SGM/LDM) UNet, whose
    levels hold `layers` + 1 blocks: down_blocks.B.attentions.A -> input_blocks.(1 + B(layers+1) + A).1,
    up_blocks.B.attentions.A -> output_blocks.(B(layers+1) + A).1, mid_block.attentions.0 -> middle_block.1."""
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", module):
        return f"input_blocks.{1 + int(m[1]) * (layers + 1) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", module):
        return f"output_blocks.{int(m[1]) * (layers + 1) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", module):
        return f"middle_block.1.{m[1]}"
    raise InputError(f"The LoRA module {module!r} has no name in the original SDXL UNet, so it cannot be written in kohya-ss's SDXL layout.")


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
    check_outside_project_data(out, project)
    check_output_dir(out)
    concept_files = {t: project.concepts_dir / f"{t[1:-1]}.safetensors" for t in index["tokens"]}
    embeddings = load_concept_files(concept_files)  # every file checked, whatever the format
    lora = project.concepts_dir / LORA_FILE
    finetune = index["finetune"]
    unet_dir = project.concepts_dir / "unet"
    if finetune == "lora" and not lora.is_file():
        raise InputError(f"The LoRA file {lora} is missing (concepts.json says the concepts were learned with one); run `conceptforge learn {project.root}` again.")
    if finetune == "full" and not unet_dir.is_dir():
        raise InputError(f"The fine-tuned UNet folder {unet_dir} is missing; run `conceptforge learn {project.root}` again.")
    has_lora, has_unet = finetune == "lora", finetune == "full"

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
        plan += _embedding_plan(concept_files, embeddings, out)
        if has_lora:
            xl = isinstance(next(iter(embeddings.values())), dict)
            plan.append((out / f"{project_slug(project)}_lora.safetensors", _kohya_lora_writer(lora, _sgm_layers(project) if xl else None)))
        elif has_unet:
            result.notes.append("The project was fine-tuned in full (concepts/unet), which has no LoRA form; only the embeddings are exported.")
        if fmt == "kohya":
            pairs, skipped = _mask_plan(project, index, out)
            plan += pairs
            result.notes += skipped
    for path, write in plan:
        _write(path, write, out, len(result.files))
        result.files.append(path)
    return result


def _write(path: Path, write: Callable[[Path], None], out: Path, done: int) -> None:
    """One atomic write; an OSError becomes one sentence naming the file."""
    import errno

    try:
        atomic_write(path, write)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        kind = InputError if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR) else ConceptforgeError
        raise kind(f"Could not write {path} ({reason}); {done} file(s) of the export to {out} were written before it.") from None


def project_slug(project: "Project") -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", project.root.resolve().name).strip("_") or "project"


def _copier(src: Path) -> Callable[[Path], None]:
    return lambda tmp: shutil.copyfile(src, tmp)


def _embedding_plan(
    concept_files: dict[str, Path], embeddings: dict[str, torch.Tensor], out: Path
) -> list[tuple[Path, Callable[[Path], None]]]:
    from safetensors.torch import save_file

    plan = []
    for token, src in concept_files.items():
        vec = embeddings[token]
        if isinstance(vec, dict):  # SDXL: the layout A1111 and ComfyUI read, one row per text encoder
            tensors = embedding_tensors(token, vec)
        else:
            tensors = {A1111_KEY: vec.float().reshape(1, -1).contiguous()}
        plan.append((out / src.name, lambda tmp, t=tensors: save_file(t, str(tmp))))
    return plan


def _sgm_layers(project: "Project") -> int:
    """layers_per_block of the project's SDXL UNet, from its config (2, SDXL's, when it cannot be read)."""
    from .backbone import resolve_source, unet_config

    try:
        config = unet_config(resolve_source(project.model, project.model_config, base=project.root))
    except InputError:
        config = None
    return int((config or {}).get("layers_per_block", 2))


def _kohya_lora_writer(lora: Path, sgm_layers: int | None = None) -> Callable[[Path], None]:
    from safetensors import safe_open
    from safetensors.torch import save_file

    try:
        with safe_open(str(lora), framework="pt") as fh:
            metadata = fh.metadata()
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable header"
        raise InputError(f"The LoRA file {lora} is damaged or not a safetensors file ({detail}).") from None
    try:
        scale = _lora_scale(metadata)
    except (ValueError, TypeError, ZeroDivisionError):
        raise InputError(f"The LoRA file {lora} has damaged adapter metadata (lora_adapter_metadata).") from None
    converted = lora_to_kohya(state, scale, sgm_layers)
    return lambda tmp: save_file(converted, str(tmp), metadata={"format": "pt"})


def _mask_plan(project: "Project", index: dict, out: Path) -> tuple[list[tuple[Path, Callable[[Path], None]]], list[str]]:
    """Per image with masks: a copy in images/ with its caption (<stem>.txt), the
    union of its concept masks in masks/<stem>.png and each concept's mask in
    masks/<stem>/<name>.png.  Every name written is a plain file name, so
    nothing lands outside `out` whatever the manifest says."""
    import numpy as np

    from .prompts import training_prompt

    folder = _mask_folder(project, index)
    names = [_plain_image_name(entry.file) for entry in project.images]
    stems = [Path(name).stem for name in names]
    clash = next((s for s in stems if stems.count(s) > 1), None)
    if clash is not None:
        raise InputError(f"Two images of the project share the name {clash!r}, so kohya-ss cannot pair them with their masks.")
    builtin = project.model.startswith("builtin:")
    plan: list[tuple[Path, Callable[[Path], None]]] = []
    notes: list[str] = []
    for entry, name, stem in zip(project.images, names, stems):
        src = project.images_dir / name
        width, height = _image_size(src)
        union = np.zeros((height, width), dtype=bool)
        per_concept: list[tuple[str, np.ndarray]] = []
        for concept in entry.concepts:
            path = folder / stem / f"{concept.name}.png"
            if path.is_file():
                mask = _read_mask(path, height, width)
                union |= mask
                per_concept.append((concept.name, mask))
        if not per_concept:
            notes.append(f"The image {name} has no masks in {folder}; it is left out of the kohya data set.")
            continue
        caption = training_prompt([c.token for c in entry.concepts], [c.background for c in entry.concepts], builtin) + "\n"
        plan.append((out / "images" / name, _copier(src)))
        plan.append((out / "images" / f"{stem}.txt", lambda tmp, text=caption: tmp.write_text(text, encoding="utf-8")))
        plan.append((out / "masks" / f"{stem}.png", _mask_writer(union)))
        for concept_name, mask in per_concept:
            plan.append((out / "masks" / stem / f"{concept_name}.png", _mask_writer(mask)))
    return plan, notes


def _mask_folder(project: "Project", index: dict) -> Path:
    """The last E-step's mask folder of the run the concepts came from (else the latest run)."""
    from .runs import RunDir, find_run

    run = None
    if index.get("run"):  # a plain folder name, checked by read_index
        candidate = RunDir(project.runs_dir / index["run"])
        if candidate.path.is_dir() and candidate.iterations():
            run = candidate
    if run is None:
        run = find_run(project.runs_dir, None)  # the latest run
    iterations = run.iterations()
    if not iterations:
        raise InputError(f"The run {run.id} has no masks yet; run `conceptforge learn {project.root}` first.")
    return run.iteration_dir(iterations[-1])


def _plain_image_name(file: str) -> str:
    """An image's name in images/, refused unless it is a plain file name."""
    name = Path(file).name
    if not name or name in (".", "..") or name != file or "\\" in file:
        raise InputError(f"The manifest names the image {file!r}, which is not a plain file name in images/.")
    return name


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    if not path.is_file():
        raise InputError(f"The image {path} is missing from the project.")
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        raise InputError(f"The image {path} is damaged or not an image.") from None


def _read_mask(path: Path, height: int, width: int):
    from .masks import load_mask_png, resize_mask

    try:
        mask = load_mask_png(path)
    except (OSError, ValueError):
        raise InputError(f"The mask {path} is damaged or not an image; run `conceptforge learn` again to rewrite it.") from None
    return mask if mask.shape == (height, width) else resize_mask(mask, height, width)


def _mask_writer(mask) -> Callable[[Path], None]:
    import numpy as np
    from PIL import Image

    pixels = mask.astype(np.uint8) * 255
    return lambda tmp: Image.fromarray(pixels, "L").save(tmp, format="PNG")
