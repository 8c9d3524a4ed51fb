"""Joint assignment of an image's object concepts to its regions
(`mask_assignment: joint`).

Each concept's soft map is thresholded on its own in `independent` mode, so
two concepts whose maps look alike (two tokens with one init word start
identical) can split one object between them or both settle on it.  In
`joint` mode the object concepts of an image compete before the DenseCRF:

1. regions (`assignment_regions`):
   - `image`: the image's objects, cut from the image itself
     (`regions.image_regions`: superpixels, the background by the border, the
     rest grouped by the edges they share, so the two halves of a two-tone
     object are one region), on the maps' grid;
   - `maps`: the connected components of the smoothed maximum of the object
     concepts' maps above the threshold (relative to its peak);
   while there are fewer regions than concepts, a region is cut in two across
   its principal axis (two touching objects can be one region): the region
   whose cut lets the concepts' maps be assigned best (a block of two
   touching objects, not a single object that one concept already covers),
   the largest where the maps cannot tell (identical twins);
2. each concept's score for a region (`assignment_score`) is, with
   `explained` (built-in), how much of the region's evidence is its own: its
   mean map value over the region as a share of all the concepts' mean values
   there (`region_scores`; which concept explains the region best, however
   large the region and however much of a concept's map lies elsewhere); with
   `mass` (SD), the share of its map's mass that lies in the region
   (`region_shares`); a one-to-one assignment maximises the total score
   (Hungarian), ties going to the earlier concept and the earlier region in
   reading order, so identical maps still get different regions; a region
   left over joins the nearest assigned one when it came from the maps (a
   piece of an object) and is left to the maps when it is one of the image's
   objects (one none of the concepts took);
3. each concept's map is set to zero on the regions of the other concepts
   and raised on its own: to the object concepts' maximum there, and with
   the image's objects as regions to at least the threshold as well (an
   object of the image that a concept took is the concept's whole, even the
   half of a two-tone object where its map is silent).

Background concepts take no part in the assignment (they take what the
objects leave); with the image's objects as regions, their maps are cleared
on the objects the concepts took, so a background whose colour an object
shares (the orange half of an orange-and-white star on brown ground) cannot
draw that part of the object away in the DenseCRF.  The maps stay soft; the
DenseCRF still draws the masks.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from .regions import RegionRules, cell_coverage, cell_shares, image_regions

EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)
REGION_BLUR = 1.0  # Gaussian sigma, in map cells, before the regions are found
GROUND_KEPT = 0.5  # the least share of the image's ground a background concept's mask keeps before raise_lost_ground
TIE_BREAK = 1e-3  # weight of a concept's share of map mass in its score for a region (decides ties only)


def assign_regions(
    maps: np.ndarray, objects: list[int], threshold: float, parts: list[np.ndarray] | None = None,
    previous: list[np.ndarray] | None = None, stay: float = 0.0, backgrounds: list[int] | None = None,
    score: str = "explained",
) -> np.ndarray:
    """`maps` (K, h, w), min-max normalised, with the maps of the concepts
    `objects` given the regions jointly assigned to them.  With the image's
    objects `parts` (`image_parts`), those are the regions, an object no
    concept takes is left to the maps, a concept's map is raised to at least
    `threshold` over the object it took, and the maps of the `backgrounds`
    concepts are cleared on the objects the concepts took (an object of the
    image is no background's, even where its colour is the background's);
    without parts, or when the image yields none, the regions come from the
    maps and the backgrounds keep their maps.  With `previous` (each object
    concept's last mask, any size) and `stay` > 0, a concept's score for a
    region gains `stay` x the share of the region its last mask covered, so
    tokens trade objects only on clear evidence."""
    if len(objects) < 2:
        return maps
    maps = np.asarray(maps, np.float32)
    own = maps[objects]
    combined = own.max(axis=0)
    parts = parts or []
    regions = object_regions(combined, threshold, len(objects), own, parts)
    if not regions:
        return maps
    prior = None
    if previous is not None and stay > 0:
        cells = [cell_shares(m, combined.shape[0]) for m in previous]
        prior = stay * np.array([[float(c[r].mean()) for r in regions] for c in cells])
    owner = assign(own, regions, leftovers_join=not parts, prior=prior, score=score)
    out = maps.copy()
    raised = np.maximum(combined, threshold) if parts else combined  # an image object is wholly its concept's
    for j, k in enumerate(objects):
        mine = np.zeros(own.shape[1:], dtype=bool)
        others = np.zeros(own.shape[1:], dtype=bool)
        for r, o in enumerate(owner):
            if o == j:
                mine |= regions[r]
            elif o >= 0:
                others |= regions[r]
        out[k] = np.where(others, 0.0, np.where(mine, np.maximum(out[k], raised), out[k]))
    if parts and backgrounds:  # the Hungarian assignment always gives some concept a region
        taken = np.logical_or.reduce([regions[r] for r, o in enumerate(owner) if o >= 0])
        out[backgrounds] = np.where(taken, 0.0, out[backgrounds])
    return out


def raise_lost_ground(
    maps: np.ndarray, masks: np.ndarray, parts: list[np.ndarray], backgrounds: list[int], threshold: float
) -> np.ndarray | None:
    """`maps` (K, h, w) with each of the `backgrounds` concepts whose mask (any size)
    covers less than GROUND_KEPT of the image's ground (the cells in none of its
    objects `parts`) raised to at least `threshold` there; None when none lost it.
    On a flat ground, leaving the background's word out of the prompt changes little,
    so its map can be silent there and an object's map spilling over it take it all."""
    if not parts or not backgrounds:
        return None
    ground = ~np.logical_or.reduce(parts)
    if not ground.any():
        return None
    lost = [k for k in backgrounds if float(cell_shares(masks[k], maps.shape[-1])[ground].mean()) < GROUND_KEPT]
    if not lost:
        return None
    out = np.asarray(maps, np.float32).copy()
    out[lost] = np.where(ground, np.maximum(out[lost], threshold), out[lost])
    return out


