"""DenseCRF refinement depends on what an image shows, not on how many pixels show it."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from conceptforge.engine.masks import iou, refine_masks, resize_mask

SIDE = 1024


def _scene(side: int = SIDE) -> tuple[np.ndarray, list[np.ndarray]]:
    """A photo-like side×side image and its two object masks: a wavy, graded background,
    a striped disc whose dark stripes have the background's colours, a noisy grey-blue box."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:side, 0:side] / side
    image = np.stack([120 + 60 * xs, 110 + 40 * ys, 90 + 30 * (xs + ys)], axis=-1)
    image += 25 * np.sin(xs * 40 + 3 * np.sin(ys * 17))[..., None]
    disc = (xs - 0.32) ** 2 + (ys - 0.4) ** 2 < 0.17**2
    stripes = np.sin((xs + ys) * 90) > 0
    image[disc] = np.where(stripes[disc, None], (200, 170, 120), (110, 90, 70))
    box = (abs(xs - 0.72) < 0.14) & (abs(ys - 0.66) < 0.2)
    image[box] = (110, 120, 130) + 25 * rng.standard_normal((int(box.sum()), 3))
    image = np.clip(image + 6 * rng.standard_normal(image.shape), 0, 255).astype(np.uint8)
    return image, [disc, box]


def _coarse_maps(masks: list[np.ndarray], grid: int = 16, blur: float = 2.0) -> np.ndarray:
    """Attention-like maps: each mask area-pooled to grid×grid and blurred by `blur` cells."""
    pooled = [np.asarray(Image.fromarray(m.astype(np.float32)).resize((grid, grid), Image.BOX)) for m in masks]
    return np.stack([gaussian_filter(p, blur, mode="nearest") for p in pooled])


def _shrink(image: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((side, side), Image.LANCZOS))


def test_same_scene_at_256_and_1024_px_gives_the_same_masks() -> None:
    big, truth = _scene()
    maps = _coarse_maps(truth)
    small_masks = refine_masks(_shrink(big, 256), maps)
    big_masks = refine_masks(big, maps)
    for small, large, true in zip(small_masks, big_masks, truth):
        assert iou(small, resize_mask(large, 256, 256)) >= 0.95
        assert iou(large, true) >= 0.9 and iou(small, resize_mask(true, 256, 256)) >= 0.9


def test_refinement_time_does_not_grow_with_the_pixel_count() -> None:
    big, truth = _scene()
    maps = _coarse_maps(truth)
    small = _shrink(big, 256)

    def seconds(image: np.ndarray) -> float:
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            refine_masks(image, maps)
            runs.append(time.perf_counter() - start)
        return min(runs)

    assert seconds(big) < 6 * seconds(small)  # 16 times the pixels; a CRF on all of them takes over 10 times as long
