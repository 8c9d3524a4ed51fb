"""Which concepts look wrong at the latest E-step: two masks of one image that
overlap a lot, an empty or image-filling mask, a mask that keeps changing a lot
between E-steps, a mask far from its GT mask."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from .model import ConceptRow, RunView

OVERLAP_MAX = 0.5  # share of the smaller mask covered by the other one
EMPTY_AREA = 0.002
FULL_AREA = 0.95
CHANGE_IOU = 0.5  # IoU with the previous E-step below this is a big change
SWITCHES = 2  # big changes at this many E-steps or more: the mask keeps switching
GT_IOU_LOW = 0.5


@dataclass
class Finding:
    """One suspicious concept (or pair), in a sentence."""

    kind: str  # overlap | empty | full | switching | gt
    image: str
    tokens: list[str]
    text: str
    anchor: str


def big_change(iou_prev: float | None) -> bool:
    return iou_prev is not None and iou_prev < CHANGE_IOU


def find_problems(view: RunView) -> list[Finding]:
    """Every finding of the run, image by image."""
    out: list[Finding] = []
    for block in view.images:
        rows = [r for r in block.rows if r.cells]
        for row in rows:
            out.extend(_row_problems(row, len(block.rows)))
        out.extend(_overlaps(rows))
    return out


def _row_problems(row: ConceptRow, concepts_in_image: int) -> list[Finding]:
    last = row.cells[-1]
    found = []

    def add(kind: str, text: str) -> None:
        found.append(Finding(kind, row.image, [row.token], f"{row.token} on {row.image}: {text}", row.anchor))

    if last.area is not None and last.area < EMPTY_AREA:
        add("empty", f"the mask is empty or nearly so ({last.area:.1%} of the image) at E-step {last.iteration}.")
    elif last.area is not None and last.area > FULL_AREA and (not row.background or concepts_in_image > 1):
        add("full", f"the mask covers {last.area:.0%} of the image at E-step {last.iteration}, leaving nothing to the other concepts.")
    changes = [c.iteration for c in row.cells if big_change(c.iou_prev)]
    if len(changes) >= SWITCHES:
        add("switching", f"the mask changed a lot (IoU with the previous E-step < {CHANGE_IOU}) at E-steps {', '.join(map(str, changes))}.")
    if last.iou_gt is not None and last.iou_gt < GT_IOU_LOW:
        add("gt", f"IoU with its GT mask is {last.iou_gt:.2f} at E-step {last.iteration}.")
    return found


def _overlaps(rows: list[ConceptRow]) -> list[Finding]:
    """Pairs of one image's latest masks of one iteration where one covers much of the other."""
    from ..masks import load_mask_png

    latest = {}
    for row in rows:
        cell = row.cells[-1]
        if cell.mask is not None:
            try:
                latest[row.token] = (cell.iteration, load_mask_png(cell.mask))
            except (OSError, ValueError):
                continue
    found = []
    for a, b in combinations(rows, 2):
        if a.token not in latest or b.token not in latest:
            continue
        (it_a, ma), (it_b, mb) = latest[a.token], latest[b.token]
        if it_a != it_b or ma.shape != mb.shape:
            continue
        smaller = min(int(ma.sum()), int(mb.sum()))
        if smaller == 0:
            continue
        share = float(np.logical_and(ma, mb).sum()) / smaller
        if share > OVERLAP_MAX:
            text = f"{a.token} and {b.token} on {a.image}: their masks overlap on {share:.0%} of the smaller one at E-step {it_a}."
            found.append(Finding("overlap", a.image, [a.token, b.token], text, a.anchor))
    return found
