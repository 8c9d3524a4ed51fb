"""Concepts that share an init word: built-in scenes of 2 and 3 objects where
every object's token starts from the same word ("shape"), learned with
`--masks em` and `--masks fixed`, each with `mask_assignment` independent and
joint.

Tokens with one init word are interchangeable before learning, so a token is
scored against the object it ends on: the object IoU of a scene is the mean
IoU of a one-to-one matching of its object tokens' final masks to the true
objects that maximises the total (Hungarian).  A pair of tokens "shares an
object" when one true object holds more than half of each of their masks;
a scene is clean when no pair of its tokens does.

Scene sets: `dev` (seeds from 830000, used to choose settings) and `test`
(seeds from 940000, held out: run once with the shipped defaults); each the
first N scenes of 2 objects and the first N of 3 objects (any shapes, so two
objects may even look alike).  Every mode: the built-in model's defaults with
joint_steps 0 (the joint phase keeps the masks fixed).

    python benchmarks/same_word.py --split dev|test [--per-count 6] [--threads 1]

Writes benchmarks/results/same_word_<split>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import stats  # noqa: E402
from scene_projects import PlannedConcept, build_project, matched_ious  # noqa: E402
from conceptforge.engine.learn import learn_project  # noqa: E402
from conceptforge.shapes.world import sample_scene  # noqa: E402

SPLITS = {"dev": 830_000, "test": 940_000}
MODES = {
    "em-independent": {"masks": "em", "mask_assignment": "independent"},
    "em-joint": {"masks": "em", "mask_assignment": "joint"},
    "fixed-independent": {"masks": "fixed", "mask_assignment": "independent"},
    "fixed-joint": {"masks": "fixed", "mask_assignment": "joint"},
}
INIT_WORD = "shape"


def scene_seeds(base: int, per_count: int) -> list[tuple[int, int]]:
    """(seed, object count): the first `per_count` seeds from `base` drawn with 2 objects, then with 3."""
    out = []
    for n in (2, 3):
        seed = base + (0 if n == 2 else 5_000)
        found = 0
        while found < per_count:
            if len(sample_scene(seed, n_objects=n).objects) == n:
                out.append((seed, n))
                found += 1
            seed += 1
    return out


def make_project(root: Path, seed: int, n: int) -> list[np.ndarray]:
    """A project of one scene, every object's token with the same init word; the true object masks."""
    scene = sample_scene(seed, n_objects=n)
    concepts = [PlannedConcept(f"<o{k}>", INIT_WORD, False, o.mask) for k, o in enumerate(scene.objects)]
    build_project(root, [(seed, scene.image, [*concepts, PlannedConcept("<bg>", "background", True, scene.background_mask)])])
    return [o.mask for o in scene.objects]


def final_masks(root: Path, settings: dict) -> tuple[list[np.ndarray], dict]:
    """Learn, and return the object tokens' masks of the last E-step with the run's timing."""
    last: list = []
    result = learn_project(root, {**settings, "joint_steps": 0}, resume=False,
                           on_event=lambda ev: last.append(ev.payload) if ev.kind == "estep" and ev.payload is not None else None)
    masks = last[-1].masks
    objects = sorted((t for (_, t) in masks if t.startswith("<o")), key=lambda t: int(t[2:-1]))
    return [np.asarray(masks[(0, t)], bool) for t in objects], result["timing"]


def shared_pairs(masks: list[np.ndarray], truth: list[np.ndarray]) -> int:
    """Pairs of tokens one true object holds more than half of each of."""
    def on(m: np.ndarray, t: np.ndarray) -> bool:
        return bool(m.sum()) and (m & t).sum() > 0.5 * m.sum()

    return sum(
        any(on(masks[a], t) and on(masks[b], t) for t in truth)
        for a in range(len(masks)) for b in range(a + 1, len(masks))
    )


