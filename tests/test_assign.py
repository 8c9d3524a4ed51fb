"""Joint assignment (`mask_assignment: joint`): an image's object concepts
compete for its regions, so two tokens never end on one object."""

from __future__ import annotations

import numpy as np
import pytest

from conceptforge.engine.assign import assign, assign_regions, image_parts, object_regions, raise_lost_ground, region_scores
from conceptforge.engine.masks import refine_masks
from synthetic_images import with_pixel_noise


def _blob(top: int, left: int, side: int = 4, size: int = 16) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    m[top : top + side, left : left + side] = 1.0
    return m


def _image(*objects: np.ndarray, size: int = 64) -> np.ndarray:
    """Flat grey with each object (a 16x16 map cell = 4x4 pixels) in its own colour."""
    rgb = np.full((size, size, 3), 128, np.uint8)
    for k, obj in enumerate(objects):
        rgb[np.kron(obj, np.ones((4, 4))) > 0] = [(220, 40, 40), (40, 40, 220), (40, 200, 40)][k]
    return rgb


def _masks(rgb: np.ndarray, maps: np.ndarray) -> np.ndarray:
    return refine_masks(rgb, maps, threshold=0.5, use_crf=True, has_background=True, method="flat")


def _on(mask: np.ndarray, obj: np.ndarray) -> float:
    """Share of the object (at image size) a mask covers."""
    big = np.kron(obj, np.ones((4, 4))) > 0
    return float((mask & big).sum() / big.sum())


def test_identical_tokens_on_a_two_object_image_end_on_different_objects():
    a, b = _blob(2, 2), _blob(10, 10)
    both = np.maximum(a, b)
    background = 1.0 - both
    maps = np.stack([both, both, background])  # two tokens with one init word: the same map
    rgb = _image(a, b)
    independent = _masks(rgb, maps)
    joint = _masks(rgb, assign_regions(maps, [0, 1], 0.5))
    # on their own the twins cannot tell the objects apart: one takes both, the other nothing
    assert not (_on(independent[0], a) > 0.9 and _on(independent[1], b) > 0.9)
    # jointly: one object each, in reading order, none on both
    assert _on(joint[0], a) > 0.9 and _on(joint[0], b) == 0
    assert _on(joint[1], b) > 0.9 and _on(joint[1], a) == 0


def test_a_token_that_straddles_two_objects_gives_one_up():
    a, b = _blob(2, 2, 6), _blob(9, 9, 6)
    straddle = np.maximum(a * 0.9, b * 0.8)  # half on each object
    inside = a.copy()
    inside[2:5, 2:5] = 0.0
    inside = inside * 0.7  # the twin: part of object a only
    maps = np.stack([straddle, inside, 1.0 - np.maximum(a, b)])
    out = assign_regions(maps, [0, 1], 0.5)
    joint = _masks(_image(a, b), out)
    assert _on(joint[1], a) > 0.9  # the twin gets the object it was on, whole
    assert _on(joint[0], b) > 0.9 and _on(joint[0], a) == 0  # the straddler the other one


def test_touching_objects_are_cut_in_two():
    a, b = _blob(4, 2, 4), _blob(4, 6, 4)  # side by side: one connected region
    regions = object_regions(np.maximum(a, b), 0.5, 2)
    assert len(regions) == 2
    assert (regions[0] & (b > 0)).sum() == 0 or (regions[1] & (a > 0)).sum() == 0
    out = assign_regions(np.stack([np.maximum(a, b)] * 2), [0, 1], 0.5)
    assert not np.array_equal(out[0], out[1])


def test_the_cut_goes_through_the_block_of_touching_objects_not_the_largest_object():
    single = np.zeros((16, 16), np.float32)
    single[9:15, 2:14] = 1.0  # one large object, 6 x 12 cells
    left, right = _blob(1, 4, 4), _blob(1, 8, 4)  # two touching objects: one 4 x 8 region, smaller
    maps = np.stack([single, left, right, 1.0 - np.maximum.reduce([single, left, right])])
    out = assign_regions(maps, [0, 1, 2], 0.5)
    assert out[0][single > 0].min() > 0  # the large object stays whole with its concept
    assert out[1][right > 0].max() == 0 and out[2][left > 0].max() == 0  # the block is shared out
    assert out[1][left > 0].max() > 0 and out[2][right > 0].max() > 0


