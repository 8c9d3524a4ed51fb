"""Measure a learned project: mask IoU per E-step against GT masks (paper
Fig. 3) and generation fidelity/diversity (paper Table I).

On the built-in model, fidelity is judged by the world's deterministic
recogniser: does a sample show the concept's colours and shape (or, for a
background concept, its background colours)?  With other models, CLIP image
and text similarity when local CLIP weights are given.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..project import Project
from . import masks as mask_ops
from .report import estep_records
from .runs import RunDir

BUILTIN_OBJECT_TEMPLATES = ("a {t}", "a {t} on a gray background", "a {t} and a blue square on a white background")
BUILTIN_BACKGROUND_TEMPLATES = ("a {t}", "a red circle on a {t}", "a yellow star on a {t}")
SD_TEMPLATES = ("a photo of {t}", "a photo of {t} on a beach", "a painting of {t}")


def checked_estep_records(run: RunDir) -> list[dict[str, Any]]:
    """The run's E-step records (see `report.estep_records`), each checked for
    the fields the reports read; a damaged metrics.jsonl is an InputError naming it."""
    from ..errors import InputError

    def bad(what: str) -> InputError:
        return InputError(f"The metrics file {run.metrics_path} is damaged ({what}); run `conceptforge learn` again to rewrite it.")

    try:
        records = estep_records(run)
    except (KeyError, TypeError):
        raise bad("an E-step record has no iteration number") from None
    for rec in records:
        if not isinstance(rec.get("iteration"), int) or not isinstance(rec.get("step"), int):
            raise bad("an E-step record has no iteration or step number")
        masks = rec.get("masks")
        if not isinstance(masks, list) or not all(isinstance(m, dict) for m in masks):
            raise bad(f"E-step {rec['iteration']} has no list of masks")
        for m in masks:
            if not isinstance(m.get("image"), str) or not isinstance(m.get("token"), str) or len(m["token"]) < 3:
                raise bad(f"a mask of E-step {rec['iteration']} names no image or token")
            for key in ("area", "iou_prev", "iou_gt"):
                value = m.get(key)
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise bad(f"a mask of E-step {rec['iteration']} has a {key} that is not a number")
            if not isinstance(m.get("area"), (int, float)):
                raise bad(f"a mask of E-step {rec['iteration']} has no area")
    return records


def iou_curves(run: RunDir) -> dict[str, Any]:
    """IoU with the GT mask per concept at every E-step."""
    curves: dict[str, dict[str, Any]] = {}
    for rec in checked_estep_records(run):
        for m in rec["masks"]:
            if m.get("iou_gt") is None:
                continue
            key = f"{m['image']} {m['token']}"
            c = curves.setdefault(key, {"image": m["image"], "token": m["token"], "steps": [], "iou": []})
            c["steps"].append(rec["step"])
            c["iou"].append(m["iou_gt"])
    for c in curves.values():
        c["first"], c["final"] = c["iou"][0], c["iou"][-1]
    finals = [c["final"] for c in curves.values()]
    firsts = [c["first"] for c in curves.values()]
    return {
        "concepts": list(curves.values()),
        "mean_first": float(np.mean(firsts)) if firsts else None,
        "mean_final": float(np.mean(finals)) if finals else None,
    }


def plot_curves(curves: dict[str, Any], out: Path, title: str) -> Path:
    """IoU with the GT mask against step, one line per concept, as a matplotlib PNG."""
    from ..fsutil import atomic_write
    from .plots import iou_gt_png

    data = iou_gt_png(curves["concepts"], title, figsize=(6.4, 4.4))
    atomic_write(out, lambda tmp: tmp.write_bytes(data))
    return out


@dataclass
class ConceptIdentity:
    """What a concept looks like in the built-in world."""

    token: str
    background: bool
    colors: list[str]
    shape: str | None


def builtin_identities(project: Project, run: RunDir) -> list[ConceptIdentity]:
    """Read each concept's colours/shape off its image with the recogniser,
    using its GT mask (or the run's final mask) to pick the object."""
    from ..shapes.recognise import recognise

    last = run.iterations()[-1] if run.iterations() else None
    out: dict[str, ConceptIdentity] = {}
    for entry in project.images:
        reading = recognise(_read_image(project.image_path(entry), "image"))
        for c in entry.concepts:
            if c.token in out:
                continue
            if c.background:
                out[c.token] = ConceptIdentity(c.token, True, list(reading.background), None)
                continue
            path = project.gt_mask_path(c)
            if path is None and last is not None:
                path = run.iteration_dir(last) / entry.stem / f"{c.name}.png"
            region = _read_mask(path) if path is not None and path.is_file() else None
            best = max(reading.objects, key=lambda o: _overlap(o.mask, region), default=None)
            out[c.token] = ConceptIdentity(c.token, False, list(best.colors) if best else [], best.shape if best else None)
    return list(out.values())


def _overlap(found: np.ndarray, region: np.ndarray | None) -> float:
    """IoU of a recognised object's mask with a concept's region, compared at
    the object mask's size (the recogniser reads images at its own size, a
    project's images and masks may have any); the object's area without a region."""
    if region is None:
        return float(found.sum())
    if region.shape != found.shape:
        region = mask_ops.resize_mask(region, *found.shape)
    return mask_ops.iou(found, region)


def _read_image(path: Path, what: str):
    from PIL import Image

    from ..errors import InputError

    if not path.is_file():
        raise InputError(f"The {what} {path} is missing from the project.")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError):
        raise InputError(f"The {what} {path} is damaged or not an image.") from None


