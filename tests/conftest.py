from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CONCEPTFORGE_THREADS", "1")  # tiny models: threads only add overhead

import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads only add overhead

from tiny_models import build_tiny_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd15")


@pytest.fixture(scope="session")
def tiny_model_sd21(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("models21") / "tiny-sd21", flavor="sd21")


def draw_scene(path: Path, seed: int, size: int = 32) -> tuple[Path, list[Path]]:
    """A flat background with two rectangles; returns the image and their masks."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[:] = rng.integers(0, 255, 3)
    masks = []
    for k, (y, x) in enumerate([(4, 4), (16, 18)]):
        m = np.zeros((size, size), dtype=bool)
        m[y : y + 10, x : x + 10] = True
        img[m] = rng.integers(0, 255, 3)
        mp = path.parent / f"{path.stem}_mask{k}.png"
        Image.fromarray((m * 255).astype(np.uint8)).save(mp)
        masks.append(mp)
    Image.fromarray(img).save(path)
    return path, masks


@pytest.fixture
def scene_files(tmp_path) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    a, (a0, a1) = draw_scene(src / "first.png", 1)
    b, (b0, b1) = draw_scene(src / "second.png", 2)
    return {"a": a, "a0": a0, "a1": a1, "b": b, "b0": b0, "b1": b1}
