"""What a later E-step's error signal sees with each reference prompt.

For built-in scenes of the first development set: the first E-step, 50
EM-phase training steps on its masks (no later E-step), then one error pass
with each reference (`init`: the token's init word in its place; `drop`: the
token left out), 8 timesteps on the same noise.  Per object token: the total
rise of the error (the signal's strength before min-max normalisation) and
the share of it that lies on each true object, beside the share of its
cross-attention from the same pass.  Prints a table; writes nothing.

    python benchmarks/error_reference.py [--seeds 800006,800021] [--steps 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def shares(signal: np.ndarray, objects: list[np.ndarray]) -> str:
    total = float(signal.sum()) + 1e-9
    return " ".join(f"{float((signal * o).sum()) / total:.2f}" for o in objects)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="800006,800021", help="built-in scene seeds (development scenes)")
    ap.add_argument("--steps", type=int, default=50, help="EM-phase training steps before the pass")
    args = ap.parse_args()
    from scene_projects import scene_project

    from conceptforge.engine.config import resolve_config
    from conceptforge.engine.learn import build_trainer
    from conceptforge.engine.masks import iou
    from conceptforge.engine.regions import cell_shares
    from conceptforge.project import Project
    from conceptforge.shapes.world import sample_scene

    torch.set_num_threads(1)
    print("| scene | token | first mask IoU | reference | error rise, total | error share per object | attention share per object |")
    print("|---|---|---:|---|---:|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        scene = sample_scene(seed)
        root = scene_project(Path(tempfile.mkdtemp()) / "p", [seed])
        trainer = build_trainer(Project.load(root), resolve_config(True, {}, {}))
        trainer.start()
        for _ in range(args.steps):
            trainer.train_step()
        data, att = trainer.images[0], trainer.model.att
        objects = [cell_shares(o.mask, att) for o in scene.objects]
        names = "/".join(o.shape for o in scene.objects)
        for reference in ("init", "drop"):
            gain, attention = trainer.estimator.error_maps(0, 8, seed=1000, use_init=reference == "init")
            pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(gain), att).numpy()
            for k, token in enumerate(data.tokens[: len(objects)]):
                first = iou(trainer.masks[(0, token)], data.gt[k])
                print(f"| {seed} ({names}) | {token} | {first:.2f} | {reference} | {pooled[k].sum():.2f} | {shares(pooled[k], objects)} | {shares(attention[k], objects)} |")


if __name__ == "__main__":
    main()