@pytest.mark.parametrize("objects", [[], [0]])
def test_fewer_than_two_objects_leave_the_maps_alone(objects):
    maps = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    assert np.array_equal(assign_regions(maps, objects, 0.5), maps)


def test_background_maps_are_untouched_and_assignment_is_deterministic():
    rng = np.random.default_rng(1)
    maps = rng.random((3, 16, 16)).astype(np.float32)
    a = assign_regions(maps, [0, 1], 0.5)
    b = assign_regions(maps, [0, 1], 0.5)
    assert np.array_equal(a, b) and np.array_equal(a[2], maps[2])


def test_joint_assignment_in_the_e_step(tmp_path):
    """The built-in model, a scene of two objects whose tokens share the init word
    "shape": with joint assignment the first masks lie on different objects."""
    from conceptforge.engine.config import resolve_config
    from conceptforge.engine.learn import build_trainer
    from conceptforge.engine.masks import iou
    from conceptforge.project import Project
    from conceptforge.shapes.world import sample_scene

    scene = sample_scene(850007, n_objects=2)  # two apart objects (a development seed of tests only)
    project = Project.create(tmp_path / "p")
    image = tmp_path / "scene.png"
    scene.image.save(image)
    for k in range(2):
        project.add_concept(image, f"<o{k}>", init="shape")
    project.add_concept(image, "<bg>", init="background", background=True)
    trainer = build_trainer(Project.load(tmp_path / "p"), resolve_config(True, {}, {"mask_assignment": "joint", "device": "cpu"}))
    trainer.start()
    masks = [trainer.masks[(0, f"<o{k}>")] for k in range(2)]
    truth = [o.mask for o in scene.objects]
    best = [max(range(2), key=lambda o: iou(m, truth[o])) for m in masks]
    assert best[0] != best[1]
    assert min(iou(m, truth[o]) for m, o in zip(masks, best)) > 0.8


def test_assignment_groups_and_defaults():
    from types import SimpleNamespace

    from conceptforge.engine.config import resolve_config
    from conceptforge.engine.estep import assignment_groups

    data = SimpleNamespace(background=[False, False, False, False, True], inits=["shape", "Shape", "star", None, "background"])
    # SD: only tokens that share an init word compete; built-in: every object concept, for the image's objects
    assert resolve_config(False, {}, {}).mask_assignment == "same-word"
    assert resolve_config(True, {}, {}).mask_assignment == "joint" and resolve_config(True, {}, {}).assignment_regions == "image"
    assert assignment_groups(data, "same-word") == [[0, 1]]
    assert assignment_groups(data, "joint") == [[0, 1, 2, 3]]
    assert assignment_groups(data, "independent") == []


