"""Small synthetic images with known objects for the region, discover and assignment tests."""

from __future__ import annotations

import numpy as np


def with_pixel_noise(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """The image with Gaussian pixel noise of the built-in world's strength (std 4), as uint8."""
    noisy = np.asarray(rgb, np.float64) + np.random.default_rng(seed).normal(0.0, 4.0, np.shape(rgb))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def two_tone_disc_beside_a_square(size: int = 64, cut: float = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grey image with a disc centred at (24, 24) (red left of x = `cut`, blue right of it: through its
    centre, as the built-in world cuts two-tone objects, by default) overlapped by a green square, with
    pixel noise as in the built-in world; returns the image and the two objects' visible masks."""
    ys, xs = np.mgrid[0:size, 0:size] * (64 / size)  # drawn on a 64 px canvas, sampled at `size`
    disc = (ys - 24) ** 2 + (xs - 24) ** 2 <= 14**2
    square = (ys >= 28) & (ys < 50) & (xs >= 32) & (xs < 54)
    rgb = np.full((size, size, 3), 128.0)
    rgb[disc & (xs < cut)] = (220, 30, 30)
    rgb[disc & (xs >= cut)] = (30, 30, 220)
    rgb[square] = (30, 200, 30)
    return with_pixel_noise(rgb), disc & ~square, square


def two_tone_cross(angle: float = 0.8, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with a cross cut in two colours by a line through its centre (as the built-in
    world draws two-tone objects), with pixel noise; returns the image and the cross's mask."""
    from conceptforge.shapes.world import shape_mask

    cross = shape_mask("cross", size / 2, size / 2, 14 * size / 64, size=size)
    ys, xs = np.mgrid[0:size, 0:size] - size / 2
    side = xs * np.cos(angle) + ys * np.sin(angle) > 0
    rgb = np.full((size, size, 3), 128.0)
    rgb[cross & side] = (220, 30, 30)
    rgb[cross & ~side] = (30, 30, 220)
    return with_pixel_noise(rgb), cross
