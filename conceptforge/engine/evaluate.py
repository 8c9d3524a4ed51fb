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


def iou_curves(run: RunDir) -> dict[str, Any]:
    """IoU with the GT mask per concept at every E-step."""
    curves: dict[str, dict[str, Any]] = {}
    for rec in estep_records(run):
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
    """IoU against step, one line per concept, drawn with PIL."""
    from PIL import Image, ImageDraw

    w, h, pad = 640, 400, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    concepts = curves["concepts"]
    max_step = max((max(c["steps"]) for c in concepts if c["steps"]), default=1) or 1
    d.rectangle([pad, pad // 2, w - pad // 2, h - pad], outline="black")
    for k in range(0, 11, 2):
        y = h - pad - (h - 1.5 * pad) * k / 10
        d.text((8, y - 6), f"{k / 10:.1f}", fill="black")
    d.text((w // 2 - 20, h - pad + 10), f"step (0-{max_step})", fill="black")
    d.text((pad, 4), title, fill="black")
    colors = [tuple(int(v) for v in c) for c in mask_ops.PALETTE]
    for i, c in enumerate(concepts):
        pts = [(pad + (w - 1.5 * pad) * s / max_step, h - pad - (h - 1.5 * pad) * v) for s, v in zip(c["steps"], c["iou"])]
        color = colors[i % len(colors)]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        for x, y in pts:
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        d.text((w - 190, pad // 2 + 6 + 14 * i), f"{c['image']} {c['token']}", fill=color)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
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
    from PIL import Image

    from ..shapes.recognise import recognise

    last = run.iterations()[-1] if run.iterations() else None
    out: dict[str, ConceptIdentity] = {}
    for entry in project.images:
        with Image.open(project.image_path(entry)) as im:
            reading = recognise(im.convert("RGB"))
        for c in entry.concepts:
            if c.token in out:
                continue
            if c.background:
                out[c.token] = ConceptIdentity(c.token, True, list(reading.background), None)
                continue
            path = project.gt_mask_path(c)
            if path is None and last is not None:
                path = run.iteration_dir(last) / entry.stem / f"{c.name}.png"
            region = mask_ops.load_mask_png(path) if path is not None and path.is_file() else None
            best = max(reading.objects, key=lambda o: mask_ops.iou(o.mask, region) if region is not None else o.mask.sum(), default=None)
            out[c.token] = ConceptIdentity(c.token, False, list(best.colors) if best else [], best.shape if best else None)
    return list(out.values())


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
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(clip_path)).eval()
    processor = CLIPProcessor.from_pretrained(str(clip_path))
    from PIL import Image

    results = []
    for token in tokens:
        entry = next(im for im in project.images if any(c.token == token for c in im.concepts))
        with Image.open(project.image_path(entry)) as im:
            reference = im.convert("RGB")
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
