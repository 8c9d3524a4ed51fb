"""Soft per-concept maps -> binary masks (threshold + DenseCRF), and mask utilities.

`refine_masks` implements step 2 of the method (DESIGN.md): upsample each
concept's coarse map bilinearly to the image, normalise it by its max,
threshold it, then refine all of an image's maps jointly with a DenseCRF.

Unary construction (decided by measurement with the degradations of
`benchmarks/crf_real.py`, results in `benchmarks/results/crf_real.md`):

    scores  s_k = max-normalised upsampled map k      (the K concept labels)
    rest    s_r = threshold, a constant               (only when has_background is False)
    unary   U_l = -log softmax(s / UNARY_TEMPERATURE)_l,  UNARY_TEMPERATURE = 0.3

A constant rest score equal to the threshold makes the unary's argmax exactly
the thresholded labelling (a concept wins where its map passes the threshold
and is the largest; the rest label wins where no map passes), so the CRF starts
from the masks of `use_crf=False` and `threshold` means the same in both paths.
Mean IoU before -> after CRF, 2 noise seeds, (16x16 pooling, blur 1 cell,
noise 0.1) | (blur 1.5 cells, noise 0.2); real = 7 Break-a-Scene photos,
shapes = shapes-world seeds 0-49:

    softmax, rest=threshold, T=0.05   real 0.739->0.796, shapes 0.738->0.977
    softmax, rest=threshold, T=0.1    real 0.739->0.801, shapes 0.738->0.994 | real 0.520->0.606, shapes 0.506->0.854
    softmax, rest=threshold, T=0.2    real 0.739->0.802, shapes 0.738->0.996 | real 0.520->0.617, shapes 0.506->0.872
    softmax, rest=threshold, T=0.3    real 0.739->0.801, shapes 0.738->0.996 | real 0.520->0.620, shapes 0.506->0.874
    softmax, rest=threshold, T=0.5    real 0.739->0.799, shapes 0.738->0.996 | real 0.520->0.621, shapes 0.506->0.864
    softmax, rest=threshold, T=1.0    real 0.739->0.799, shapes 0.738->0.994
    softmax, rest=1-max s_k, T=0.3    real 0.739->0.801, shapes 0.738->0.995 | real 0.520->0.614, shapes 0.506->0.871
    normalised s_k^4 (no softmax)     real 0.739->0.796, shapes 0.738->0.990
    hard labels, gt_prob 0.6 / 0.95   real 0.739->0.789 / 0.767, shapes 0.738->0.993 / 0.967

Over 5 noise seeds of the default degradation the temperatures tie on the
photos (T = 0.1 / 0.2 / 0.3 / 0.5: 0.744 -> 0.799 / 0.798 / 0.797 / 0.795,
seed-to-seed sd 0.011); the stronger degradation and the shapes world favour
T around 0.3, so T = 0.3.  The trade-off shows on one photo: a softer unary
lets the bilateral term pull a low-contrast object into its surroundings
("bear": the shell on the wooden table, IoU 0.77 at T = 0.1, 0.58 at T = 0.3),
a sharper one (T <= 0.1, hard labels) lets the CRF fix noisy maps less.  A rest
score of 1 - max s_k ignores the threshold (its boundary is always at 0.5): it
scored 0.801 vs 0.786 on the photos at threshold 0.35, but only because this
degradation puts the true boundary at 0.5; keeping the threshold meaningful won.

Masks never overlap, except a fallback: when the CRF (or the argmax among
concepts) leaves a concept with a non-zero map empty, its own thresholded mask
is returned instead; since each map is max-normalised and the threshold is at
most 1, that mask always holds at least the map's argmax pixel.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

UNARY_TEMPERATURE = 0.3
GAUSSIAN_SXY = 3
GAUSSIAN_COMPAT = 7
BILATERAL_SXY = 50
BILATERAL_SRGB = 5
BILATERAL_COMPAT = 10
_PROB_FLOOR = 1e-8

class MaskSizeError(ValueError):
    """A mask file's size differs from the size it must have."""


# --------------------------------------------------------------------------- refinement


def refine_masks(
    image: np.ndarray,
    maps: np.ndarray,
    threshold: float = 0.5,
    use_crf: bool = True,
    has_background: bool = False,
    crf_iterations: int = 10,
) -> np.ndarray:
    """Binary masks (K, H, W) of an H×W×3 uint8 image from K soft maps (K, h, w) in [0, 1].

    `has_background` says the maps cover the whole image (one of them is the
    background); without it the CRF gets an extra "rest" label for pixels that
    belong to no concept.  With `use_crf=False` the thresholded masks are
    returned (argmax among the concepts where several pass).  An all-zero map
    gets an empty mask; every other map a non-empty one.  Raises ValueError on
    malformed inputs or a threshold outside [0, 1].
    """
    image, maps = _check_inputs(image, maps, threshold)
    height, width = image.shape[:2]
    scores = normalise_maps(upsample_maps(maps, height, width))
    alive = scores.max(axis=(1, 2), initial=0.0) > 0
    thresholded = scores >= threshold
    if use_crf and alive.any():
        labels = _crf_labels(image, _unary_probabilities(scores, alive, threshold, has_background), crf_iterations)
    else:
        labels = _hard_labels(scores, thresholded)
    masks = labels[None] == np.arange(len(scores))[:, None, None]
    masks[~alive] = False
    return _ensure_non_empty(masks, thresholded, alive)


