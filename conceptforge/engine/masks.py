"""Soft per-concept maps -> binary masks (threshold + DenseCRF), and mask utilities.

`refine_masks` implements step 2 of the method (DESIGN.md): upsample each
concept's coarse map bilinearly to the image, normalise it by its max,
threshold it, then refine all of an image's maps jointly with a DenseCRF.

The `photo` CRF, the default (chosen by measurement with
`benchmarks/crf_real.py`: human masks of the Break-a-Scene photos degraded into
attention-like 16x16 and 32x32 maps; parameters chosen on 4 of the 7 photos,
the other 3 held out; results in `benchmarks/results/crf_real.md`); `flat` is
the former refinement, the "old" column below:

- Denoising.  Each coarse map is first blurred (Gaussian, edges replicated)
  with a sigma in cells of MAP_SMOOTHING = 3 times its estimated noise, at most
  2 cells; the noise is the median absolute difference between neighbouring
  cells of the max-normalised map, scaled to a standard deviation
  (`map_noise`).  A smooth map is left nearly as it is, a speckled one is
  smoothed before its noise reaches the unary.  (Chosen on the tuning photos
  among 3, 4, 5 and 6 times the noise, a fixed blur of 0.5 cells, which lost
  at 16: 1/0.1, and 3x3 median filters.)
- Resolution.  The CRF runs on the image area-averaged down to a longer side of
  at most CRF_SIDE = 256 px (smaller images at their own size), and its label
  marginals are upsampled bilinearly to the image before the argmax.  Kernel
  widths are given at REFERENCE_SIDE = 512 px (CutLER's: Gaussian sxy 3,
  bilateral sxy 50) and scaled to the CRF image's longer side, the Gaussian to
  at least 1 px and the bilateral to at least 16 px (images under 164 px, such
  as the built-in 64 px world, where a kernel a few pixels wide groups no
  colours).  So a scene gives the same masks at 256 and at 1024 px, and the
  cost does not grow with the image.
- Unary, per pixel, with s_k the max-normalised map of concept k:

      p_k  ∝ s_k ** UNARY_POWER                         (1.5)
      p_r  ∝ (REST_FACTOR * threshold) ** UNARY_POWER    (0.84; the rest label, only
                                                          when has_background is False)
      P_l  ∝ p_l * C_l(colour) ** COLOUR_WEIGHT          (0.5)

  p normalised over the labels; C_l is label l's colour histogram over the CRF
  image (16 bins per channel; each pixel counted with p_l ** 2, normalised over
  the labels; a uniform prior worth 20% of the pixels, which keeps a small
  object's histogram from claiming a background of a similar colour).
- Pairwise: CutLER's Gaussian (compat 7) and bilateral (srgb 5) kernels, the
  bilateral with compat 7 instead of 10; 10 mean-field iterations.

A higher threshold still gives smaller masks: the rest label's score follows it.
It sits below the threshold because the CRF, pulling ambiguous pixels towards
the larger surrounding label, shrinks concepts otherwise.

Measured by `OMP_NUM_THREADS=1 python benchmarks/crf_real.py --shapes
--ablations` (mean IoU over the 7 photos, 3 noise seeds; maps: grid, blur in
cells / noise; "old" is this function before these choices: softmax unary at
temperature 0.3, rest score = threshold, CutLER's widths in pixels at the
image's own size; "reference" a plain CutLER DenseCRF with the stacked maps and
a rest level of 0.4 as the unary):

    maps           before   old    reference   new
    16: 0.5/0.05   0.869   0.845   0.842       0.865
    16: 1/0.1      0.742   0.801   0.818       0.823
    16: 1.5/0.2    0.530   0.620   0.703       0.725
    16: 2/0.3      0.308   0.327   0.478       0.588
    32: 0.5/0.05   0.950   0.873   0.859       0.883
    32: 1/0.1      0.885   0.853   0.845       0.868
    32: 1.5/0.2    0.757   0.814   0.823       0.843
    32: 2/0.3      0.575   0.723   0.780       0.809

Held-out photos, gain over "before" at the four 16x16 strengths: new -0.014,
+0.058, +0.156, +0.233, mean +0.108 (reference -0.029, +0.053, +0.126, +0.180,
mean +0.083).  Nearly exact maps (blur 0.5) lose a little with every CRF: it
moves their boundaries to colour edges that the human masks do not follow
(a bowl's white rim against a white table).  Shapes world (64 px, 50 scenes,
16x16): old 0.999 / 0.997 / 0.821 / 0.380, new 0.999 / 0.999 / 0.980 / 0.886.
CRF time for a 512 px photo with 3 concepts, one thread: old 0.48 s,
reference 0.46 s, new 0.16 s.  The same maps on a photo at 256 and at 1024 px:
lowest per-concept IoU between the two 0.977 (old 0.086).

Each choice undone alone (mean over the 8 degradations, tuning / held-out
photos; new 0.798 / 0.805): maps not denoised 0.787 / 0.794 (16: 2/0.3 0.520
instead of 0.588; shapes at 2/0.3 0.757); rest score = threshold 0.760 /
0.785; widths in pixels of the 256 px CRF image, not scaled 0.758 / 0.790;
bilateral compat 10 0.782 / 0.804; no colour model 0.786 / 0.798 (shapes at
1.5/0.2 and 2/0.3: 0.963 / 0.798); probability = map (power 1) 0.787 / 0.802;
CRF at the full 512 px 0.796 / 0.802; 5 iterations 0.799 / 0.803 (within
0.001 of 10 on the tuning photos; 10 kept); no 16 px bilateral floor: photos
unchanged, shapes 0.997 / 0.996 / 0.970 / 0.842.  A rest score of
0.8 * threshold scores the same on average (0.798 / 0.805) but falls under the
reference at 16: 1/0.1 (0.817 vs 0.818); 0.84 keeps every degradation at or
above it.

Masks never overlap, except a fallback: when the CRF (or the argmax among
concepts) leaves a concept with a non-zero map empty, its own thresholded mask
is returned instead; since each map is max-normalised and the threshold is at
most 1, that mask always holds at least the map's argmax pixel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..fsutil import atomic_write
from .pictures import PALETTE, RUN_PNG_LEVEL, _label_margin, contact_sheet, overlay  # noqa: F401 - picture names stay importable from here

CRF_SIDE = 256  # the CRF runs on the image shrunk so that its longer side is at most this many pixels
REFERENCE_SIDE = 512  # the kernel widths below are in pixels of an image whose longer side is this long
GAUSSIAN_SXY = 3  # scaled by the CRF image's longer side / REFERENCE_SIDE, and never under MIN_GAUSSIAN_SXY
MIN_GAUSSIAN_SXY = 1.0
GAUSSIAN_COMPAT = 7
BILATERAL_SXY = 50  # scaled like GAUSSIAN_SXY, and never under MIN_BILATERAL_SXY
MIN_BILATERAL_SXY = 16.0
BILATERAL_SRGB = 5
BILATERAL_COMPAT = 7
UNARY_POWER = 1.5  # a concept's label probability grows as its map ** UNARY_POWER
REST_FACTOR = 0.84  # the rest label's score is REST_FACTOR * threshold
COLOUR_WEIGHT = 0.5  # exponent of the per-image colour model in the unary
COLOUR_BINS = 16  # per RGB channel
COLOUR_WEIGHT_POWER = 2  # a pixel counts for a label's colour histogram with its probability ** this, normalised
COLOUR_PRIOR = 0.2  # every label's histogram starts uniform, with this share of the image's pixels
MAP_SMOOTHING = 3.0  # before the CRF, a coarse map is blurred by this many cells per unit of its estimated noise
MAX_MAP_SMOOTHING = 2.0  # the blur's sigma in cells never exceeds this
_PROB_FLOOR = 1e-8

CRF_METHODS = ("photo", "flat")
# `flat`: softmax of the scores at this temperature plus a rest label scored `threshold`, fixed
# pixel kernels (the parameters before the photo tuning; built-in world 0.738 -> 0.996)
FLAT_TEMPERATURE = 0.3
FLAT_GAUSSIAN = (3, 7)  # sxy, compat
FLAT_BILATERAL = (50, 5, 10)  # sxy, srgb, compat

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
    method: str = "photo",
) -> np.ndarray:
    """Binary masks (K, H, W) of an H×W×3 uint8 image from K soft maps (K, h, w) in [0, 1].

    `method` chooses the DenseCRF: `photo` (the default, chosen on real
    photographs: kernels relative to the image size, colour model) or `flat`
    (the refinement tuned on the built-in world's flat colours at 64 px, whose
    figures every built-in benchmark was measured with; see FLAT_*).

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
    if method not in CRF_METHODS:
        raise ValueError(f"method must be one of {', '.join(CRF_METHODS)}, got {method!r}")
    if use_crf and alive.any() and method == "flat":
        labels = _flat_crf_labels(image, scores, alive, threshold, has_background, crf_iterations)
    elif use_crf and alive.any():
        live = np.flatnonzero(alive)
        found = _crf_labels(image, maps[live], threshold, has_background, crf_iterations)
        labels = np.where(found >= 0, live[np.maximum(found, 0)], -1)
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