def run(split: str, per_count: int, work: Path) -> dict:
    units = []
    t0 = time.time()
    for seed, n in scene_seeds(SPLITS[split], per_count):
        unit = {"seed": seed, "objects": n, "modes": {}}
        for mode, settings in MODES.items():
            root = work / f"{seed}-{mode}" / "p"
            root.parent.mkdir(parents=True)
            truth = make_project(root, seed, n)
            masks, timing = final_masks(root, settings)
            unit["modes"][mode] = {"iou": matched_ious(masks, truth), "shared_pairs": shared_pairs(masks, truth),
                                   "em_seconds": timing["em_seconds"] + timing["estep_seconds"]}
            print(f"[{time.time() - t0:5.0f}s] {seed} ({n} objects) {mode:18s} IoU {np.mean(unit['modes'][mode]['iou']):.3f} "
                  f"shared pairs {unit['modes'][mode]['shared_pairs']}", flush=True)
        units.append(unit)
    return {"units": units, "minutes": (time.time() - t0) / 60}


def report(record: dict, command: str, split: str) -> list[str]:
    units = record["units"]
    role = "held out: run once with the shipped defaults, never used to choose a setting" if split == "test" \
        else "development: used to choose settings"
    lines = [
        f"# Concepts sharing an init word: split `{split}`", "",
        f"Produced by `{command}` ({record['minutes']:.0f} min).", "",
        f"**Split `{split}`: {role}.** {len(units)} built-in scenes (seeds {units[0]['seed']}-{units[-1]['seed']}; "
        f"{sum(u['objects'] == 2 for u in units)} of 2 objects, {sum(u['objects'] == 3 for u in units)} of 3), every object's token "
        f"initialised with \"{INIT_WORD}\", plus a background token; built-in defaults, joint_steps 0.", "",
        "Object IoU: per scene a one-to-one matching of object tokens to true objects (Hungarian on IoU), each object once; "
        "intervals: 95% bootstrap over scenes. Clean scene: no two tokens with more than half of each of their masks on one true object.", "",
        "| mode | object IoU | 95% interval | 2 objects | 3 objects | clean scenes | s (EM phase) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        groups = [u["modes"][mode]["iou"] for u in units]
        ci = stats.pooled_mean_interval(groups)
        by = {n: stats.pooled_mean([u["modes"][mode]["iou"] for u in units if u["objects"] == n]) for n in (2, 3)}
        clean = sum(u["modes"][mode]["shared_pairs"] == 0 for u in units) / len(units)
        secs = np.mean([u["modes"][mode]["em_seconds"] for u in units])
        lines.append(f"| {mode} | {stats.pooled_mean(groups):.3f} | [{ci.lo:.3f}, {ci.hi:.3f}] | {by[2]:.3f} | {by[3]:.3f} | {clean:.0%} | {secs:.1f} |")
    lines += ["", "## Paired differences (same objects of the same scenes)", "", "| comparison | difference [95% interval] | verdict |", "|---|---:|---|"]
    for a, b in (("em-joint", "em-independent"), ("em-joint", "fixed-joint"), ("em-independent", "fixed-independent")):
        diffs = [[x - y for x, y in zip(u["modes"][a]["iou"], u["modes"][b]["iou"])] for u in units]
        ci = stats.pooled_mean_interval(diffs, above=f"{a} better", below=f"{b} better")
        lines.append(f"| {a} - {b} | {stats.pooled_mean(diffs):+.3f} [{ci.lo:+.3f}, {ci.hi:+.3f}] | {ci.verdict} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=list(SPLITS), default="dev")
    ap.add_argument("--per-count", type=int, default=6, help="scenes of 2 objects and as many of 3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/same_word.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory() as tmp:
        record = run(args.split, args.per_count, Path(tmp))
    record["command"] = command
    out = args.out or ROOT / "benchmarks" / "results" / f"same_word_{args.split}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    out.write_text("\n".join(report(record, command, args.split)) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
