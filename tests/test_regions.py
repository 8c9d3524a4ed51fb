"""Regions of an image from the image itself (`engine/regions.py`): superpixels, the
background by the border, objects grouped by the edges they share."""

from __future__ import annotations

import numpy as np

from conceptforge.engine import regions
from conceptforge.engine.masks import iou
from synthetic_images import two_tone_cross, two_tone_disc_beside_a_square


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


def test_the_perimeter_rule_joins_a_part_cut_off_the_middle():
    # the SD-family rule: a red cap cut off near the rim shares over a third of its perimeter with the
    # blue rest; the chord rule leaves it apart (the cut misses the disc's middle)
    rgb, disc, _ = two_tone_disc_beside_a_square(cut=18)
    perimeter = regions.image_regions(rgb, regions.RegionRules(merge_boundary=0.33, merge_span=0))
    assert len(perimeter.objects) == 2 and max(iou(perimeter.masks()[g], disc) for g in perimeter.objects) >= 0.95
    assert len(regions.image_regions(rgb, regions.RegionRules()).objects) == 3


def test_rules_scale_with_the_image():
    # the same picture at 64 and at 256 px is cut into the same objects
    small, disc, _ = two_tone_disc_beside_a_square(64)
    large, disc_large, _ = two_tone_disc_beside_a_square(256)
    a = regions.image_regions(small, regions.RegionRules())
    b = regions.image_regions(large, regions.RegionRules())
    assert len(a.objects) == len(b.objects) == 2
    assert max(iou(b.masks()[g], disc_large) for g in b.objects) >= 0.95


def _disc_cut(offset: float) -> np.ndarray:
    """Labels: 0 around a disc of radius 12 at (32, 32), cut by the vertical line x = 32 + offset into 1 and 2."""
    ys, xs = np.mgrid[0:64, 0:64]
    disc = (xs - 32) ** 2 + (ys - 32) ** 2 <= 12**2
    return np.where(disc, np.where(xs < 32 + offset, 1, 2), 0)


def test_chord_of_a_disc_cut_through_its_centre_spans_it_and_passes_its_centroid():
    span, off, bend = regions.Chords.of(_disc_cut(0)).fit([1], [2])
    assert abs(span - 24 / np.sqrt(np.pi * 12**2)) < 0.1  # the diameter over the square root of the area
    assert off < 0.03 and bend < 0.01  # a straight cut
    span, off, _ = regions.Chords.of(_disc_cut(8)).fit([1], [2])  # a cap cut off near the rim
    assert span < 0.9 and off > 0.3
    ys, xs = np.mgrid[0:64, 0:64]
    front = (xs - 40) ** 2 + (ys - 32) ** 2 <= 10**2  # a disc in front of another: they meet on an arc
    behind = (xs - 26) ** 2 + (ys - 32) ** 2 <= 12**2
    _, off, bend = regions.Chords.of(np.where(front, 2, np.where(behind, 1, 0))).fit([1], [2])
    assert off < 0.03 and bend > regions.RegionRules().merge_bend  # through the middle, but bent


def test_a_two_tone_cross_cut_through_its_centre_is_one_object():
    rgb, cross = two_tone_cross()
    cut = regions.image_regions(rgb, regions.RegionRules())
    assert len(cut.objects) == 1 and iou(cut.masks()[cut.objects[0]], cross) >= 0.95
    # its halves share too little of their perimeters to join by that rule
    assert len(regions.image_regions(rgb, regions.RegionRules(merge_boundary=0.33, merge_span=0.0)).objects) == 2