def _crf_labels(image: np.ndarray, maps: np.ndarray, threshold: float, has_background: bool, iterations: int) -> np.ndarray:
    """DenseCRF labelling (H, W) of the image from K live maps: the index of a map, or -1 for no concept.

    The CRF runs on the image shrunk to `CRF_SIDE`; its label probabilities are
    upsampled bilinearly to the image before the argmax."""
    height, width = image.shape[:2]
    small = _crf_image(image)
    scores = normalise_maps(upsample_maps(denoise_maps(maps), *small.shape[:2]))
    q = _mean_field(small, _unary_probabilities(small, scores, threshold, has_background), iterations)
    if q.shape[1:] != (height, width):
        q = upsample_maps(q, height, width)
    labels = q.argmax(axis=0)
    return np.where(labels < len(maps), labels, -1)


def _flat_crf_labels(
    image: np.ndarray, scores: np.ndarray, alive: np.ndarray, threshold: float, has_background: bool, iterations: int
) -> np.ndarray:
    """The `flat` DenseCRF labelling (H, W): a concept's index, or K (rest) where none."""
    import pydensecrf.densecrf as dcrf

    height, width = image.shape[:2]
    logits = np.where(alive[:, None, None], scores, -np.inf)
    if not has_background:
        logits = np.concatenate([logits, np.full((1, height, width), threshold, np.float32)])
    logits = logits / FLAT_TEMPERATURE
    logits = logits - logits.max(axis=0, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=0, keepdims=True)
    n_labels = len(probs)
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.maximum(probs, _PROB_FLOOR)).reshape(n_labels, -1), np.float32))
    crf.addPairwiseGaussian(sxy=FLAT_GAUSSIAN[0], compat=FLAT_GAUSSIAN[1])
    sxy, srgb, compat = FLAT_BILATERAL
    crf.addPairwiseBilateral(sxy=sxy, srgb=srgb, rgbim=np.require(image, np.uint8, ["C", "W"]), compat=compat)
    return np.asarray(crf.inference(iterations)).argmax(axis=0).reshape(height, width)


