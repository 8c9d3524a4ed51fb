"""Tests of conceptforge.engine.masks: refinement, IoU, PNG I/O and pictures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conceptforge.engine.masks import (
    MaskSizeError,
    contact_sheet,
    iou,
    load_mask_png,
    overlay,
    refine_masks,
    resize_mask,
    save_mask_png,
    save_soft_png,
)

SIZE = 64


def _two_shapes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 64×64 image of a red square and a blue disc on a grey background, and their masks."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    square = (xs >= 8) & (xs < 28) & (ys >= 10) & (ys < 34)
    disc = (xs - 44) ** 2 + (ys - 42) ** 2 <= 12**2
    image = np.full((SIZE, SIZE, 3), (128, 128, 128), np.uint8)
    image[square] = (215, 40, 40)
    image[disc] = (40, 70, 215)
    return image, square, disc


def _coarse(mask: np.ndarray, grid: int = 16) -> np.ndarray:
    """An attention-like map: area pooling to grid×grid, then a 3×3 box blur."""
    pooled = mask.reshape(grid, mask.shape[0] // grid, grid, mask.shape[1] // grid).mean(axis=(1, 3))
    padded = np.pad(pooled, 1, mode="edge")
    return sum(padded[dy : dy + grid, dx : dx + grid] for dy in range(3) for dx in range(3)) / 9.0


@pytest.fixture
def scene() -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    image, square, disc = _two_shapes()
    return image, [square, disc], np.stack([_coarse(square), _coarse(disc)])


# --------------------------------------------------------------------------- refine_masks


def test_refine_recovers_flat_shapes_from_coarse_maps(scene) -> None:
    image, truth, maps = scene
    masks = refine_masks(image, maps)
    assert all(iou(m, t) > 0.9 for m, t in zip(masks, truth))


def test_crf_beats_plain_threshold(scene) -> None:
    image, truth, maps = scene
    before = np.mean([iou(m, t) for m, t in zip(refine_masks(image, maps, use_crf=False), truth)])
    after = np.mean([iou(m, t) for m, t in zip(refine_masks(image, maps), truth)])
    assert after > before


@pytest.mark.parametrize("use_crf", [True, False])
def test_output_shape_and_dtype_follow_the_image(use_crf: bool) -> None:
    image = np.zeros((48, 80, 3), np.uint8)
    image[:, 40:] = 255
    maps = np.zeros((2, 6, 10), np.float32)
    maps[0, :, :5], maps[1, :, 5:] = 1.0, 0.8
    masks = refine_masks(image, maps, use_crf=use_crf)
    assert masks.shape == (2, 48, 80) and masks.dtype == bool
    assert masks[0, :, :40].mean() > 0.9 and masks[1, :, 40:].mean() > 0.9


def test_without_crf_masks_are_thresholded_and_disjoint() -> None:
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    maps = np.zeros((2, 16, 16), np.float32)
    maps[0, 2:10, 2:10] = 1.0
    maps[1, 6:14, 6:14] = 1.0
    maps[1, 6:10, 6:10] = 0.6  # overlap: both pass, map 0 is larger there
    masks = refine_masks(image, maps, use_crf=False)
    assert not (masks[0] & masks[1]).any()
    assert masks[0, 30, 30] and not masks[1, 30, 30]
    assert not masks.any(axis=0)[0, 63]  # below threshold everywhere: no concept


def test_threshold_controls_the_coarse_masks() -> None:
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    maps = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (1, 16, 1))
    low = refine_masks(image, maps, threshold=0.2, use_crf=False)
    high = refine_masks(image, maps, threshold=0.8, use_crf=False)
    assert low.sum() > high.sum() > 0


def test_threshold_controls_the_crf_masks() -> None:
    image = np.full((SIZE, SIZE, 3), 128, np.uint8)  # no edges: the maps alone decide
    maps = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (1, 16, 1))
    low = refine_masks(image, maps, threshold=0.3)
    high = refine_masks(image, maps, threshold=0.7)
    assert low.sum() > high.sum() > 0


def _degraded(mask: np.ndarray, rng: np.random.Generator, blur: float = 2.0, noise: float = 0.2) -> np.ndarray:
    """An attention-like 16×16 map of a mask: area pooling, a Gaussian blur of `blur` cells, additive noise."""
    from scipy.ndimage import gaussian_filter

    pooled = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((16, 16), Image.BOX))
    return np.clip(gaussian_filter(pooled, blur, mode="nearest") + rng.normal(0.0, noise, pooled.shape), 0.0, 1.0)


def test_refine_recovers_shapes_world_objects_from_strongly_degraded_maps() -> None:
    from conceptforge.shapes.world import sample_scene

    rng = np.random.default_rng(0)
    ious = []
    for seed in range(12):
        scene = sample_scene(seed)
        truth = [o.mask for o in scene.objects]
        masks = refine_masks(np.asarray(scene.image.convert("RGB")), np.stack([_degraded(t, rng) for t in truth]))
        ious += [iou(m, t) for m, t in zip(masks, truth)]
    assert np.mean(ious) >= 0.9  # without the colour model in the unary 0.81, without the 16 px bilateral floor 0.89


def test_has_background_labels_every_pixel(scene) -> None:
    image, truth, maps = scene
    background = ~(truth[0] | truth[1])
    with_background = refine_masks(image, np.concatenate([maps, _coarse(background)[None]]), has_background=True)
    assert with_background.any(axis=0).all()
    assert iou(with_background[2], background) > 0.9


def test_without_background_a_rest_label_keeps_pixels_unassigned(scene) -> None:
    image, truth, maps = scene
    masks = refine_masks(image, maps, has_background=False)
    background = ~(truth[0] | truth[1])
    assert not masks.any(axis=0)[background].any()


def test_masks_are_disjoint_with_crf(scene) -> None:
    image, _, maps = scene
    assert refine_masks(image, maps).sum(axis=0).max() <= 1


@pytest.mark.parametrize("use_crf", [True, False])
def test_every_non_zero_map_gets_a_non_empty_mask(scene, use_crf: bool) -> None:
    image, _, maps = scene
    dominated = 0.5 * maps[0]  # after max-normalisation a tie with map 0, which wins every pixel
    tiny = np.zeros((16, 16), np.float32)
    tiny[15, 0] = 0.01  # a single weak cell in a flat background corner
    masks = refine_masks(image, np.stack([maps[0], maps[1], dominated, tiny]), use_crf=use_crf)
    assert masks.reshape(4, -1).any(axis=1).all()


def test_all_zero_map_gives_empty_mask(scene) -> None:
    image, _, maps = scene
    masks = refine_masks(image, np.concatenate([maps, np.zeros((1, 16, 16), np.float32)]))
    assert not masks[2].any() and masks[0].any() and masks[1].any()


def test_no_maps_gives_no_masks() -> None:
    assert refine_masks(np.zeros((8, 8, 3), np.uint8), np.zeros((0, 4, 4))).shape == (0, 8, 8)


@pytest.mark.parametrize(
    "image, maps, threshold",
    [
        (np.zeros((8, 8), np.uint8), np.zeros((1, 4, 4)), 0.5),
        (np.zeros((8, 8, 3), np.float32), np.zeros((1, 4, 4)), 0.5),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4)), 0.5),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 4, 4)), 1.5),
    ],
)
def test_bad_inputs_raise(image: np.ndarray, maps: np.ndarray, threshold: float) -> None:
    with pytest.raises(ValueError):
        refine_masks(image, maps, threshold=threshold)


# --------------------------------------------------------------------------- iou, resize_mask


def test_iou() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert iou(a, b) == 1.0
    a[:2] = True
    assert iou(a, b) == 0.0
    b[1:3] = True
    assert iou(a, b) == pytest.approx(1 / 3)
    assert iou(a, a) == 1.0
    with pytest.raises(ValueError):
        iou(a, np.zeros((2, 2), bool))


def test_resize_mask_is_nearest() -> None:
    mask = np.array([[True, False], [False, True]])
    big = resize_mask(mask, 4, 6)
    assert big.shape == (4, 6) and big.dtype == bool
    assert big[:2, :3].all() and not big[:2, 3:].any() and big[2:, 3:].all()


# --------------------------------------------------------------------------- PNG I/O


def test_mask_png_round_trip(tmp_path) -> None:
    mask = np.zeros((10, 20), bool)
    mask[2:5, 3:17] = True
    path = tmp_path / "sub" / "mask.png"
    save_mask_png(mask, path)
    with Image.open(path) as img:
        assert img.mode == "L" and img.size == (20, 10)
        assert set(np.unique(np.asarray(img))) == {0, 255}
    np.testing.assert_array_equal(load_mask_png(path, size=(20, 10)), mask)
    assert [p.name for p in path.parent.iterdir()] == ["mask.png"]  # no temp file left


def test_save_overwrites_atomically(tmp_path) -> None:
    path = tmp_path / "mask.png"
    save_mask_png(np.zeros((4, 4), bool), path)
    save_mask_png(np.ones((4, 4), bool), path)
    assert load_mask_png(path).all()
    assert len(list(tmp_path.iterdir())) == 1


def test_load_mask_png_reads_white_on_rgba(tmp_path) -> None:
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:3, :, :3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "mask0.png")
    mask = load_mask_png(tmp_path / "mask0.png")
    assert mask[:3].all() and not mask[3:].any()


def test_load_mask_png_size_mismatch_names_file_and_sizes(tmp_path) -> None:
    path = tmp_path / "person.png"
    save_mask_png(np.zeros((10, 20), bool), path)
    with pytest.raises(MaskSizeError) as info:
        load_mask_png(path, size=(64, 32))
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "person.png" in message and "20x10" in message and "64x32" in message
    assert message.count(".") - message.count(".png") == 1  # one sentence


def test_save_soft_png_scales_and_upsamples(tmp_path) -> None:
    soft = np.array([[0.0, 1.0], [0.5, 2.0]], np.float32)
    save_soft_png(soft, tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), [[0, 255], [128, 255]])
    save_soft_png(soft, tmp_path / "b.png", size=(32, 16))
    with Image.open(tmp_path / "b.png") as img:
        assert img.size == (32, 16)


# --------------------------------------------------------------------------- pictures


def test_overlay_tints_each_mask_a_distinct_colour() -> None:
    image = Image.new("RGB", (32, 32), (100, 100, 100))
    a = np.zeros((32, 32), bool)
    a[:8] = True
    b = np.zeros((8, 8), bool)  # a coarse mask is resized to the image
    b[6:] = True
    out = overlay(image, [a, b])
    pixels = np.asarray(out)
    assert out.size == (32, 32) and out.mode == "RGB"
    assert tuple(pixels[0, 0]) != (100, 100, 100) and tuple(pixels[31, 0]) != (100, 100, 100)
    assert tuple(pixels[0, 0]) != tuple(pixels[31, 0])
    assert tuple(pixels[16, 0]) == (100, 100, 100)


def test_contact_sheet_sizes() -> None:
    rows = [[Image.new("RGB", (64, 64))] * 3, [Image.new("L", (20, 30))] * 2]
    plain = contact_sheet(rows, cell=40)
    assert plain.size == (120, 80)
    labelled = contact_sheet(rows, labels=["<c1>", "<background>"], cell=40)
    assert labelled.size[1] == 80 and labelled.size[0] > 120
    assert np.asarray(labelled)[:, : labelled.size[0] - 120].min() < 255  # labels are drawn
    with pytest.raises(ValueError):
        contact_sheet(rows, labels=["only one"])


# --------------------------------------------------------------------------- denoising the maps before the CRF


def test_map_noise_reads_the_noise_of_a_map_not_its_level_or_scale() -> None:
    from conceptforge.engine.masks import map_noise

    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0.0, 1.0, 16, dtype=np.float32), (16, 1))
    assert map_noise(ramp) < 0.1  # a smooth map: its steps are its slope, 1/15
    assert map_noise(np.zeros((16, 16), np.float32)) == 0.0
    noisy = (0.5 + rng.normal(0.0, 0.2, (32, 32))).astype(np.float32)
    noisy /= noisy.max()
    assert 0.15 <= map_noise(noisy) <= 0.25
    assert map_noise(noisy * 3.0) == pytest.approx(map_noise(noisy), rel=1e-5)  # in units of the map's max


def test_denoise_keeps_clean_maps_and_smooths_speckled_ones(scene) -> None:
    from conceptforge.engine.masks import denoise_maps

    _, _, clean = scene
    assert np.abs(denoise_maps(clean) - clean).max() < 0.05
    rng = np.random.default_rng(1)
    speckled = np.clip(clean + rng.normal(0.0, 0.3, clean.shape), 0.0, 1.0).astype(np.float32)
    error_before = np.mean((speckled - clean) ** 2)
    assert np.mean((denoise_maps(speckled) - clean) ** 2) < 0.8 * error_before  # 0.73 (clipping biases the noise, which no blur removes)


def test_denoising_helps_the_crf_on_speckled_maps(monkeypatch) -> None:
    from conceptforge.engine import masks as mask_ops
    from conceptforge.shapes.world import sample_scene

    rng = np.random.default_rng(2)
    gains = []
    for seed in range(8):
        scene = sample_scene(seed)
        image, truth = np.asarray(scene.image.convert("RGB")), [o.mask for o in scene.objects]
        maps = np.stack([_degraded(t, rng, blur=2.0, noise=0.3) for t in truth]).astype(np.float32)
        with_denoising = np.mean([iou(m, t) for m, t in zip(refine_masks(image, maps), truth)])
        with monkeypatch.context() as patch:
            patch.setattr(mask_ops, "MAP_SMOOTHING", 0.0)
            without = np.mean([iou(m, t) for m, t in zip(refine_masks(image, maps), truth)])
        gains.append(with_denoising - without)
    assert np.mean(gains) > 0.02
