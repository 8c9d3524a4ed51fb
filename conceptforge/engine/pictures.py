"""Pictures of masks for people: tints, outlines in a contrasting colour,
heat maps of soft maps, thumbnails and labelled contact sheets (PIL + numpy)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# zlib level of the PNGs a run writes at every E-step (masks, soft maps, overlays, the
# report's thumbnails): level 1 encodes about 3.5x faster than Pillow's default 6, for
# files about 15% larger (a 128 px thumbnail: 3.2 ms vs 11.7 ms).
RUN_PNG_LEVEL = 1

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (145, 30, 180),
    (245, 130, 48),
    (70, 240, 240),
    (240, 50, 230),
    (128, 128, 0),
    (0, 0, 128),
)

# Candidate outline colours: saturated or extreme, so one of them stands out on any image.
OUTLINE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 255),
    (0, 255, 255),
    (255, 255, 0),
    (0, 255, 0),
    (255, 255, 255),
    (255, 70, 0),
    (20, 90, 255),
    (0, 0, 0),
)

CHANGED_BORDER = (240, 140, 0)  # a cell whose mask changed a lot since the previous E-step

# matplotlib's "inferno" colour map sampled at 17 points (kept here so a heat map needs no matplotlib import).
_INFERNO = np.array(
    [
        (0, 0, 4), (11, 7, 36), (33, 12, 74), (61, 9, 101), (87, 16, 110), (113, 25, 110),
        (138, 34, 106), (163, 44, 97), (188, 55, 84), (210, 70, 68), (228, 90, 49), (241, 115, 29),
        (249, 142, 9), (252, 172, 17), (249, 203, 53), (242, 234, 105), (252, 255, 164),
    ],
    np.float32,
)
HEAT_LUT = np.stack([np.interp(np.linspace(0, 16, 256), np.arange(17), _INFERNO[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    img = Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255)
    return np.asarray(img.resize((width, height), Image.NEAREST)) > 127


def overlay(image: Image.Image, masks: Sequence[np.ndarray], alpha: float = 0.5) -> Image.Image:
    """The image with each mask tinted a distinct palette colour (masks resized to the image if needed)."""
    out = np.asarray(image.convert("RGB"), np.float32).copy()
    height, width = out.shape[:2]
    for k, mask in enumerate(masks):
        mask = np.asarray(mask, bool)
        if mask.shape != (height, width):
            mask = _resize_mask(mask, height, width)
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(PALETTE[k % len(PALETTE)], np.float32)
    return Image.fromarray(np.round(out).astype(np.uint8), "RGB")


def fit(image: Image.Image, size: int) -> Image.Image:
    """The image scaled to fit a size×size box: small images grow by a whole factor
    with sharp pixels, large ones shrink smoothly."""
    width, height = image.size
    longest = max(width, height)
    if longest <= size:
        factor = max(1, size // longest)
        return image.resize((width * factor, height * factor), Image.NEAREST) if factor > 1 else image.copy()
    scale = size / longest
    return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.LANCZOS)


def _shift_any(mask: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour in the mask (image edges repeat outward)."""
    p = np.pad(mask, 1, mode="edge")
    return p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def _shift_all(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbours are all in the mask (image edges repeat outward)."""
    p = np.pad(mask, 1, mode="edge")
    return p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def contour(mask: np.ndarray) -> np.ndarray:
    """A two-pixel line along the mask's boundary: its edge pixels and the ones just outside."""
    mask = np.asarray(mask, bool)
    return (mask & ~_shift_all(mask)) | (~mask & _shift_any(mask))


def contrast_colour(image: Image.Image, mask: np.ndarray | None = None) -> tuple[int, int, int]:
    """The outline colour farthest from the image's colours along the mask's boundary
    (from all the image's colours without a mask or when the mask has no boundary)."""
    rgb = np.asarray(image.convert("RGB"), np.float32)
    line = None
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != rgb.shape[:2]:
            mask = _resize_mask(mask, *rgb.shape[:2])
        line = contour(mask)
    samples = rgb[line] if line is not None and line.any() else rgb.reshape(-1, 3)
    if len(samples) > 4096:
        samples = samples[:: len(samples) // 4096]
    candidates = np.asarray(OUTLINE_COLOURS, np.float32)
    dist = np.linalg.norm(samples[None, :, :] - candidates[:, None, :], axis=-1)
    best = int(np.percentile(dist, 10, axis=1).argmax())
    return OUTLINE_COLOURS[best]


def _luminance(colour: Sequence[int]) -> float:
    r, g, b = colour[:3]
    return (0.299 * r + 0.587 * g + 0.114 * b) / 255


def outline(image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int] | None = None, dim: float = 0.5) -> Image.Image:
    """The image with the mask's boundary drawn in a contrasting colour (with a thin
    halo of the opposite brightness) and everything outside the mask darkened by `dim`."""
    out = np.asarray(image.convert("RGB"), np.float32).copy()
    height, width = out.shape[:2]
    mask = np.asarray(mask, bool)
    if mask.shape != (height, width):
        mask = _resize_mask(mask, height, width)
    if colour is None:
        colour = contrast_colour(image, mask)
    out[~mask] *= 1 - dim
    line = contour(mask)
    halo = _shift_any(line) & ~line
    shade = np.float32(0 if _luminance(colour) > 0.5 else 255)
    out[halo] = 0.4 * out[halo] + 0.6 * shade
    out[line] = np.asarray(colour, np.float32)
    return Image.fromarray(np.round(out).astype(np.uint8), "RGB")


def heat_map(soft: Image.Image | np.ndarray, image: Image.Image | None = None, size: tuple[int, int] | None = None, mix: float = 0.2) -> Image.Image:
    """A soft map (0..255 grey image or [0, 1] array) in the inferno colour map,
    resized to `size` (width, height) or the image's size, over a little of the image in grey."""
    if isinstance(soft, Image.Image):
        grey = soft.convert("L")
    else:
        grey = Image.fromarray(np.round(np.clip(np.asarray(soft, np.float32), 0, 1) * 255).astype(np.uint8), "L")
    target = size or (image.size if image is not None else grey.size)
    if grey.size != target:
        grey = grey.resize(target, Image.BILINEAR)
    heat = HEAT_LUT[np.asarray(grey)].astype(np.float32)
    if image is not None and mix > 0:
        base = np.asarray(image.convert("L").resize(target, Image.BILINEAR), np.float32)[..., None]
        heat = (1 - mix) * heat + mix * base
    return Image.fromarray(np.round(heat).astype(np.uint8), "RGB")


def font(size: int = 13) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at `size` pixels (its fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def contact_sheet(
    rows: list[list[Image.Image]],
    labels: list[str] | None = None,
    cell: int = 96,
    header: list[str] | None = None,
    captions: list[list[str]] | None = None,
    borders: list[list[tuple[int, int, int] | None]] | None = None,
    gap: int = 0,
    text_size: int = 12,
) -> Image.Image:
    """A grid of cell×cell pictures (aspect kept, centred): labels at the left of
    each row, an optional header above each column, an optional caption (lines
    split on newlines) under each picture and an optional coloured border around it."""
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"{len(labels)} labels for {len(rows)} rows")
    if captions is not None and len(captions) != len(rows):
        raise ValueError(f"{len(captions)} caption rows for {len(rows)} rows")
    face = font(text_size)
    line_h = _line_height(face)
    margin = _label_margin(labels or [], face)
    columns = max((len(row) for row in rows), default=0)
    if header:
        columns = max(columns, len(header))
    header_h = (max(h.count("\n") + 1 for h in header) * line_h + 6) if header else 0
    caption_h = (max((c.count("\n") + 1 for row in captions for c in row if c), default=0) * line_h + 4) if captions else 0
    pitch_x, pitch_y = cell + gap, cell + caption_h + gap
    sheet = Image.new("RGB", (margin + columns * pitch_x - gap if columns else margin, header_h + len(rows) * pitch_y - gap if rows else header_h), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(header or []):
        _centred_text(draw, title, margin + c * pitch_x, 2, cell, face, line_h)
    for r, row in enumerate(rows):
        top = header_h + r * pitch_y
        for c, picture in enumerate(row):
            left = margin + c * pitch_x
            small = fit(picture.convert("RGB"), cell)
            if max(small.size) < cell:
                scale = cell / max(small.size)
                small = small.resize((max(1, round(small.size[0] * scale)), max(1, round(small.size[1] * scale))), Image.NEAREST)
            sheet.paste(small, (left + (cell - small.size[0]) // 2, top + (cell - small.size[1]) // 2))
            colour = borders[r][c] if borders and c < len(borders[r]) else None
            if colour is not None:
                draw.rectangle([left, top, left + cell - 1, top + cell - 1], outline=colour, width=3)
            text = captions[r][c] if captions and c < len(captions[r]) else ""
            if text:
                _centred_text(draw, text, left, top + cell + 2, cell, face, line_h)
        if labels:
            lines = labels[r].count("\n") + 1
            draw.multiline_text((4, top + (cell - lines * line_h) // 2), labels[r], fill="black", font=face, spacing=line_h - _text_height(face))
    return sheet


def _text_height(face: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "Ag", font=face)
    return box[3] - box[1]


def _line_height(face: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    return _text_height(face) + 4


def _centred_text(draw: ImageDraw.ImageDraw, text: str, left: int, top: int, width: int, face, line_h: int) -> None:
    for k, line in enumerate(text.split("\n")):
        w = draw.textlength(line, font=face)
        draw.text((left + (width - w) / 2, top + k * line_h), line, fill="black", font=face)


def _label_margin(labels: list[str], font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    """Width of the label column: the widest label line plus padding, 0 without labels."""
    if not labels:
        return 0
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return max(int(probe.textlength(line, font=font)) for label in labels for line in label.split("\n")) + 8
