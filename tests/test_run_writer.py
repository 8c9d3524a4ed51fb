"""The run writer's mask files: an image whose masks an E-step kept gets the
last E-step's files again without re-encoding them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from conceptforge.engine import masks as mask_ops
from conceptforge.engine.data import ImageData
from conceptforge.engine.estep import EStepResult
from conceptforge.engine.run_writer import RunWriter
from conceptforge.engine.runs import RunDir

SIDE = 16


def image(tmp_path, stem: str, color: tuple[int, int, int]) -> tuple[ImageData, object]:
    path = tmp_path / f"{stem}.png"
    Image.new("RGB", (32, 24), color).save(path)
    data = ImageData(stem, path.name, ["<a>", "<bg>"], [False, True], ["dog", None], np.zeros((SIDE, SIDE, 3), np.uint8), (32, 24), {}, [None, None])
    return data, path


def result(iteration: int, masks: dict, soft: dict) -> EStepResult:
    return EStepResult(iteration, masks, soft)


def square(lo: int) -> np.ndarray:
    m = np.zeros((SIDE, SIDE), bool)
    m[lo : lo + 6, lo : lo + 6] = True
    return m


def test_an_image_whose_masks_were_kept_gets_the_last_files_linked_and_a_changed_one_is_written(tmp_path):
    (kept, kept_path), (moved, moved_path) = image(tmp_path, "kept", (200, 10, 10)), image(tmp_path, "moved", (10, 10, 200))
    run = RunDir(tmp_path / "runs" / "r1")
    writer = RunWriter(run, [kept, moved], [kept_path, moved_path])
    soft = np.full((SIDE, SIDE), 0.25, np.float32)
    first = {(0, "<a>"): square(2), (0, "<bg>"): ~square(2), (1, "<a>"): square(2), (1, "<bg>"): ~square(2)}
    writer.write_masks(result(0, first, {k: soft for k in first}))
    second = dict(first) | {(1, "<a>"): square(8), (1, "<bg>"): ~square(8)}
    writer.write_masks(result(1, second, {k: soft for k in second}))

    before, after = run.iteration_dir(0), run.iteration_dir(1)
    for name in ("a.png", "a_attn.png", "bg.png", "bg_attn.png", "overlay.png"):
        assert (after / "kept" / name).samefile(before / "kept" / name), name
        assert not (after / "moved" / name).samefile(before / "moved" / name), name
    assert np.array_equal(mask_ops.load_mask_png(after / "moved" / "a.png"), mask_ops.resize_mask(square(8), 24, 32))
    assert np.array_equal(mask_ops.load_mask_png(after / "kept" / "a.png"), mask_ops.resize_mask(square(2), 24, 32))
    assert not list(after.rglob("*.tmp"))


def test_a_soft_map_that_changed_alone_is_written_anew(tmp_path):
    data, path = image(tmp_path, "one", (0, 120, 0))
    run = RunDir(tmp_path / "runs" / "r1")
    writer = RunWriter(run, [data], [path])
    masks = {(0, "<a>"): square(2), (0, "<bg>"): ~square(2)}
    writer.write_masks(result(0, masks, {k: np.full((SIDE, SIDE), 0.25, np.float32) for k in masks}))
    writer.write_masks(result(1, masks, {k: np.full((SIDE, SIDE), 0.75, np.float32) for k in masks}))
    attn = run.iteration_dir(1) / "one" / "a_attn.png"
    assert not attn.samefile(run.iteration_dir(0) / "one" / "a_attn.png")
    assert np.asarray(Image.open(attn)).max() == round(0.75 * 255)
