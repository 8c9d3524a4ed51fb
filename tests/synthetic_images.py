"""Small synthetic images with known objects for the region, discover and assignment tests."""

from __future__ import annotations

import numpy as np


def with_pixel_noise(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """The image with Gaussian pixel noise of the built-in world's strength (std 4), as uint8."""
    noisy = np.asarray(rgb, np.float64) + np.random.default_rng(seed).normal(0.0, 4.0, np.shape(rgb))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def two_tone_disc_beside_a_square(size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grey image with a disc (a red cap on the left, the rest blue) overlapped by a green square, with
    pixel noise as in the built-in world; returns the image and the two objects' visible masks."""
    ys, xs = np.mgrid[0:size, 0:size] * (64 / size)  # drawn on a 64 px canvas, sampled at `size`
    disc = (ys - 24) ** 2 + (xs - 24) ** 2 <= 14**2
    square = (ys >= 28) & (ys < 50) & (xs >= 32) & (xs < 54)
    rgb = np.full((size, size, 3), 128.0)
    rgb[disc & (xs < 18)] = (220, 30, 30)
    rgb[disc & (xs >= 18)] = (30, 30, 220)
    rgb[square] = (30, 200, 30)
    return with_pixel_noise(rgb), disc & ~square, square
