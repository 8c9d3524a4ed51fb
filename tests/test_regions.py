"""Regions of an image from the image itself (`engine/regions.py`): superpixels, the
background by the border, objects grouped by the edges they share."""

from __future__ import annotations

import numpy as np

from conceptforge.engine import regions
from conceptforge.engine.masks import iou
from synthetic_images import two_tone_disc_beside_a_square


def test_edge_counts_are_shared_edges_and_perimeters():
    labels = np.array([[0, 0, 1], [0, 0, 1], [2, 2, 2]])
    counts = regions.edge_counts(labels)
    assert counts[0, 1] == 2 and counts[0, 2] == 2 and counts[1, 2] == 1
    assert counts[0].sum() == 8 and counts[1].sum() == 6  # perimeters, the image's edge (index 3) included
    assert (counts == counts.T).all() and counts[0, 0] == 0


def test_background_is_what_owns_the_border():
    block = np.zeros((4, 4), bool)
    block[1:3, 1:3] = True
    masks = np.stack([~np.kron(block, np.ones((4, 4), bool)), np.kron(block, np.ones((4, 4), bool))])
    back, objects = regions.split_background(masks, 0.25)
    assert back == [0] and objects == [1]


def test_image_regions_join_a_two_tone_object_and_keep_an_overlapping_one_apart():
    rgb, disc, square = two_tone_disc_beside_a_square()
    cut = regions.image_regions(rgb, regions.RegionRules())
    masks = cut.masks()
    assert len(cut.objects) == 2 and len(cut.background) == 1
    assert max(iou(masks[g], disc) for g in cut.objects) >= 0.95
    assert max(iou(masks[g], square) for g in cut.objects) >= 0.95


def test_rules_scale_with_the_image():
    # the same picture at 64 and at 256 px is cut into the same objects
    small, disc, _ = two_tone_disc_beside_a_square(64)
    large, disc_large, _ = two_tone_disc_beside_a_square(256)
    a = regions.image_regions(small, regions.RegionRules())
    b = regions.image_regions(large, regions.RegionRules())
    assert len(a.objects) == len(b.objects) == 2
    assert max(iou(b.masks()[g], disc_large) for g in b.objects) >= 0.95