def foreground_cells(combined: np.ndarray, threshold: float) -> np.ndarray:
    """Cells where the smoothed `combined` is at least `threshold` of its maximum (none when it is flat
    zero).  Smoothed: an error-rise map is a scatter of cells over an object."""
    smooth = ndimage.gaussian_filter(np.asarray(combined, np.float64), REGION_BLUR, mode="constant")
    peak = float(smooth.max())
    return smooth >= threshold * peak if peak > 0 else np.zeros(smooth.shape, dtype=bool)


def image_parts(rgb: np.ndarray, side: int) -> list[np.ndarray]:
    """The image's objects (`regions.image_regions`) as cells of the maps' side x side grid,
    each cell to the object or background that covers most of it."""
    cut = image_regions(np.asarray(rgb), RegionRules())
    owner = cell_coverage(cut.labels, side).argmax(axis=0).reshape(side, side)
    cells = [owner == g for g in cut.objects]
    return [c for c in cells if c.any()]


def object_regions(
    combined: np.ndarray, threshold: float, wanted: int, maps: np.ndarray | None = None, initial: list[np.ndarray] | None = None
) -> list[np.ndarray]:
    """The `initial` regions or else the connected regions of `foreground_cells`, in reading
    order, one of them cut in two while there are fewer than `wanted`: the cut after which the
    concepts' `maps` are assigned best (`assignment_score`), the largest region on a tie or
    without maps."""
    if initial:
        regions = list(initial)
    else:
        labels, n = ndimage.label(foreground_cells(combined, threshold), structure=EIGHT_NEIGHBOURS)
        regions = [labels == r for r in range(1, n + 1)]
    while 0 < len(regions) < wanted:
        cuts = []
        for r, region in enumerate(regions):
            if region.sum() >= 2:
                trial = regions[:r] + list(split_region(region, combined)) + regions[r + 1 :]
                score = assignment_score(maps, trial) if maps is not None else 0.0
                cuts.append((round(score, 6), int(region.sum()), -r, trial))
        if not cuts:
            break
        regions = max(cuts, key=lambda c: c[:3])[3]
    return regions


