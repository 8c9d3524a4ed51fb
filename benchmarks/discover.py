"""`discover` on the built-in world: does it find how many objects a scene has, and where?

Scenes of `conceptforge.shapes.sample_scene` with 1, 2 and 3 objects (equal numbers).
For each scene: proposals from `engine.discover.discover_concepts` with the given
settings; count right when the number of object proposals equals the number of
objects; matched IoU: proposals matched to the true objects by the Hungarian
method (IoU), unmatched true objects counting 0, averaged per scene, then over
scenes.  Intervals: Wilson 95% for count accuracy, bootstrap 95% over scenes for IoU
(benchmarks/stats.py).

Settings are chosen on the development seeds (from 820000) only; the held-out
seeds (from 930000) are used for the report and never for choosing.

    python benchmarks/discover.py --threads 1 [--split test] [--per-count 10] [--set merge_boundary=0.33]

The shipped settings were chosen with `--split dev --per-count 12`.

Writes benchmarks/results/discover.md and discover.json (split test) or discover_dev.* (split dev).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import stats  # noqa: E402

SEEDS = {"dev": 820000, "test": 930000}
TARGET_COUNT, TARGET_IOU = 0.90, 0.75


def matched_iou(proposals: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """Mean over true objects of the IoU of its Hungarian-matched proposal (0 when unmatched)."""
    from scene_projects import matched_ious

    if not truth:
        return 1.0 if not proposals else 0.0
    return float(np.mean(matched_ious(proposals, truth)))


def init_words(proposals, objects) -> dict:
    """Of the true objects found (a proposal with IoU > 0.5), how many got their shape as init word."""
    from conceptforge.engine.masks import iou

    found = right = 0
    for obj in objects:
        overlaps = [iou(p.mask, obj.mask) for p in proposals]
        best = max(range(len(proposals)), key=overlaps.__getitem__, default=None)  # the first of equals
        if best is not None and overlaps[best] > 0.5:
            found += 1
            right += proposals[best].init == obj.shape
    return {"init_found": found, "init_right": right}


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion hits / n."""
    if n == 0:
        return 0.0, 0.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def scenes(split: str, per_count: int) -> list[tuple[int, int]]:
    """(seed, object count) pairs: seed base + 3i + n for n in 1..3."""
    base = SEEDS[split]
    return [(base + 3 * i + n, n) for i in range(per_count) for n in (1, 2, 3)]


def run(split: str, per_count: int, overrides: dict) -> dict:
    import torch

    from conceptforge.engine.discover import discover_concepts, load_project_model, settings_for
    from conceptforge.project import Project
    from conceptforge.shapes.world import sample_scene
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        project = Project.create(Path(tmp) / "p")
        model, cfg = load_project_model(project, "cpu")
    settings = settings_for(cfg, True, **overrides)
    rows = []
    for seed, n in scenes(split, per_count):
        scene = sample_scene(seed, n_objects=n)
        rgb = np.asarray(scene.image.convert("RGB"))
        start = time.perf_counter()
        found = discover_concepts(model, rgb, settings)
        took = time.perf_counter() - start
        props = [p.mask for p in found.objects]
        rows.append({"seed": seed, "objects": n, "proposed": len(props), "iou": matched_iou(props, [o.mask for o in scene.objects]),
                     "clusters": found.clusters, "seconds": took, **init_words(found.objects, scene.objects)})
        print(json.dumps(rows[-1]), flush=True)
    del torch
    return {"settings": settings.__dict__, "rows": rows}


def summary(rows: list[dict]) -> dict:
    hits = sum(r["objects"] == r["proposed"] for r in rows)
    ious = [r["iou"] for r in rows]
    return {"scenes": len(rows), "count_right": hits / len(rows), "count_ci": wilson(hits, len(rows)),
            "iou": float(np.mean(ious)), "iou_ci": stats.bootstrap_ci(stats.ratio_of_sums(ious, [1.0] * len(ious)), len(ious)), "seconds": float(np.mean([r["seconds"] for r in rows])),
            "under": sum(r["proposed"] < r["objects"] for r in rows), "over": sum(r["proposed"] > r["objects"] for r in rows),
            "init_right": sum(r["init_right"] for r in rows) / max(1, sum(r["init_found"] for r in rows))}


def report(command: str, split: str, result: dict) -> str:
    rows = result["rows"]
    total = summary(rows)
    lines = [
        "# discover: object count and matched IoU on the built-in world", "",
        f"Command: `{command}`", "",
        f"Split: {split} (sample_scene seeds from {SEEDS[split]}; "
        + ("never used to choose a setting" if split == "test" else "used to choose the settings") + ").",
        f"Settings: `{json.dumps(result['settings'])}`", "",
        "| objects | scenes | count right | 95% Wilson | matched IoU | 95% bootstrap | under / over | init word = shape | s per image |",
        "|---|---:|---:|---|---:|---|---|---:|---:|",
    ]
    for label, part in [(str(n), [r for r in rows if r["objects"] == n]) for n in (1, 2, 3)] + [("all", rows)]:
        s = summary(part)
        lines.append(
            f"| {label} | {s['scenes']} | {s['count_right']:.2f} | [{s['count_ci'][0]:.2f}, {s['count_ci'][1]:.2f}] | {s['iou']:.3f} | "
            f"[{s['iou_ci'][0]:.3f}, {s['iou_ci'][1]:.3f}] | {s['under']} / {s['over']} | {s['init_right']:.2f} | {s['seconds']:.2f} |"
        )
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines += [
        "",
        f"Targets: count right ≥ {TARGET_COUNT:.2f}: {total['count_right']:.2f}, {met(total['count_right'] >= TARGET_COUNT)}; "
        f"matched IoU ≥ {TARGET_IOU:.2f}: {total['iou']:.3f}, {met(total['iou'] >= TARGET_IOU)}.",
        "",
        "Init word = shape: of the true objects a proposal found (IoU > 0.5), the share whose suggested init word is "
        "the object's shape (6 shapes and 2 generic nouns to choose from).",
        "",
        "Per scene: `discover.json` beside this file (seed, objects, proposed, IoU, clusters, init words, seconds).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=sorted(SEEDS), default="test")
    parser.add_argument("--per-count", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a DiscoverSettings field")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    result = run(args.split, args.per_count, overrides)
    out = ROOT / "benchmarks" / "results"
    name = "discover" if args.split == "test" else "discover_dev"
    command = "python benchmarks/discover.py " + " ".join(sys.argv[1:])
    (out / f"{name}.json").write_text(json.dumps({"command": command, **result, "summary": summary(result["rows"])}, indent=1) + "\n")
    (out / f"{name}.md").write_text(report(command, args.split, result))
    print((out / f"{name}.md").read_text())


if __name__ == "__main__":
    main()
