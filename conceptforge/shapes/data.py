"""Training batches of the built-in world: images, captions and attention targets."""

from __future__ import annotations

import numpy as np
import torch

from .world import COLORS, Scene, sample_scene

TRAIN_SEED_BASE = 1_000_000  # training scenes use seeds from here; lower seeds are held out
MAX_TRACKED = 12  # caption words with a region: 3 objects x 3 words + 3 background words


def image_tensor(image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def pooled_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Area-average a boolean H x W mask down to size x size."""
    h, w = mask.shape
    return mask.reshape(size, h // size, size, w // size).mean(axis=(1, 3)).astype(np.float32)


def attention_targets(scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token positions, region masks (size x size) and validity of the caption words that name a region."""
    index = np.zeros(MAX_TRACKED, dtype=np.int64)
    target = np.zeros((MAX_TRACKED, size, size), dtype=np.float32)
    valid = np.zeros(MAX_TRACKED, dtype=np.float32)
    k = 0
    for word_pos, owner in enumerate(scene.word_owners):
        if owner is None:
            continue
        region = scene.background_mask if owner == -1 else scene.objects[owner].mask
        index[k] = word_pos + 1  # +1 for the start token
        target[k] = pooled_mask(region, size)
        valid[k] = 1.0
        k += 1
    return index, target, valid


def scene_seeds(n: int, base: int = TRAIN_SEED_BASE) -> list[int]:
    return list(range(base, base + n))


def render(seeds: list[int]) -> list[Scene]:
    return [sample_scene(s) for s in seeds]


def drop_color_words(
    caption: str, index: np.ndarray, valid: np.ndarray, p: float, rng: np.random.Generator
) -> tuple[str, np.ndarray, np.ndarray]:
    """The caption with each run of colour words dropped with probability p
    ("a red blue star on a green background" -> "a star on a background"),
    and its tracked token positions moved to match; dropped words' targets
    become invalid.  Without it the model only ever sees a noun after its
    colours, and a bare "star" (a new concept's init word) does not localise.
    """
    words = caption.split()
    keep = np.ones(len(words), dtype=bool)
    i = 0
    while i < len(words):
        if words[i] in COLORS:
            j = i
            while j < len(words) and words[j] in COLORS:
                j += 1
            if rng.random() < p:
                keep[i:j] = False
            i = j
        else:
            i += 1
    if keep.all():
        return caption, index, valid
    shift = np.concatenate([[0], np.cumsum(~keep)])  # words dropped before each position
    index, valid = index.copy(), valid.copy()
    for k in range(len(index)):
        if valid[k] == 0:
            continue
        word = index[k] - 1  # -1 for the start token
        if keep[word]:
            index[k] -= shift[word]
        else:
            valid[k], index[k] = 0.0, 0
    return " ".join(w for w, kept in zip(words, keep) if kept), index, valid