def map_noise(coarse: np.ndarray) -> float:
    """A robust estimate of the per-cell noise of a coarse map, in units of its max: the
    median absolute difference between neighbouring cells, scaled to a Gaussian's
    standard deviation (a smooth map gives about 0, independent noise of std s about s)."""
    peak = float(coarse.max(initial=0.0))
    if peak <= 0:
        return 0.0
    scaled = coarse / peak
    steps = np.concatenate([np.diff(scaled, axis=0).ravel(), np.diff(scaled, axis=1).ravel()])
    if not steps.size:
        return 0.0
    return float(np.median(np.abs(steps)) * 1.4826 / np.sqrt(2))


def denoise_maps(maps: np.ndarray) -> np.ndarray:
    """Each coarse map Gaussian-blurred (edges replicated) with a sigma in cells of
    `MAP_SMOOTHING` times its estimated noise (`map_noise`), at most `MAX_MAP_SMOOTHING`:
    speckled maps are smoothed before the CRF, clean ones are left nearly as they are."""
    from scipy.ndimage import gaussian_filter

    out = np.empty_like(maps, dtype=np.float32)
    for k, m in enumerate(maps):
        sigma = min(MAP_SMOOTHING * map_noise(m), MAX_MAP_SMOOTHING)
        out[k] = gaussian_filter(m, sigma, mode="nearest", truncate=3.0) if sigma > 0 else m
    return out


