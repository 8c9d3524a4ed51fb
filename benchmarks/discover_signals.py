"""What tells the objects of a built-in scene apart: the signals behind `discover`'s design.

On the development scenes of benchmarks/discover.py (sample_scene seeds
820000 + 3i + n, i < 12, n = 1..3), with the true objects known:

1. Self-attention.  Each object is cut into its colour parts (a two-tone object
   has two) at the 16x16 attention grid; each part's row is the mean of its
   cells' self-attention rows (`discover.affinity_from_logits`, sharpness 1).
   Jensen-Shannon distances between two parts of one object and between parts
   of two different objects: if they overlap, attention cannot group parts.
2. Cross-attention of the shape words.  For each object, the shape word whose
   min-max normalised map (`discover.word_attention`) is highest inside the
   object relative to outside it: how often it is the object's shape.
3. Shared edges.  The superpixels of `regions.image_regions`' rules, the
   background taken by the border; for two touching object superpixels, the
   shared edge over the smaller one's perimeter, for two parts of one object
   and for parts of two objects.

    python benchmarks/discover_signals.py --threads 1

Writes benchmarks/results/discover_signals.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED_BASE, PER_COUNT = 820000, 12


def scenes():
    from conceptforge.shapes.world import sample_scene

    return [sample_scene(SEED_BASE + 3 * i + n, n_objects=n) for i in range(PER_COUNT) for n in (1, 2, 3)]


def colour_parts(scene) -> list[tuple[int, np.ndarray]]:
    """(object index, pixel mask) of each colour part of each object."""
    from conceptforge.shapes.world import COLORS

    image = np.asarray(scene.image.convert("RGB")).astype(np.float64)
    parts = []
    for k, obj in enumerate(scene.objects):
        colours = [obj.color] + ([obj.second_color] if obj.second_color else [])
        nearest = np.stack([np.abs(image - np.array(COLORS[c])).sum(axis=-1) for c in colours]).argmin(axis=0)
        parts += [(k, obj.mask & (nearest == c)) for c in range(len(colours))]
    return parts


def attention_distances(model, latents, draws, scene) -> tuple[list[float], list[float]]:
    """JS distances between the mean attention rows of two parts of one object / of two objects."""
    from scipy.spatial.distance import squareform

    from conceptforge.engine import discover as D
    from conceptforge.engine.masks import resize_mask
    from conceptforge.engine.regions import js_distances

    logits = D.attention_logits(model, latents, draws, _factor(model))
    side = int(round(np.sqrt(len(logits))))
    affinity = D.affinity_from_logits(logits, 1.0)
    parts = [(k, resize_mask(m, side, side).reshape(-1)) for k, m in colour_parts(scene)]
    parts = [(k, m) for k, m in parts if m.sum() >= 2]
    if len(parts) < 2:
        return [], []
    dist = squareform(js_distances(np.stack([affinity[m].mean(axis=0) for _, m in parts])))
    same, other = [], []
    for a in range(len(parts)):
        for b in range(a + 1, len(parts)):
            (same if parts[a][0] == parts[b][0] else other).append(float(dist[a, b]))
    return same, other


def _factor(model) -> int:
    from conceptforge.engine.attention import capture_factor

    return capture_factor(model.unet, model.latent, model.att)


def shape_word_hits(model, latents, draws, scene) -> list[bool]:
    """Per object: is the shape word with the highest cross-attention inside it its shape?"""
    from conceptforge.engine import discover as D
    from conceptforge.engine.masks import upsample_maps
    from conceptforge.shapes.world import SHAPES

    rgb = np.asarray(scene.image.convert("RGB"))
    maps = D.word_attention(model, latents, draws, D.word_prompts(list(SHAPES), 1, True))
    full = dict(zip(maps, upsample_maps(np.stack(list(maps.values())), rgb.shape[0], rgb.shape[1])))
    return [D.suggest_word(obj.mask, full, list(SHAPES))[0] == obj.shape for obj in scene.objects]


def edge_shares(scene) -> tuple[list[float], list[float]]:
    """Shared edge / smaller perimeter of touching object superpixels: one object / two objects."""
    from conceptforge.engine.regions import RegionRules, edge_counts, split_background, superpixels

    labels = superpixels(np.asarray(scene.image.convert("RGB")), RegionRules())
    masks = labels[None] == np.arange(int(labels.max()) + 1)[:, None, None]
    _, objects = split_background(masks, RegionRules().background_border)
    edges = edge_counts(labels)
    owner = {r: int(np.argmax([(o.mask & masks[r]).sum() for o in scene.objects])) for r in objects}
    same, other = [], []
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            if edges[a, b]:
                share = float(edges[a, b] / min(edges[a].sum(), edges[b].sum()))
                (same if owner[a] == owner[b] else other).append(share)
    return same, other


def spread(values: list[float]) -> str:
    v = np.asarray(values)
    return f"{len(v)} | {v.min():.2f} | {np.median(v):.2f} | {v.max():.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from conceptforge.engine.discover import DiscoverSettings, image_features, load_project_model
    from conceptforge.engine.regions import RegionRules
    from conceptforge.project import Project

    with tempfile.TemporaryDirectory() as tmp:
        model, _ = load_project_model(Project.create(Path(tmp) / "p"), "cpu")
    settings = DiscoverSettings()
    merge = RegionRules().merge_boundary
    att_same, att_other, hits, edge_same, edge_other = [], [], [], [], []
    for scene in scenes():
        latents, draws, _ = image_features(model, np.asarray(scene.image.convert("RGB")), settings)  # one encoding per scene
        s, o = attention_distances(model, latents, draws, scene)
        att_same += s
        att_other += o
        hits += shape_word_hits(model, latents, draws, scene)
        s, o = edge_shares(scene)
        edge_same += s
        edge_other += o
    lines = [
        "# What tells the objects of a built-in scene apart", "",
        f"Produced by `python benchmarks/discover_signals.py --threads {args.threads}`: the {3 * PER_COUNT} development scenes "
        "of benchmarks/discover.py (module docstring for the definitions).", "",
        "| signal | pairs | min | median | max |", "|---|---:|---:|---:|---:|",
        f"| self-attention JS distance, two parts of one object | {spread(att_same)} |",
        f"| self-attention JS distance, parts of two objects | {spread(att_other)} |",
        f"| shared edge / smaller perimeter, two superpixels of one object | {spread(edge_same)} |",
        f"| shared edge / smaller perimeter, superpixels of two objects | {spread(edge_other)} |", "",
        f"Shape word with the highest cross-attention inside the object = its shape: {np.mean(hits):.2f} of "
        f"{len(hits)} objects (chance {1 / 6:.2f}).",
        f"Superpixel pairs of two objects at or above the shipped merge share {merge:.2f}: "
        f"{sum(v >= merge for v in edge_other)} of {len(edge_other)}; pairs of one object below it: "
        f"{sum(v < merge for v in edge_same)} of {len(edge_same)}.",
    ]
    out = ROOT / "benchmarks" / "results" / "discover_signals.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
