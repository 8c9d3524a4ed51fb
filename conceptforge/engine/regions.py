"""Regions of an image that follow its edges: superpixels grouped into objects.

1. Superpixels: Felzenszwalb's graph segmentation (scikit-image), its scale a
   share of the image's pixel count and its smallest region a share of the
   image, so the rules mean the same at 64 px and at 1024 px.
2. Background: the superpixels owning at least `background_border` of the
   image's border pixels (a two-tone background's halves both do); when none
   does, the one owning most of the border.
3. Objects: the other superpixels are grouped; touching groups merge, the pair
   with the longest shared edge first, while the shared edge is at least
   `merge_boundary` of the smaller group's perimeter (a region mostly bordered
   by one other is a part of it, as the two halves of a two-tone object are).

Given attention rows per superpixel and a positive `merge_distance`, the
superpixels are first grouped by attention alone (touching groups whose summed
rows are closer than `merge_distance`, Jensen-Shannon), before step 2: the fine
superpixels a photo needs own little of the border one by one.

Used by `discover` (its proposals) and by the joint assignment of concepts
(`assign.py`), whose competing concepts take whole objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class RegionRules:
    """How an image is cut into background and objects; defaults chosen on the
    development scenes of benchmarks/discover.py."""

    superpixel_scale: float = 0.25  # Felzenszwalb's scale as a share of the pixel count (larger: larger regions)
    superpixel_sigma: float = 0.4  # Gaussian smoothing (pixels) before the superpixels
    superpixel_min_area: float = 0.01  # the smallest superpixel, as a share of the image
    background_border: float = 0.25  # a superpixel owning this share of the border pixels is background
    merge_boundary: float = 0.33  # touching groups merge when their shared edge is this share of the smaller's perimeter
    merge_distance: float = 0.0  # ... or when their attention rows are closer than this (Jensen-Shannon, 0..1)


@dataclass
class ImageRegions:
    """An image cut into groups: `labels` (H, W) gives every pixel's group."""

    labels: np.ndarray
    background: list[int]  # groups that are background
    objects: list[int]  # the other groups

    def masks(self) -> np.ndarray:
        """(G, H, W) bool, one per group."""
        return self.labels[None] == np.arange(int(self.labels.max()) + 1)[:, None, None]


def superpixels(rgb: np.ndarray, rules: RegionRules) -> np.ndarray:
    """Felzenszwalb superpixels (H, W) labelled 0..R-1."""
    from skimage.segmentation import felzenszwalb

    area = rgb.shape[0] * rgb.shape[1]
    return felzenszwalb(
        rgb, scale=rules.superpixel_scale * area, sigma=rules.superpixel_sigma,
        min_size=max(1, int(round(rules.superpixel_min_area * area))), channel_axis=-1,
    ).astype(np.int64)