def _crf_image(image: np.ndarray) -> np.ndarray:
    """The image, area-averaged down so that its longer side is at most `CRF_SIDE`."""
    height, width = image.shape[:2]
    scale = CRF_SIDE / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BOX))


def _unary_probabilities(image: np.ndarray, scores: np.ndarray, threshold: float, has_background: bool) -> np.ndarray:
    """Label probabilities (L, h, w), up to a factor per pixel: the scores to the power `UNARY_POWER`
    (plus a rest label of constant score `REST_FACTOR * threshold`), normalised, times the
    image's colour model of each label to the power `COLOUR_WEIGHT`."""
    probs = scores**UNARY_POWER
    if not has_background:
        rest = np.full((1, *scores.shape[1:]), (REST_FACTOR * threshold) ** UNARY_POWER, np.float32)
        probs = np.concatenate([probs, rest])
    probs = np.maximum(probs, _PROB_FLOOR)
    probs /= probs.sum(axis=0, keepdims=True)
    weights = probs**COLOUR_WEIGHT_POWER
    return probs * _colour_likelihoods(image, weights / weights.sum(axis=0, keepdims=True)) ** COLOUR_WEIGHT


def _colour_likelihoods(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per label and pixel, the likelihood of the pixel's colour under the label's colour
    histogram (`COLOUR_BINS` per channel), each pixel counted with the label's weight there,
    on top of a uniform prior worth `COLOUR_PRIOR` of the image's pixels."""
    bins = (image.astype(np.int64) * COLOUR_BINS) // 256
    index = ((bins[..., 0] * COLOUR_BINS + bins[..., 1]) * COLOUR_BINS + bins[..., 2]).ravel()
    prior = COLOUR_PRIOR * index.size / COLOUR_BINS**3
    out = np.empty_like(weights)
    for label, weight in enumerate(weights):
        counts = np.bincount(index, weights=weight.ravel(), minlength=COLOUR_BINS**3) + prior
        out[label] = (counts / counts.sum())[index].reshape(weight.shape)
    return out


def _mean_field(image: np.ndarray, probs: np.ndarray, iterations: int) -> np.ndarray:
    """DenseCRF mean-field marginals (L, h, w) of an h×w image from label probabilities (L, h, w);
    kernel widths scaled from `REFERENCE_SIDE` to the image's longer side."""
    import pydensecrf.densecrf as dcrf

    n_labels, height, width = probs.shape
    scale = max(height, width) / REFERENCE_SIDE
    unary = -np.log(np.maximum(probs, _PROB_FLOOR)).reshape(n_labels, -1)
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=max(GAUSSIAN_SXY * scale, MIN_GAUSSIAN_SXY), compat=GAUSSIAN_COMPAT)
    crf.addPairwiseBilateral(
        sxy=max(BILATERAL_SXY * scale, MIN_BILATERAL_SXY),
        srgb=BILATERAL_SRGB,
        rgbim=np.require(image, np.uint8, ["C", "W"]),
        compat=BILATERAL_COMPAT,
    )
    return np.asarray(crf.inference(iterations), np.float32).reshape(n_labels, height, width)


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
    save_png_atomic(Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255, "L"), Path(path))


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
    save_png_atomic(Image.fromarray(np.round(values * 255).astype(np.uint8), "L"), Path(path))


def save_png_atomic(img: Image.Image, path: Path) -> None:
    """Save a PNG beside `path`, then rename it into place (`fsutil.atomic_write`, with the mode
    a plain open() would give it; not flushed to disk: a run rewrites these at every E-step)."""
    atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG", compress_level=RUN_PNG_LEVEL), durable=False)
