"""Build examples/shapes-duo/ from two held-out scenes of the built-in world.

<v1>: the cyan triangle of the first scene (seed 424224, which also holds a
black heart that is no concept); <v2>: the brown heart of the second scene
(seed 515106); <v3>: the second scene's two-tone background.  Their exact
masks are attached as GT masks for evaluation.

    python examples/make_shapes_duo.py [--out examples/shapes-duo]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from conceptforge.project import Project
from conceptforge.shapes.world import sample_scene

FIRST_SEED, SECOND_SEED = 424224, 515106


def _save_mask(mask: np.ndarray, path: Path) -> Path:
    Image.fromarray((mask * 255).astype(np.uint8), "L").save(path)
    return path


def build(out: Path) -> Project:
    first, second = sample_scene(FIRST_SEED, n_objects=2), sample_scene(SECOND_SEED, n_objects=1)
    if out.exists():
        shutil.rmtree(out)
    project = Project.create(out, model="builtin:tiny-shapes")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        first.image.save(t / "first.png")
        second.image.save(t / "second.png")
        project.add_concept(t / "first.png", "<v1>", init="triangle", gt_mask=_save_mask(first.objects[0].mask, t / "v1.png"))
        project.add_concept(t / "second.png", "<v2>", init="heart", gt_mask=_save_mask(second.objects[0].mask, t / "v2.png"))
        project.add_concept(t / "second.png", "<v3>", init="background", background=True, gt_mask=_save_mask(second.background_mask, t / "v3.png"))
    return project


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "shapes-duo")
    args = ap.parse_args()
    print(build(args.out).root)