def _read_mask(path: Path) -> np.ndarray:
    from ..errors import InputError

    try:
        return mask_ops.load_mask_png(path)
    except (OSError, ValueError):
        raise InputError(f"The mask {path} is damaged or not an image.") from None


def builtin_fidelity(pipe, identities: list[ConceptIdentity], n: int, steps: int, guidance: float, seed: int) -> dict[str, Any]:
    """Per concept, over its samples: `fidelity`, the share in which the
    recogniser finds the concept exactly (an object of its colours and shape,
    or its background colours); `score`, partial credit (see `concept_score`);
    and the mean pairwise pixel distance of the samples of one prompt."""
    from ..shapes.recognise import background_is, contains, recognise

    per_concept = []
    for ident in identities:
        templates = BUILTIN_BACKGROUND_TEMPLATES if ident.background else BUILTIN_OBJECT_TEMPLATES
        exact, scores, diversities = [], [], []
        for k, template in enumerate(templates):
            prompt = template.format(t=ident.token)
            images = _sample(pipe, prompt, n, steps, guidance, seed + 1000 * k)
            for im in images:
                reading = recognise(im)
                exact.append(background_is(reading, ident.colors) if ident.background else contains(reading, ident.colors, ident.shape))
                scores.append(concept_score(reading, ident))
            diversities.append(pixel_diversity(images))
        per_concept.append(
            {
                "token": ident.token, "colors": ident.colors, "shape": ident.shape,
                "fidelity": float(np.mean(exact)) if exact else 0.0, "score": float(np.mean(scores)) if scores else 0.0,
                "diversity": float(np.mean(diversities)), "samples": len(exact),
            }
        )
    mean = lambda key: float(np.mean([c[key] for c in per_concept])) if per_concept else None  # noqa: E731
    return {"concepts": per_concept, "mean_fidelity": mean("fidelity"), "mean_score": mean("score"), "mean_diversity": mean("diversity")}


def concept_score(reading, ident: ConceptIdentity) -> float:
    """Partial credit for one sample, in [0, 1].

    Object: the best object of the sample, half for having exactly the
    concept's colours and half for its shape.  Background: the share of the
    concept's background colours (ground, sky) the sample's background has.
    """
    from ..shapes.recognise import same_colors

    if ident.background:
        if not ident.colors:
            return 0.0
        return len(set(reading.background) & set(ident.colors)) / max(len(ident.colors), len(reading.background))
    best = 0.0
    for obj in reading.objects:
        value = 0.5 * same_colors(obj.colors, ident.colors) + 0.5 * (obj.shape == ident.shape)
        best = max(best, value)
    return best


def pixel_diversity(images: list) -> float:
    """Mean pairwise RMS pixel distance (0-1) between samples of one prompt."""
    arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in images]
    pairs = list(itertools.combinations(range(len(arrays)), 2))
    if not pairs:
        return 0.0
    return float(np.mean([np.sqrt(((arrays[i] - arrays[j]) ** 2).mean()) for i, j in pairs]))


def _sample(pipe, prompt: str, n: int, steps: int, guidance: float, seed: int) -> list:
    gen = torch.Generator().manual_seed(seed)
    return pipe([prompt] * n, num_inference_steps=steps, guidance_scale=guidance, generator=gen).images


def clip_scores(pipe, project: Project, tokens: list[str], clip_path: Path, n: int, steps: int, guidance: float, seed: int) -> dict[str, Any]:
    """CLIP image similarity to the concept's image, and text similarity to the prompt without tokens."""
    model, processor = load_clip(clip_path)

    results = []
    for token in tokens:
        entry = next((im for im in project.images if any(c.token == token for c in im.concepts)), None)
        if entry is None:
            from ..errors import InputError

            raise InputError(f"The learned token {token} is no concept of the project any more; run `conceptforge learn` again.")
        reference = _read_image(project.image_path(entry), "image")
        img_sims, txt_sims = [], []
        for k, template in enumerate(SD_TEMPLATES):
            prompt = template.format(t=token)
            plain = template.format(t="").replace("  ", " ").strip()
            images = _sample(pipe, prompt, n, steps, guidance, seed + 1000 * k)
            with torch.no_grad():
                feats = model.get_image_features(**processor(images=images + [reference], return_tensors="pt"))
                feats = feats / feats.norm(dim=-1, keepdim=True)
                text = model.get_text_features(**processor(text=[plain], return_tensors="pt", padding=True))
                text = text / text.norm(dim=-1, keepdim=True)
            img_sims.append(float((feats[:-1] @ feats[-1]).mean()))
            txt_sims.append(float((feats[:-1] @ text[0]).mean()))
        results.append({"token": token, "clip_image": float(np.mean(img_sims)), "clip_text": float(np.mean(txt_sims))})
    return {"concepts": results}


def load_clip(clip_path: Path):
    """A local CLIP model and its processor; a folder that is not one is an InputError."""
    from transformers import CLIPModel, CLIPProcessor

    from ..errors import InputError

    if not clip_path.is_dir():
        raise InputError(f"The CLIP model folder {clip_path} does not exist or is not a folder.")
    try:
        return CLIPModel.from_pretrained(str(clip_path), local_files_only=True).eval(), CLIPProcessor.from_pretrained(str(clip_path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a folder that is not a CLIP model
        lines = [line for line in str(exc).splitlines() if line.strip()]
        detail = lines[0].strip() if lines else "unreadable"
        raise InputError(f"The folder {clip_path} is not a CLIP model transformers can load ({detail}).") from None
