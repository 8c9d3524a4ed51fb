"""The deterministic recogniser of the shapes world."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conceptforge.shapes.recognise import Reading, background_is, contains, recognise
from conceptforge.shapes.world import COLORS, SIZE, Scene, sample_scene, shape_mask


def _reads_exactly(scene: Scene, reading: Reading) -> bool:
    """Every object found with its colours and shape, nothing extra, and the right background."""
    found = all(contains(reading, o.colors, o.shape) for o in scene.objects)
    return found and len(reading.objects) == len(scene.objects) and background_is(reading, scene.background_colors)


def _painted(background: tuple[str, ...], objects: list[tuple[str, str, float, float, float]]) -> np.ndarray:
    """A noiseless image: background colours (ground, then sky above row 30) and one-colour shapes."""
    canvas = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    canvas[:] = COLORS[background[0]]
    if len(background) == 2:
        canvas[:30] = COLORS[background[1]]
    for color, shape, cx, cy, r in objects:
        canvas[shape_mask(shape, cx, cy, r)] = COLORS[color]
    return canvas


def test_single_object_scenes_are_read_exactly():
    scenes = [sample_scene(seed, n_objects=1) for seed in range(500_000, 500_100)]
    accuracy = np.mean([_reads_exactly(s, recognise(s.image)) for s in scenes])
    assert accuracy >= 0.98


def test_two_tone_object_and_background():
    scene = next(
        s for seed in range(500_000, 500_200) if (s := sample_scene(seed, n_objects=1)).objects[0].second_color and s.background_second
    )
    reading = recognise(scene.image)
    obj = scene.objects[0]
    assert contains(reading, obj.colors, obj.shape)
    assert contains(reading, obj.colors[::-1], obj.shape)  # colour order does not matter
    assert not contains(reading, [obj.color], obj.shape)  # one colour of a two-tone object is not the object
    assert background_is(reading, scene.background_colors)
    assert not background_is(reading, scene.background_colors[::-1])  # ground first, then sky
    assert reading.objects[0].mask.shape == (SIZE, SIZE)
    assert (reading.objects[0].mask & obj.mask).sum() / (reading.objects[0].mask | obj.mask).sum() > 0.9


def test_contains_and_background_is():
    reading = recognise(Image.fromarray(_painted(("blue",), [("red", "circle", 20, 20, 10), ("yellow", "star", 44, 42, 13)])))
    assert reading.background == ["blue"]
    assert background_is(reading, ["blue"]) and not background_is(reading, ["red"])
    assert not background_is(reading, ["blue", "white"])
    assert contains(reading, ["red"], "circle") and contains(reading, ["yellow"], "star")
    assert contains(reading, ["red"], None) and contains(reading, ["yellow"])
    assert not contains(reading, ["red"], "star")
    assert not contains(reading, ["green"], None)
    assert not contains(reading, ["red", "yellow"], None)


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "star", "heart", "cross"])
def test_each_shape_on_a_two_tone_background(shape):
    reading = recognise(_painted(("green", "cyan"), [("purple", shape, 32, 32, 12)]))
    assert reading.background == ["green", "cyan"]
    assert [(o.colors, o.shape) for o in reading.objects] == [(["purple"], shape)]


@pytest.mark.parametrize("color", ["white", "black", "gray"])
def test_blank_image_has_no_objects(color):
    reading = recognise(Image.new("RGB", (SIZE, SIZE), COLORS[color]))
    assert reading.objects == []
    assert reading.background == [color]


def test_off_palette_blank_image_has_no_objects():
    reading = recognise(np.full((SIZE, SIZE, 3), (0, 255, 0), dtype=np.uint8))
    assert reading.objects == []
    assert len(reading.background) == 1


def test_concept_score_gives_partial_credit():
    from conceptforge.engine.evaluate import ConceptIdentity, concept_score

    reading = recognise(Image.fromarray(_painted(("green", "blue"), [("red", "star", 32, 40, 12)])))
    obj = lambda colors, shape: concept_score(reading, ConceptIdentity("<o>", False, colors, shape))  # noqa: E731
    assert obj(["red"], "star") == 1.0
    assert obj(["red"], "circle") == 0.5 and obj(["yellow"], "star") == 0.5
    assert obj(["yellow"], "circle") == 0.0
    bg = lambda colors: concept_score(reading, ConceptIdentity("<bg>", True, colors, None))  # noqa: E731
    assert bg(["green", "blue"]) == 1.0 and bg(["green"]) == 0.5 and bg(["pink"]) == 0.0
