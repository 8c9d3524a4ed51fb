"""Built-in projects for the benchmarks: scenes of the shapes world added to a
fresh project with the tokens and init words a plan gives, each concept with
its exact mask (so runs record IoUs); and masks scored against a scene's true
objects when which mask belongs to which object is not known."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from conceptforge.engine.masks import iou
from conceptforge.project import Project


@dataclass
class PlannedConcept:
    """One concept of a scene: its token, init word, background flag and exact mask."""

    token: str
    init: str
    background: bool
    mask: np.ndarray


def build_project(root: Path, scenes: list[tuple[int, Image.Image, list[PlannedConcept]]]) -> list[str]:
    """A fresh project at `root` (an old one there is removed) of the scenes
    (seed, image, concepts); returns each scene's image stem in the project."""
    if root.exists():
        shutil.rmtree(root)
    project = Project.create(root)
    stems = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for seed, image, concepts in scenes:
            path = folder / f"scene{seed}.png"
            image.save(path)
            for c in concepts:
                mask = folder / f"{seed}-{c.token.strip('<>')}.png"
                Image.fromarray((np.asarray(c.mask, bool) * 255).astype(np.uint8)).save(mask)
                entry, _ = project.add_concept(path, c.token, init=c.init, background=c.background, gt_mask=mask)
            stems.append(entry.stem)
    return stems


def scene_project(root: Path, seeds: list[int]) -> Path:
    """A built-in project of the scenes: one token per object (its shape word) and one per background."""
    from conceptforge.shapes.world import sample_scene

    scenes = []
    for seed in seeds:
        scene = sample_scene(seed)
        concepts = [PlannedConcept(f"<s{seed}-o{k}>", obj.shape, False, obj.mask) for k, obj in enumerate(scene.objects)]
        concepts.append(PlannedConcept(f"<s{seed}-bg>", "background", True, scene.background_mask))
        scenes.append((seed, scene.image, concepts))
    build_project(root, scenes)
    return root


def matched_ious(masks: list[np.ndarray], truth: list[np.ndarray]) -> list[float]:
    """Per true object, the IoU of the mask matched to it one-to-one (Hungarian
    on IoU, maximising the total); 0 for an object no mask is matched to."""
    out = [0.0] * len(truth)
    if not masks or not truth:
        return out
    cost = np.array([[iou(m, t) for t in truth] for m in masks])
    for r, c in zip(*linear_sum_assignment(-cost)):
        out[c] = float(cost[r, c])
    return out