def border_shares(masks: np.ndarray) -> np.ndarray:
    """Share of the image's border pixels each mask (K, H, W) owns."""
    border = np.zeros(masks.shape[1:], dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return masks[:, border].sum(axis=1) / border.sum()


def split_background(masks: np.ndarray, share: float) -> tuple[list[int], list[int]]:
    """(background indices, object indices): masks owning at least `share` of the border, else the one owning most."""
    shares = border_shares(masks)
    back = [k for k in range(len(masks)) if shares[k] >= share and masks[k].any()]
    if not back and len(masks):
        back = [int(np.argmax(shares))]
    return back, [k for k in range(len(masks)) if k not in back]


def cell_coverage(labels: np.ndarray, side: int) -> np.ndarray:
    """(R, side*side): the share of each cell of a side x side grid that each label 0..R-1 covers."""
    from PIL import Image

    cover = []
    for r in range(int(labels.max()) + 1):
        layer = Image.fromarray((labels == r).astype(np.float32), mode="F").resize((side, side), Image.BOX)
        cover.append(np.asarray(layer, dtype=np.float64).reshape(-1))
    return np.stack(cover)


def edge_counts(labels: np.ndarray) -> np.ndarray:
    """(R + 1, R + 1) symmetric counts of 4-neighbour pixel edges between labels 0..R-1;
    index R stands for outside the image (so a row sums to the label's perimeter)."""
    outside = int(labels.max()) + 1
    padded = np.pad(labels, 1, constant_values=outside)
    counts = np.zeros((outside + 1, outside + 1), dtype=np.int64)
    for a, b in ((padded[:, 1:], padded[:, :-1]), (padded[1:, :], padded[:-1, :])):
        differ = a != b
        np.add.at(counts, (a[differ], b[differ]), 1)
    return counts + counts.T


def js_distances(rows: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Condensed pairwise Jensen-Shannon distances (base 2, in [0, 1]) between probability rows."""
    from scipy.spatial.distance import squareform

    p = np.clip(rows.astype(np.float64), 1e-12, None)
    p /= p.sum(axis=1, keepdims=True)
    plogp = (p * np.log2(p)).sum(axis=1)
    n = len(p)
    full = np.zeros((n, n))
    for start in range(0, n, chunk):
        a = p[start : start + chunk, None, :]
        m = (a + p[None, :, :]) / 2
        cross = (m * np.log2(m)).sum(axis=2)  # -H(m)
        full[start : start + chunk] = 0.5 * (plogp[start : start + chunk, None] + plogp[None, :]) - cross
    full = np.sqrt(np.clip((full + full.T) / 2, 0.0, 1.0))
    np.fill_diagonal(full, 0.0)
    return squareform(full, checks=False)


def group_regions(
    regions: list[int], edges: np.ndarray, merge_boundary: float, rows: np.ndarray | None = None, merge_distance: float = 0.0
) -> dict[int, int]:
    """Group (a representative) of each of `regions` (labels whose `edge_counts` are `edges`):
    touching groups merge, the pair with the longest shared edge (relative to the smaller
    group's perimeter) first, while that share is at least `merge_boundary` or, given one
    attention row per label, their summed rows are closer than `merge_distance` (Jensen-Shannon)."""
    group = {r: r for r in regions}
    shared = edges.astype(np.float64)
    np.fill_diagonal(shared, 0)
    summed = {r: rows[r].copy() for r in regions} if rows is not None and merge_distance > 0 else {}
    distances: dict[tuple[int, int], float] = {}

    def close(a: int, b: int) -> bool:
        if not summed:
            return False
        if (a, b) not in distances:
            distances[a, b] = float(js_distances(np.stack([summed[a], summed[b]]))[0])
        return distances[a, b] < merge_distance

    while True:
        live = np.array(sorted(set(group.values())), dtype=np.int64)
        if len(live) < 2:
            return group
        touching = shared[np.ix_(live, live)]
        perimeter = shared[live].sum(axis=1)
        ratio = touching / np.maximum(np.minimum(perimeter[:, None], perimeter[None, :]), 1.0)
        pairs = [(float(ratio[i, j]), int(live[i]), int(live[j])) for i, j in zip(*np.nonzero(np.triu(touching, 1)))]
        chosen = [p for p in pairs if p[0] >= merge_boundary or close(p[1], p[2])]
        if not chosen:
            return group
        _, a, b = max(chosen, key=lambda p: (p[0], -p[1], -p[2]))
        group = {r: (a if g == b else g) for r, g in group.items()}
        shared[a] += shared[b]
        shared[:, a] += shared[:, b]
        shared[b] = shared[:, b] = 0
        shared[a, a] = 0
        if summed:
            summed[a] = summed[a] + summed.pop(b)
            distances = {k: v for k, v in distances.items() if a not in k and b not in k}


def numbering(count: int, group: dict[int, int]) -> np.ndarray:
    """For labels 0..count-1, the number 0..G-1 of their group (groups numbered in label order)."""
    _, numbered = np.unique([group[r] for r in range(count)], return_inverse=True)
    return numbered.reshape(-1)


def image_regions(rgb: np.ndarray, rules: RegionRules, attention: Callable[[np.ndarray], np.ndarray] | None = None) -> ImageRegions:
    """The image (H, W, 3 uint8) cut into background groups and object groups.

    `attention`, when given with a positive `merge_distance`, maps pixel labels
    to one attention row per label (R, N); superpixels are then first grouped by
    attention alone, before the background is taken (the fine superpixels of a
    photo own little of the border one by one)."""
    labels = superpixels(rgb, rules)
    if attention is not None and rules.merge_distance > 0:
        count = int(labels.max()) + 1
        by_attention = group_regions(list(range(count)), edge_counts(labels), np.inf, attention(labels), rules.merge_distance)
        labels = numbering(count, by_attention)[labels]
    count = int(labels.max()) + 1
    back, objects = split_background(labels[None] == np.arange(count)[:, None, None], rules.background_border)
    group = group_regions(objects, edge_counts(labels), rules.merge_boundary)
    group.update({r: back[0] for r in back})
    number = numbering(count, group)
    background = sorted({int(number[r]) for r in back})
    groups = int(number.max()) + 1
    return ImageRegions(number[labels], background, [g for g in range(groups) if g not in background])
