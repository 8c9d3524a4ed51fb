"""Runs to report on: one learned with the tiny model, one written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from cli_helpers import cf, make_project
from conftest import draw_scene

RUN_ID = "20260101-000000-em"


def scene_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    a, (a0, a1) = draw_scene(folder / "first.png", 1)
    b, (b0, b1) = draw_scene(folder / "second.png", 2)
    return {"a": a, "a0": a0, "a1": a1, "b": b, "b0": b0, "b1": b1}


def learned_project(root: Path, model: Path) -> Path:
    """A project learned for a few steps, with one sample generated into samples/."""
    proj = make_project(root, model, scene_files(root / "src"))
    r = cf("learn", proj, "--em-steps", "6", "--joint-steps", "2", "-q")
    assert r.exit_code == 0, r.output
    r = cf("generate", proj, "a photo of <v1> and <v3>", "-n", "1", "--steps", "2", "--seed", "3", "-q")
    assert r.exit_code == 0, r.output
    return proj


def box(y: int, x: int, h: int, w: int, size: int = 32) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y : y + h, x : x + w] = True
    return m


def _save(mask: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(path)
    soft = np.clip(mask.astype(np.float32) * 0.8 + 0.1, 0, 1)
    Image.fromarray((soft * 255).astype(np.uint8), "L").save(path.with_name(path.stem + "_attn.png"))


def write_run(proj: Path, masks: dict[int, dict[tuple[str, str], np.ndarray]], gt: dict[tuple[str, str], np.ndarray] | None = None) -> Path:
    """A run folder in the on-disk format learn writes: masks[iteration][(image stem, token)] -> mask.
    Areas and IoU values in metrics.jsonl are computed from the masks."""
    run = proj / "runs" / RUN_ID
    run.mkdir(parents=True)
    timing = {"em_seconds": 3.0, "em_steps_timed": 60, "joint_seconds": 0.0, "joint_steps_timed": 0, "estep_seconds": 1.5}
    (run / "state.json").write_text(json.dumps({"status": "finished", "created": 1767225600.0, "timing": timing}))
    (run / "config.yaml").write_text("model: test\nmasks: em\nem_steps: 6\njoint_steps: 0\nthreshold: 0.5\n")
    lines, prev = [], {}
    for it in sorted(masks):
        recs = []
        for (stem, token), mask in masks[it].items():
            _save(mask, run / "masks" / f"iter_{it:04d}" / stem / f"{token[1:-1]}.png")
            p = prev.get((stem, token))
            iou_prev = None if p is None else _iou(p, mask)
            g = (gt or {}).get((stem, token))
            recs.append({"image": stem, "token": token, "area": float(mask.mean()), "iou_prev": iou_prev, "iou_gt": None if g is None else _iou(g, mask)})
            prev[(stem, token)] = mask
        lines.append({"kind": "estep", "phase": "em", "step": 2 * it, "iteration": it, "converged": False, "masks": recs})
        lines.append({"kind": "step", "phase": "em", "step": 2 * it + 1, "loss": 0.1 / (it + 1), "diffusion": 0.09 / (it + 1), "attention": 0.2})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
