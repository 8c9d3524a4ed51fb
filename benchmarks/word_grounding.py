"""Does the built-in model tell the development scenes' shapes apart by their words alone?

The first E-step places each object concept by its init word (a bare shape
word, as a user would write `--init heart`).  When it puts two concepts on each
other's objects, no later E-step has moved them back on the development sets.
This measures whether the model itself reads the words the other way round:
for every object of a development scene (the first N qualifying seeds from
800000, as `benchmarks/first_masks.py`), with its exact region given, compare
the denoising error on that region under the one-object prompts "a W on a
background" for each object word W of the scene (shared noise and timesteps,
16 timesteps per band of the mask timestep range).  An object is read right
when its own word gives the lowest error there.  Objects are split by where the
first E-step (shipped defaults) placed them: right (IoU > 0.5) or on another
object.

    python benchmarks/word_grounding.py [--scenes 72] [--threads 1]

Writes benchmarks/results/word_grounding.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from first_masks import first_masks, score_scene  # noqa: E402
from masks import SETS, Unit, make_project, scene_seeds  # noqa: E402

from conceptforge.engine.config import resolve_config  # noqa: E402
from conceptforge.engine.data import Conditioning  # noqa: E402
from conceptforge.engine.estep import denoising_errors  # noqa: E402
from conceptforge.engine.learn import build_trainer  # noqa: E402
from conceptforge.engine.prompts import training_prompt  # noqa: E402
from conceptforge.engine.trainer import Trainer  # noqa: E402
from conceptforge.project import Project  # noqa: E402

BANDS = 4  # equal bands of [mask_t_min, mask_t_max]
PER_BAND = 16  # timesteps per band
BATCH = 8


def region_errors(learner: Trainer, words: list[str], regions: list[np.ndarray], bands: list[tuple[int, int]], seed: int) -> np.ndarray:
    """Mean denoising error (band, region, word) of image 0 under "a W on a background" for each word."""
    import torch
    import torch.nn.functional as F

    model, prompts, data = learner.model, learner.estimator.prompts, learner.images[0]
    texts = [training_prompt([w, "background"], [False, True], True) for w in words]
    with torch.no_grad():
        cond = Conditioning.cat([Conditioning(model.text_encoder(prompts.ids(t).to(model.device))[0]) for t in texts])
        z = data.latents[False]
        side = z.shape[-1]
        weights = torch.stack([F.interpolate(torch.from_numpy(r.astype(np.float32))[None, None], size=(side, side), mode="area")[0, 0] for r in regions])
        gen = torch.Generator().manual_seed(seed)
        out = np.zeros((len(bands), len(regions), len(words)))
        for b, (low, high) in enumerate(bands):
            errors = torch.zeros(len(words), side, side)
            for _ in range(PER_BAND // BATCH):
                t = torch.randint(low, high + 1, (BATCH,), generator=gen)
                noise = torch.randn((BATCH,) + tuple(z.shape[1:]), generator=gen)
                errors += denoising_errors(model, z, cond, t, noise)
            out[b] = ((weights[:, None] * errors[None]).sum(dim=(-2, -1)) / weights.sum(dim=(-2, -1))[:, None]).numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=72)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "word_grounding")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "word_grounding.md")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    cfg = resolve_config(True, {}, {})
    edges = np.linspace(cfg.mask_t_min, cfg.mask_t_max, BANDS + 1).round().astype(int)
    bands = [(int(edges[i]), int(edges[i + 1])) for i in range(BANDS)]
    dev = SETS["dev1"]
    seeds = scene_seeds(args.scenes, base=dev.base, end=dev.end)
    rows = []  # per object: placed right by the first E-step, own word best per band, number of words
    for seed in seeds:
        make_project(args.work / str(seed), Unit(str(seed), [seed]))
        learner = build_trainer(Project.load(args.work / str(seed)), cfg)
        data = learner.images[0]
        scored = score_scene(learner, first_masks(learner, cfg.init_mask_signal))
        objects = [k for k, background in enumerate(data.background) if not background]
        words = [data.inits[k] for k in objects]
        errors = region_errors(learner, words, [data.gt[k] for k in objects], bands, seed)
        for i, k in enumerate(objects):
            best = errors[:, i].argmin(axis=1) == i
            rows.append({"placed_right": scored[k]["own"] > 0.5, "own_best": best, "words": len(words)})
        print(f"scene {seed} " + " ".join(f"{w}:{'right' if scored[k]['own'] > 0.5 else 'WRONG'}:{''.join('+' if b else '-' for b in errors[:, i].argmin(axis=1) == i)}" for i, (k, w) in enumerate(zip(objects, words))), flush=True)
    groups = {
        "all objects": rows,
        "placed right by the first E-step": [r for r in rows if r["placed_right"]],
        "placed wrong by the first E-step": [r for r in rows if not r["placed_right"]],
    }
    lines = [
        "# Does the built-in model read the shape words right?",
        "",
        f"Produced by `{' '.join(['python', 'benchmarks/word_grounding.py', *sys.argv[1:]])}`: {len(seeds)} development scenes "
        f"(seeds {seeds[0]}-{seeds[-1]}), {len(rows)} objects.",
        "",
        'Share of objects whose own shape word, among the scene\'s object words, gives the lowest denoising error on the '
        'object\'s exact region under the one-object prompt "a W on a background", per timestep band '
        f"({PER_BAND} timesteps each); chance is the mean of 1 / (words in the scene).",
        "",
        "| objects | n | chance | " + " | ".join(f"t {lo}-{hi}" for lo, hi in bands) + " | every band |",
        "|---|---:|---:|" + "---:|" * (len(bands) + 1),
    ]
    for name, group in groups.items():
        if not group:
            continue
        best = np.array([r["own_best"] for r in group])
        chance = np.mean([1 / r["words"] for r in group])
        lines.append(
            f"| {name} | {len(group)} | {chance:.2f} | " + " | ".join(f"{v:.2f}" for v in best.mean(axis=0)) + f" | {best.all(axis=1).mean():.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