def _two_tone_block_beside_another(size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey image, pixel noise as in the built-in world: object A (24x24 px: a red strip on the
    left, the rest blue) and object B (green) touching A's right side; their pixel masks."""
    a = np.zeros((size, size), bool)
    a[16:40, 8:32] = True
    b = np.zeros((size, size), bool)
    b[28:52, 32:48] = True
    rgb = np.full((size, size, 3), 128.0)
    rgb[a] = (40, 40, 220)
    rgb[16:40, 8:16] = (220, 40, 40)
    rgb[b] = (40, 200, 40)
    return with_pixel_noise(rgb), a, b


def test_with_the_image_twins_take_whole_objects_a_two_tone_one_included():
    rgb, a, b = _two_tone_block_beside_another()
    cells = lambda m: (m.reshape(16, 4, 16, 4).mean(axis=(1, 3)) > 0.5).astype(np.float32)  # noqa: E731
    both = np.maximum(cells(a), cells(b))
    maps = np.stack([both, both, 1.0 - both])  # two tokens with one init word: the same map
    masks = _masks(rgb, assign_regions(maps, [0, 1], 0.5, image_parts(rgb, 16)))
    share = lambda m, obj: float((m & obj).sum() / obj.sum())  # noqa: E731
    assert share(masks[0], a) > 0.9 and share(masks[0], b) < 0.05  # the two-tone object whole, to the first in reading order
    assert share(masks[1], b) > 0.9 and share(masks[1], a) < 0.05


def test_an_object_no_twin_takes_is_left_to_the_maps():
    # three objects in the image, two twins whose maps cover all three: the third is nobody's,
    # so both twins' maps stay as they were there (no token is handed two objects)
    a, b, c = _blob(1, 1), _blob(1, 10), _blob(10, 5)
    rgb = with_pixel_noise(_image(a, b, c))
    twin0 = np.maximum(a, c * 0.9)
    twin1 = np.maximum(b, c * 0.8)
    maps = np.stack([twin0, twin1, 1.0 - np.maximum(np.maximum(a, b), c)])
    out = assign_regions(maps, [0, 1], 0.5, image_parts(rgb, 16))
    assert out[0][a > 0].min() > 0.9 and out[0][b > 0].max() == 0
    assert out[1][b > 0].min() > 0.9 and out[1][a > 0].max() == 0
    np.testing.assert_array_equal(out[:2, c > 0], maps[:2, c > 0])


def test_an_image_without_objects_falls_back_to_the_maps_regions():
    # a flat image (every superpixel owns the border: no objects) gives what the maps alone give
    a, b = _blob(2, 2), _blob(10, 10)
    both = np.maximum(a, b)
    maps = np.stack([both, both, 1.0 - both])
    flat = np.full((64, 64, 3), 128, np.uint8)
    np.testing.assert_array_equal(assign_regions(maps, [0, 1], 0.5, image_parts(flat, 16)), assign_regions(maps, [0, 1], 0.5))


def test_stay_keeps_each_token_on_the_object_its_last_mask_covered():
    a, b = _blob(2, 2), _blob(10, 10)
    both = np.maximum(a, b)
    maps = np.stack([both * 0.9 + a * 0.1, both, 1.0 - both])  # token 0 leans a little towards a
    rgb = _image(a, b)
    last = [np.kron(b, np.ones((4, 4))) > 0, np.kron(a, np.ones((4, 4))) > 0]  # token 0 held b, token 1 held a
    moved = _masks(rgb, assign_regions(maps, [0, 1], 0.5, image_parts(rgb, 16), previous=last, stay=0.0))
    assert _on(moved[0], a) > 0.9  # without the pull the slight lean decides: the tokens trade objects
    kept = _masks(rgb, assign_regions(maps, [0, 1], 0.5, image_parts(rgb, 16), previous=last, stay=0.3))
    assert _on(kept[0], b) > 0.9 and _on(kept[1], a) > 0.9 and _on(kept[0], a) == 0


def _half_ground_coloured_object_beside_another(size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Brown ground, pixel noise: object A (24x24 px, its left half white, its right half orange,
    near the ground's colour) and object B (purple) apart from it; the pixel masks of A, A's
    white half and B."""
    a = np.zeros((size, size), bool)
    a[16:40, 8:32] = True
    white = np.zeros_like(a)
    white[16:40, 8:20] = True
    b = np.zeros_like(a)
    b[20:44, 40:56] = True
    rgb = np.full((size, size, 3), (120.0, 70.0, 30.0))
    rgb[a] = (240, 140, 30)
    rgb[white] = (235, 235, 235)
    rgb[b] = (150, 50, 200)
    return with_pixel_noise(rgb), a, white, b


@pytest.mark.parametrize("clear_background", [False, True])
def test_an_object_taken_whole_keeps_the_half_whose_colour_is_the_grounds(clear_background):
    # A's map is strong on its white half and weak on its orange half, where the background's
    # map is high: only with the background cleared on the objects the concepts took does A's
    # mask cover A whole
    rgb, a, white, b = _half_ground_coloured_object_beside_another()
    cells = lambda m: m.reshape(16, 4, 16, 4).mean(axis=(1, 3)).astype(np.float32)  # noqa: E731
    maps = np.stack([np.maximum(cells(white), 0.3 * cells(a)), cells(b), 1.0 - np.maximum(cells(white), cells(b))])
    backgrounds = [2] if clear_background else None
    masks = _masks(rgb, assign_regions(maps, [0, 1], 0.5, image_parts(rgb, 16), backgrounds=backgrounds))
    share = lambda m, obj: float((m & obj).sum() / obj.sum())  # noqa: E731
    assert share(masks[1], b) > 0.95
    if clear_background:
        assert share(masks[0], a) > 0.95 and share(masks[2], a) < 0.05
    else:
        assert share(masks[0], a) < 0.6 and share(masks[2], a) > 0.4


def test_an_object_taken_whole_is_its_concepts_even_where_its_map_is_silent():
    # A's map is zero on its orange half (as a later error pass can leave it): the object the
    # concept took is raised to the foreground level over all of it, so its mask covers A whole
    rgb, a, white, b = _half_ground_coloured_object_beside_another()
    cells = lambda m: m.reshape(16, 4, 16, 4).mean(axis=(1, 3)).astype(np.float32)  # noqa: E731
    maps = np.stack([cells(white), cells(b), 1.0 - np.maximum(cells(white), cells(b))])
    parts = image_parts(rgb, 16)
    out = assign_regions(maps, [0, 1], 0.5, parts, backgrounds=[2])
    region = next(p for p in parts if (p & (cells(a) > 0.5)).any())
    assert (out[0][region] >= 0.5).all()
    masks = _masks(rgb, out)
    assert float((masks[0] & a).sum() / a.sum()) > 0.95


def test_a_background_that_lost_the_images_ground_gets_it_back():
    # the background's map is zero on the plain ground (leaving "background" out of the prompt
    # changes little where the ground is flat) and one object's map spills over it: the
    # object's mask takes the ground until the background's map is raised there
    rgb, a, white, b = _half_ground_coloured_object_beside_another()
    cells = lambda m: m.reshape(16, 4, 16, 4).mean(axis=(1, 3)).astype(np.float32)  # noqa: E731
    ground = ~(a | b)
    maps = np.stack([np.maximum(cells(a), 0.05 * cells(ground)), cells(b), 0.2 * cells(a)])
    parts = image_parts(rgb, 16)
    drawn = assign_regions(maps, [0, 1], 0.5, parts, backgrounds=[2])
    share = lambda m, obj: float((m & obj).sum() / obj.sum())  # noqa: E731
    before = _masks(rgb, drawn)
    assert share(before[2], ground) < 0.5
    raised = raise_lost_ground(drawn, before, parts, [2], 0.5)
    off_objects = ~np.logical_or.reduce(parts)
    assert (raised[2][off_objects] >= 0.5).all() and np.array_equal(raised[:2], drawn[:2])
    after = _masks(rgb, raised)
    assert share(after[2], ground) > 0.95 and share(after[0], ground) < 0.05 and share(after[0], a) > 0.95
    # a background that kept its ground is left alone
    assert raise_lost_ground(raised, after, parts, [2], 0.5) is None
    assert raise_lost_ground(drawn, before, [], [2], 0.5) is None


def test_backgrounds_keep_their_maps_when_the_regions_come_from_the_maps():
    a, b = _blob(2, 2), _blob(10, 10)
    maps = np.stack([a, b, np.ones_like(a)])
    out = assign_regions(maps, [0, 1], 0.5, backgrounds=[2])
    assert np.array_equal(out[2], maps[2])


def test_a_region_goes_to_the_concept_that_explains_it_best_not_to_the_one_whose_mass_lies_there():
    # both concepts fire most on the small object Y; A also fires on the large object X more than
    # B does, and spreads over the background.  Most of B's map mass lies on X (it is large), so
    # scoring by a map's share of mass would hand X to B; by the share of each region's evidence,
    # A explains X (0.5 vs 0.2) and B gets Y
    x, y = _blob(1, 1, side=6) > 0, _blob(11, 11, side=2) > 0
    rest = ~(x | y)
    a = 0.5 * x + 1.0 * y + 0.4 * rest
    b = 0.2 * x + 0.8 * y
    scores = region_scores(np.stack([a, b]), [x, y])
    assert np.allclose(scores.sum(axis=0), 1.0, atol=2e-3) and scores[0, 0] == pytest.approx(0.5 / 0.7, abs=2e-3)
    assert assign(np.stack([a, b]), [x, y], leftovers_join=False) == [0, 1]
    assert assign(np.stack([a, b]), [x, y], leftovers_join=False, score="mass") == [1, 0]


def test_the_built_in_model_scores_regions_by_evidence_explained_and_sd_by_mass():
    from conceptforge.engine.config import resolve_config

    assert resolve_config(True, {}, {}).assignment_score == "explained"
    assert resolve_config(False, {}, {}).assignment_score == "mass"
