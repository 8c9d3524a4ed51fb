"""First masks on the built-in world: how well each `init_mask_signal` places
the initial masks, before any token has learned anything.

On the development scenes of `benchmarks/masks.py` (the first N qualifying
seeds from 800000: 24 are dev1 and dev2, 48 dev1-dev4; each object's concept initialised
from its shape word, one for the background), compute the first
E-step's masks with each signal and report, for object concepts: mean IoU with
their own exact mask, the share placed right (IoU > 0.5), and the share placed
on another object (IoU with another object's mask above 0.2 and above its own);
and the background's mean IoU.

    python benchmarks/first_masks.py [--scenes 24] [--signals attention,error,both]
        [--timesteps 50,32,24] [--scores explained,mass]

`--timesteps` compares `init_mask_timesteps` values and `--scores` the joint
assignment's `assignment_score`, each with every signal.

Writes benchmarks/results/first_masks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from masks import SETS, Unit, make_project, scene_seeds  # noqa: E402

from conceptforge.engine import masks as mask_ops  # noqa: E402
from conceptforge.engine.config import MaskSignal, resolve_config  # noqa: E402
from conceptforge.engine.learn import build_trainer  # noqa: E402
from conceptforge.engine.trainer import Trainer  # noqa: E402
from conceptforge.project import Project  # noqa: E402


def first_masks(learner: Trainer, signal: str) -> list[np.ndarray]:
    """The masks the first E-step would make on image 0 with `signal`."""
    estimator = learner.estimator
    estimator.cfg = estimator.cfg.model_copy(update={"init_mask_signal": signal})
    result = estimator.estimate(0)
    return [result.masks[(0, t)] for t in learner.images[0].tokens]


def score_scene(learner: Trainer, masks: list[np.ndarray]) -> list[dict]:
    """Per concept: IoU with its own exact mask and the best IoU with another object's."""
    data = learner.images[0]
    objects = [k for k, background in enumerate(data.background) if not background]
    rows = []
    for k, mask in enumerate(masks):
        other = max([mask_ops.iou(mask, data.gt[j]) for j in objects if j != k] or [0.0])
        rows.append({"token": data.tokens[k], "background": data.background[k], "own": mask_ops.iou(mask, data.gt[k]), "other": other})
    return rows


def summarise(rows: list[dict]) -> dict[str, float]:
    objs = [r for r in rows if not r["background"]]
    bg = [r for r in rows if r["background"]]
    return {
        "objects": float(np.mean([r["own"] for r in objs])),
        "right": float(np.mean([r["own"] > 0.5 for r in objs])),
        "on_other": float(np.mean([r["other"] > max(r["own"], 0.2) for r in objs])),
        "background": float(np.mean([r["own"] for r in bg])),
        "n_objects": len(objs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=24)
    ap.add_argument("--signals", default=",".join(MaskSignal.__args__))
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "first_masks")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "first_masks.md")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timesteps", default="", help="compare init_mask_timesteps values (e.g. 50,32,24), each with every signal")
    ap.add_argument("--scores", default="", help="compare assignment_score values (explained,mass), each with every signal")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    signals = [s for s in args.signals.split(",") if s]
    counts = [int(n) for n in args.timesteps.split(",") if n] or [None]
    scores = [v for v in args.scores.split(",") if v] or [None]
    variants = [(s, n, v) for v in scores for n in counts for s in signals]
    rows: dict[tuple, list[dict]] = {v: [] for v in variants}
    dev = SETS["dev1"]
    seeds = scene_seeds(args.scenes, base=dev.base, end=dev.end)
    for seed in seeds:
        make_project(args.work / str(seed), Unit(str(seed), [seed]))
        project = Project.load(args.work / str(seed))
        for v in scores:
            for n in counts:
                overrides = {k: x for k, x in (("init_mask_timesteps", n), ("assignment_score", v)) if x is not None}
                learner = build_trainer(project, resolve_config(True, {}, overrides))
                for s in signals:
                    scored = score_scene(learner, first_masks(learner, s))
                    rows[(s, n, v)] += scored
                    print(f"scene {seed} {s:9s} {n or ''} {v or ''} " + " ".join(f"{r['token']} {r['own']:.2f}" for r in scored), flush=True)
    first = summarise(rows[variants[0]])
    lines = [
        "# First masks on the built-in world, by `init_mask_signal`",
        "",
        f"Produced by `{' '.join(['python', 'benchmarks/first_masks.py', *sys.argv[1:]])}`: {len(seeds)} development scenes "
        f"(dev1-dev{-(-len(seeds) // 12)}) (seeds {seeds[0]}-{seeds[-1]}), {first['n_objects']} object concepts.",
        "",
        "| signal | init_mask_timesteps | assignment_score | objects: mean IoU | placed right (IoU > 0.5) | placed on another object | background IoU |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    defaults = resolve_config(True, {}, {})
    for s, n, v in variants:
        m = summarise(rows[(s, n, v)])
        lines.append(
            f"| {s} | {n or defaults.init_mask_timesteps} | {v or defaults.assignment_score} | {m['objects']:.3f} | {m['right']:.2f} "
            f"| {m['on_other']:.2f} | {m['background']:.3f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
