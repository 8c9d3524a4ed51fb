"""The two DenseCRF refinements and which model family gets which."""

from __future__ import annotations

import numpy as np
import pytest

from conceptforge.engine.config import resolve_config
from conceptforge.engine.masks import iou, refine_masks
from conceptforge.shapes.world import sample_scene


def _coarse(mask: np.ndarray, grid: int = 16) -> np.ndarray:
    h = mask.shape[0] // grid
    return mask.reshape(grid, h, grid, h).mean(axis=(1, 3)).astype(np.float32)


def test_families_get_their_refinement():
    assert resolve_config(True, {}, {}).crf_method == "flat"  # the built-in figures' refinement
    assert resolve_config(False, {}, {}).crf_method == "photo"  # chosen on photographs


@pytest.mark.parametrize("method", ["flat", "photo"])
def test_both_recover_a_shapes_scene_from_coarse_maps(method):
    scene = sample_scene(800021)
    masks = [o.mask for o in scene.objects] + [scene.background_mask]
    maps = np.stack([_coarse(m) for m in masks])
    refined = refine_masks(np.asarray(scene.image), maps, has_background=True, method=method)
    assert np.mean([iou(r, m) for r, m in zip(refined, masks)]) > 0.8


def test_methods_differ_and_unknown_is_refused():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    maps = rng.random((2, 16, 16)).astype(np.float32)
    flat, photo = (refine_masks(image, maps, method=m) for m in ("flat", "photo"))
    assert flat.shape == photo.shape and not (flat == photo).all()
    with pytest.raises(ValueError, match="method"):
        refine_masks(image, maps, method="soft")
