"""Regions of an image that follow its edges: superpixels grouped into objects.

1. Superpixels: Felzenszwalb's graph segmentation (scikit-image), its scale a
   share of the image's pixel count and its smallest region a share of the
   image, so the rules mean the same at 64 px and at 1024 px.
2. Background: the superpixels owning at least `background_border` of the
   image's border pixels (a two-tone background's halves both do); when none
   does, the one owning most of the border.
3. Objects: the other superpixels are grouped; touching groups merge, the pair
   that passes by the widest margin first, while their shared edge is a
   straight chord through the middle of their union (`merge_span`,
   `merge_centre`, `merge_bend`; the built-in world cuts a two-tone object by a
   line through its centre, while an occluding object's outline is bent or off
   the middle), or while the shared edge is at least `merge_boundary` of the
   smaller group's perimeter (a region mostly bordered by one other is a part
   of it; off for the built-in world, where it joined touching objects; the
   SD-family settings use it).

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
    # touching groups merge when their shared edge is this share of the smaller's perimeter (0: off; SD
    # settings 0.33: off for the built-in world, where it joined touching objects, see merge_span)
    merge_boundary: float = 0.0
    merge_distance: float = 0.0  # ... or when their attention rows are closer than this (Jensen-Shannon, 0..1)
    # ... or when their shared edge spans this much of the union's sqrt(area) (0: off), the union's
    # centroid lies within merge_centre of the edge's line (same unit) and the edge is straight: a cut
    # through the middle of one object, as the built-in world's two-tone objects are
    # (benchmarks/discover.py, 120 dev scenes: count right 0.99 with this rule alone, 0.97 beside
    # the perimeter rule; docs/discover.md)
    merge_span: float = 0.65
    merge_centre: float = 0.12
    merge_bend: float = 0.03  # ... and the edge strays from its line by at most this share of its length (rms)


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


def cell_shares(mask: np.ndarray, side: int) -> np.ndarray:
    """(side, side): the share of each cell of a side x side grid that a mask covers."""
    from PIL import Image

    layer = Image.fromarray(np.asarray(mask, np.float32), mode="F").resize((side, side), Image.BOX)
    return np.asarray(layer, dtype=np.float64)


def cell_coverage(labels: np.ndarray, side: int) -> np.ndarray:
    """(R, side*side): the share of each cell of a side x side grid that each label 0..R-1 covers."""
    return np.stack([cell_shares(labels == r, side).reshape(-1) for r in range(int(labels.max()) + 1)])


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


@dataclass
class Chords:
    """Where labels meet, for the chord rule: the midpoints (x, y) of the pixel
    edges between every touching pair of labels, and each label's area and
    summed pixel coordinates."""

    points: dict[tuple[int, int], np.ndarray]
    area: np.ndarray
    moment: np.ndarray  # (R, 2): sums of x and y

    @classmethod
    def of(cls, labels: np.ndarray) -> "Chords":
        count = int(labels.max()) + 1
        parts = []
        for a, b, dx, dy in ((labels[:, :-1], labels[:, 1:], 0.5, 0.0), (labels[:-1, :], labels[1:, :], 0.0, 0.5)):
            ys, xs = np.nonzero(a != b)
            lo, hi = np.minimum(a[ys, xs], b[ys, xs]), np.maximum(a[ys, xs], b[ys, xs])
            parts.append((lo * count + hi, np.stack([xs + dx, ys + dy], axis=1).astype(np.float64)))
        keys = np.concatenate([p[0] for p in parts])
        xy = np.concatenate([p[1] for p in parts])
        order = np.argsort(keys, kind="stable")
        keys, xy = keys[order], xy[order]
        unique, starts = np.unique(keys, return_index=True)
        points = {(int(k // count), int(k % count)): chunk for k, chunk in zip(unique, np.split(xy, starts[1:]))}
        ys, xs = np.mgrid[: labels.shape[0], : labels.shape[1]]
        area = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
        moment = np.stack([np.bincount(labels.ravel(), xs.ravel(), count), np.bincount(labels.ravel(), ys.ravel(), count)], axis=1)
        return cls(points, area, moment)

    def fit(self, first: list[int], second: list[int]) -> tuple[float, float, float]:
        """(span, off-centre, bend) of the edge between two groups of labels: how long
        the shared edge is along its principal line and how far the union's centroid
        lies from that line, both in units of the union's sqrt(area), and the edge's
        rms distance from its line as a share of its length."""
        found = [self.points.get((min(a, b), max(a, b))) for a in first for b in second]
        pts = np.concatenate([p for p in found if p is not None] or [np.zeros((0, 2))])
        members = first + second
        size = float(self.area[members].sum())
        if len(pts) < 2 or size <= 0:
            return 0.0, np.inf, np.inf
        centre = pts.mean(axis=0)
        _, _, axes = np.linalg.svd(pts - centre, full_matrices=False)
        along = (pts - centre) @ axes[0]
        normal = np.array([-axes[0][1], axes[0][0]])
        centroid = self.moment[members].sum(axis=0) / size
        scale = np.sqrt(size)
        length = float(np.ptp(along))
        bend = float(np.sqrt(np.mean(((pts - centre) @ normal) ** 2))) / max(length, 1.0)
        return length / scale, abs(float((centroid - centre) @ normal)) / scale, bend


def group_regions(
    regions: list[int], edges: np.ndarray, merge_boundary: float, rows: np.ndarray | None = None, merge_distance: float = 0.0,
    chords: Chords | None = None, merge_span: float = 0.0, merge_centre: float = RegionRules.merge_centre, merge_bend: float = RegionRules.merge_bend,
) -> dict[int, int]:
    """Group (a representative) of each of `regions` (labels whose `edge_counts` are `edges`):
    touching groups merge while their shared edge is at least `merge_boundary` (0: off) of the
    smaller group's perimeter, or, given `chords`, passes the chord rule (`Chords.fit`: span at
    least `merge_span`, centroid within `merge_centre`, bend at most `merge_bend`), or, given
    one attention row per label, their summed rows are closer than `merge_distance`
    (Jensen-Shannon).  The pair that passes a rule by the widest margin merges first."""
    group = {r: r for r in regions}
    shared = edges.astype(np.float64)
    np.fill_diagonal(shared, 0)
    summed = {r: rows[r].copy() for r in regions} if rows is not None and merge_distance > 0 else {}
    distances: dict[tuple[int, int], float] = {}
    members = {r: [r] for r in regions}
    chord_scores: dict[tuple[int, int], float] = {}

    def chord(a: int, b: int) -> float:
        """How far the pair passes the chord rule (>= 1: it does), 0 when off."""
        if chords is None or merge_span <= 0:
            return 0.0
        if (a, b) not in chord_scores:
            span, off, bend = chords.fit(members[a], members[b])
            chord_scores[a, b] = span / merge_span if off <= merge_centre and bend <= merge_bend else 0.0
        return chord_scores[a, b]

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
        pairs = []
        for i, j in zip(*np.nonzero(np.triu(touching, 1))):
            a, b = int(live[i]), int(live[j])
            share = float(ratio[i, j]) / merge_boundary if merge_boundary > 0 else 0.0
            pairs.append((max(share, chord(a, b)), a, b))
        chosen = [p for p in pairs if p[0] >= 1 or close(p[1], p[2])]
        if not chosen:
            return group
        _, a, b = max(chosen, key=lambda p: (p[0], -p[1], -p[2]))
        group = {r: (a if g == b else g) for r, g in group.items()}
        members[a] += members.pop(b)
        chord_scores = {k: v for k, v in chord_scores.items() if a not in k and b not in k}
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
    chords = Chords.of(labels) if rules.merge_span > 0 else None
    group = group_regions(
        objects, edge_counts(labels), rules.merge_boundary,
        chords=chords, merge_span=rules.merge_span, merge_centre=rules.merge_centre, merge_bend=rules.merge_bend,
    )
    group.update({r: back[0] for r in back})
    number = numbering(count, group)
    background = sorted({int(number[r]) for r in back})
    groups = int(number.max()) + 1
    return ImageRegions(number[labels], background, [g for g in range(groups) if g not in background])