def upsample_maps(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of (K, h, w) maps to (K, height, width) float32."""
    out = np.empty((len(maps), height, width), np.float32)
    for k, m in enumerate(maps):
        out[k] = np.asarray(Image.fromarray(np.asarray(m, np.float32)).resize((width, height), Image.BILINEAR))
    return out


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Each map divided by its max (all-zero maps stay zero), clipped to [0, 1]."""
    peak = maps.max(axis=(1, 2), initial=0.0, keepdims=True)
    return np.clip(np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0), 0.0, 1.0)


def _check_inputs(image: np.ndarray, maps: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """The image and float32 maps as arrays, or ValueError saying what is malformed."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    image = np.asarray(image)
    maps = np.asarray(maps, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an H×W×3 uint8 array, got shape {image.shape} and dtype {image.dtype}")
    if maps.ndim != 3:
        raise ValueError(f"maps must be a K×h×w array, got shape {maps.shape}")
    return image, maps


def _hard_labels(scores: np.ndarray, thresholded: np.ndarray) -> np.ndarray:
    """Per pixel: the concept with the largest score among those that pass, else -1."""
    if not len(scores):
        return np.full(scores.shape[1:], -1)
    return np.where(thresholded.any(axis=0), scores.argmax(axis=0), -1)


def _unary_probabilities(scores: np.ndarray, alive: np.ndarray, threshold: float, has_background: bool) -> np.ndarray:
    """Label probabilities (L, H, W): softmax of the scores, plus a rest label scored `threshold`."""
    logits = np.where(alive[:, None, None], scores, -np.inf)
    if not has_background:
        logits = np.concatenate([logits, np.full((1, *scores.shape[1:]), threshold, np.float32)])
    logits = logits / UNARY_TEMPERATURE
    logits = logits - logits.max(axis=0, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=0, keepdims=True)


def _crf_labels(image: np.ndarray, probs: np.ndarray, iterations: int) -> np.ndarray:
    """DenseCRF labelling (H, W) from label probabilities (L, H, W); label K (rest) means no concept."""
    import pydensecrf.densecrf as dcrf

    n_labels, height, width = probs.shape
    unary = -np.log(np.maximum(probs, _PROB_FLOOR)).reshape(n_labels, -1)
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY, compat=GAUSSIAN_COMPAT)
    crf.addPairwiseBilateral(
        sxy=BILATERAL_SXY, srgb=BILATERAL_SRGB, rgbim=np.require(image, np.uint8, ["C", "W"]), compat=BILATERAL_COMPAT
    )
    q = np.asarray(crf.inference(iterations))
    return q.argmax(axis=0).reshape(height, width)


def _ensure_non_empty(masks: np.ndarray, thresholded: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Give each live concept left empty its thresholded mask (never empty: it
    holds the map's peak), taking those pixels from the other masks wherever
    that leaves them non-empty, so that masks overlap only as a last resort."""
    for k in np.flatnonzero(alive & ~masks.any(axis=(1, 2))):
        masks[k] = thresholded[k]
        for j in range(len(masks)):
            if j != k and (masks[j] & ~masks[k]).any():
                masks[j] &= ~masks[k]
    return masks


# --------------------------------------------------------------------------- mask utilities


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one shape; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A boolean mask resized to height×width (nearest neighbour)."""
    img = Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255)
    return np.asarray(img.resize((width, height), Image.NEAREST)) > 127


# --------------------------------------------------------------------------- PNG I/O


def save_mask_png(mask: np.ndarray, path: str | os.PathLike) -> None:
    """Write a boolean mask as a 0/255 grayscale PNG, atomically."""
    _save_atomic(Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255, "L"), Path(path))


def load_mask_png(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask PNG as a boolean array (pixels > 127); `size` (width, height) is checked if given."""
    with Image.open(path) as img:
        if size is not None and tuple(img.size) != tuple(size):
            raise MaskSizeError(
                f"Mask {path} is {img.size[0]}x{img.size[1]} pixels but {size[0]}x{size[1]} was expected."
            )
        return np.asarray(img.convert("L")) > 127


def save_soft_png(map: np.ndarray, path: str | os.PathLike, size: tuple[int, int] | None = None) -> None:
    """Write a [0, 1] map as a 0..255 grayscale PNG, atomically; upsampled to `size` (width, height) if given."""
    values = np.clip(np.asarray(map, np.float32), 0.0, 1.0)
    if size is not None:
        values = upsample_maps(values[None], size[1], size[0])[0]
    _save_atomic(Image.fromarray(np.round(values * 255).astype(np.uint8), "L"), Path(path))


def _save_atomic(img: Image.Image, path: Path) -> None:
    """Save a PNG to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            img.save(handle, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- pictures

# The picture functions live in .pictures; these names stay importable from here.
from .pictures import PALETTE, _label_margin, contact_sheet, overlay  # noqa: E402,F401
