"""The built-in procedural world: coloured shapes on coloured backgrounds.

Every scene is deterministic in its seed and carries exact per-object masks, so
mask quality can be measured exactly.  Some objects and backgrounds are two-tone
so that colour alone does not segment a concept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 25),
    "yellow": (240, 220, 45),
    "green": (40, 165, 60),
    "cyan": (45, 205, 215),
    "blue": (40, 70, 215),
    "purple": (125, 45, 175),
    "pink": (245, 150, 200),
    "brown": (125, 75, 35),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (25, 25, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
GENERIC_NOUNS: tuple[str, ...] = ("shape", "object")
FILLER_WORDS: tuple[str, ...] = ("a", "and", "on", "background")


@dataclass
class SceneObject:
    """One object of a scene: its colour words, shape, and visible-pixel mask."""

    color: str
    shape: str
    mask: np.ndarray
    second_color: str | None = None
    noun: str = ""

    @property
    def colors(self) -> list[str]:
        return [self.color] + ([self.second_color] if self.second_color else [])

    @property
    def words(self) -> list[str]:
        return self.colors + [self.noun or self.shape]


@dataclass
class Scene:
    """A rendered scene with its caption and exact masks."""

    image: Image.Image
    caption: str
    objects: list[SceneObject]
    background: str
    background_mask: np.ndarray
    background_second: str | None = None
    # caption word index -> owner: object index, -1 for the background, None for fillers
    word_owners: list[int | None] = field(default_factory=list)

    @property
    def background_colors(self) -> list[str]:
        return [self.background] + ([self.background_second] if self.background_second else [])


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int = SIZE) -> np.ndarray:
    """Boolean mask of a shape of radius r centred at (cx, cy)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=255)
    return np.asarray(canvas) > 127


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts
    if shape == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((cx + x * r / 17, cy + (y + 2) * r / 17))
        return pts
    if shape == "cross":
        a, b = r, r * 0.36
        return [
            (cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b),
            (cx + a, cy + b), (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a),
            (cx - b, cy + b), (cx - a, cy + b), (cx - a, cy - b), (cx - b, cy - b),
        ]
    raise ValueError(f"unknown shape {shape!r}")


def _split_mask(rng: np.random.Generator, cx: float, cy: float, size: int = SIZE) -> np.ndarray:
    """Half-plane through (cx, cy) at a random angle: True on one side."""
    ang = rng.uniform(0, math.pi)
    ys, xs = np.mgrid[0:size, 0:size]
    return (xs - cx) * math.cos(ang) + (ys - cy) * math.sin(ang) > 0


def _pick_colors(rng: np.random.Generator, n: int, exclude: set[str]) -> list[str]:
    names = [c for c in COLORS if c not in exclude]
    return [str(c) for c in rng.choice(names, size=n, replace=False)]


def sample_scene(
    seed: int,
    n_objects: int | None = None,
    two_tone_objects: float = 0.25,
    two_tone_background: float = 0.3,
    generic_nouns: float = 0.12,
) -> Scene:
    """Render the scene of a seed: a background and 1-3 shapes with exact masks."""
    rng = np.random.default_rng(seed)
    n = int(n_objects) if n_objects is not None else int(rng.integers(1, 4))
    if not 0 <= n <= 3:
        raise ValueError("n_objects must be between 0 and 3")
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]

    bg = _pick_colors(rng, 1, set())[0]
    bg2 = _pick_colors(rng, 1, {bg})[0] if rng.random() < two_tone_background else None
    canvas = np.zeros((SIZE, SIZE, 3), dtype=np.float32)
    canvas[:] = COLORS[bg]
    if bg2:  # first colour is the ground (bottom), second the sky (top)
        horizon = int(rng.integers(22, 44))
        canvas[:horizon] = COLORS[bg2]

    owner = np.full((SIZE, SIZE), -1, dtype=np.int64)
    objects: list[SceneObject] = []
    used = {bg} | ({bg2} if bg2 else set())
    for i in range(n):
        for _attempt in range(40):
            shape = str(rng.choice(SHAPES))
            r = float(rng.uniform(8, 15))
            cx, cy = rng.uniform(r, SIZE - r, size=2)
            full = shape_mask(shape, cx, cy, r)
            visible_before = [(owner == j) & ~full for j in range(i)]
            # every earlier object keeps at least 70% of its visible area
            if all(vb.sum() >= 0.7 * (owner == j).sum() for j, vb in enumerate(visible_before)):
                break
        two = rng.random() < two_tone_objects
        cols = _pick_colors(rng, 2 if two else 1, used)
        used |= set(cols)
        obj = SceneObject(color=cols[0], shape=shape, mask=full, second_color=cols[1] if two else None)
        if rng.random() < generic_nouns:
            obj.noun = str(rng.choice(GENERIC_NOUNS))
        if two:
            side = _split_mask(rng, cx, cy)
            canvas[full & side] = COLORS[cols[0]]
            canvas[full & ~side] = COLORS[cols[1]]
        else:
            canvas[full] = COLORS[cols[0]]
        owner[full] = i
        objects.append(obj)
    for i, obj in enumerate(objects):
        obj.mask = owner == i

    noise = rng.normal(0.0, 4.0, size=canvas.shape)
    image = Image.fromarray(np.clip(canvas + noise, 0, 255).astype(np.uint8), "RGB")
    words, owners = caption_words(objects, [bg] + ([bg2] if bg2 else []))
    return Scene(
        image=image,
        caption=" ".join(words),
        objects=objects,
        background=bg,
        background_mask=owner == -1,
        background_second=bg2,
        word_owners=owners,
    )


def caption_words(objects: list[SceneObject], background_colors: list[str]) -> tuple[list[str], list[int | None]]:
    """Caption words and, per word, which object (-1: background) it names."""
    words: list[str] = []
    owners: list[int | None] = []
    for i, obj in enumerate(objects):
        if i:
            words.append("and")
            owners.append(None)
        words.append("a")
        owners.append(None)
        for w in obj.words:
            words.append(w)
            owners.append(i)
    if objects:
        words.append("on")
        owners.append(None)
    words.append("a")
    owners.append(None)
    for w in background_colors + ["background"]:
        words.append(w)
        owners.append(-1)
    return words, owners


def vocabulary() -> list[str]:
    """Every word of the world's captions."""
    return list(COLORS) + list(SHAPES) + list(GENERIC_NOUNS) + list(FILLER_WORDS)