def split_region(region: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A region cut across its principal axis at the weighted centre (the part
    nearer the top-left first)."""
    ys, xs = np.nonzero(region)
    w = weight[ys, xs].astype(np.float64) + 1e-6
    coords = np.stack([ys, xs], axis=1).astype(np.float64)
    centre = (coords * w[:, None]).sum(axis=0) / w.sum()
    centred = coords - centre
    _, _, vt = np.linalg.svd(centred * np.sqrt(w)[:, None], full_matrices=False)
    axis = vt[0] if vt[0].sum() >= 0 else -vt[0]
    side = centred @ axis > 0
    if side.all() or not side.any():  # all cells on one line through the centre: halve by order
        side = np.arange(len(ys)) >= len(ys) // 2
    first, second = np.zeros_like(region), np.zeros_like(region)
    first[ys[~side], xs[~side]] = True
    second[ys[side], xs[side]] = True
    return first, second


def region_shares(maps: np.ndarray, regions: list[np.ndarray]) -> np.ndarray:
    """(concepts, regions): the share of each concept's map mass in each region."""
    mass = maps.reshape(len(maps), -1).sum(axis=1) + 1e-8
    return np.stack([[float((m * r).sum()) for r in regions] for m in maps]) / mass[:, None]


def assignment_score(maps: np.ndarray, regions: list[np.ndarray]) -> float:
    """The total share of their maps' mass the concepts get in the best one-to-one assignment."""
    score = region_shares(maps, regions)
    rows, cols = linear_sum_assignment(-score)
    return float(score[rows, cols].sum())


def region_scores(maps: np.ndarray, regions: list[np.ndarray]) -> np.ndarray:
    """(concepts, regions): each concept's mean map value over each region, as a share
    of the concepts' mean values there (equal shares where every map is zero), plus
    TIE_BREAK x its share of map mass there (`region_shares`), so that where the maps
    cannot tell (identical twins) the regions holding more of them, whole objects
    rather than pieces, are taken."""
    means = np.array([[float(m[r].mean()) for r in regions] for m in maps])
    total = means.sum(axis=0, keepdims=True)
    explained = np.divide(means, total, out=np.full_like(means, 1.0 / len(maps)), where=total > 0)
    return explained + TIE_BREAK * region_shares(maps, regions)


def assign(
    maps: np.ndarray, regions: list[np.ndarray], leftovers_join: bool = True, prior: np.ndarray | None = None,
    score: str = "explained",
) -> list[int]:
    """For each region, the index (into `maps`) of the concept that gets it (the
    scores, `region_scores` for `explained` or `region_shares` for `mass`, plus
    `prior`, (concepts, regions), where given); a region left over joins the nearest
    assigned one (a piece of an object), or with `leftovers_join` off stays nobody's
    (-1: a whole object of the image that none of the concepts took)."""
    if score not in ("explained", "mass"):
        raise ValueError(f"score must be explained or mass, got {score!r}")
    scores = region_scores(maps, regions) if score == "explained" else region_shares(maps, regions)
    if prior is not None:
        scores = scores + prior
    rows, cols = linear_sum_assignment(-scores)
    owner = [-1] * len(regions)
    for concept, region in zip(rows, cols):
        owner[region] = int(concept)
    if not leftovers_join:
        return owner
    centres = [np.argwhere(r).mean(axis=0) for r in regions]
    assigned = [r for r, o in enumerate(owner) if o >= 0]
    for r, o in enumerate(owner):  # a left-over piece joins the nearest assigned region
        if o < 0:
            nearest = min(assigned, key=lambda a: (float(np.linalg.norm(centres[a] - centres[r])), a))
            owner[r] = owner[nearest]
    return owner
