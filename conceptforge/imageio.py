"""Read a user's images and masks as an image viewer shows them.

* EXIF orientation is applied, so a phone photo stored sideways is read upright.
* 16-bit greyscale (``I;16*``) and 32-bit integer (``I``) pixels are scaled from
  the 0..65535 range to 8 bits (``v / 257``), not clipped to white; 32-bit
  float (``F``) pixels are read as 0..1.
* Transparency (RGBA, LA, palette or colour-key transparency) is composited on
  white for images, as a viewer on a white page shows them, and on black for
  masks, so a transparent pixel is outside the mask.
* CMYK, palette, 1-bit and YCbCr images are converted to RGB (CMYK with
  Pillow's plain conversion; an embedded colour profile is not applied).
* Only the formats in ``FORMATS`` are opened (no format that runs an outside
  program, such as EPS), and images over ``MAX_PIXELS`` are refused before their
  pixels are decoded.

Every failure is an InputError with one sentence that names the file.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError

MAX_PIXELS = 64_000_000  # 64 megapixels, e.g. 8000x8000
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "AVIF", "PPM", "TGA")  # JPEG covers MPO
FORMAT_NAMES = "PNG, JPEG, BMP, GIF, TIFF, WebP, AVIF, PPM or TGA"

_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# what Pillow's decoders raise on damaged or unusual files
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError, ZeroDivisionError, KeyError)


def open_rgb(path: Path, what: str = "image") -> Image.Image:
    """The image at `path` as an upright 8-bit RGB image, as a viewer shows it."""
    return _read(path, what, _rgb)


def open_mask(path: Path, what: str = "mask") -> np.ndarray:
    """The mask at `path` as a bool array (H, W): pixels brighter than 50%, transparency as black."""
    return _read(path, what, _mask)


def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """(width, height) of the image as read by open_rgb (after EXIF orientation)."""
    with open_rgb(path, what) as im:
        return im.size


def _read(path: Path, what: str, convert):
    path = Path(path)
    if not path.exists():
        raise InputError(f"The {what} {path} does not exist.")
    if not path.is_file():
        raise InputError(f"The {what} {path} is not a file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=_formats()) as im:
                _check_size(im.size, path, what)
                im.load()
                upright = ImageOps.exif_transpose(im)
                return convert(upright if upright is not None else im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(path, what, None) from None
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"The {what} {path} is too large to read into memory.") from None
    except _READ_ERRORS as exc:
        raise InputError(f"The {what} {path} is not a readable image ({FORMAT_NAMES}; {type(exc).__name__}).") from None


def _formats() -> list[str]:
    """FORMATS that this Pillow can open (AVIF needs Pillow 11.2 or later)."""
    Image.init()
    return [f for f in FORMATS if f in Image.OPEN]


def _check_size(size: tuple[int, int], path: Path, what: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise InputError(f"The {what} {path} has no pixels ({w}x{h}).")
    if w * h > MAX_PIXELS:
        raise _too_large(path, what, size)


def _too_large(path: Path, what: str, size: tuple[int, int] | None) -> InputError:
    dims = f"{size[0]}x{size[1]} pixels, " if size else ""
    return InputError(
        f"The {what} {path} is too large ({dims}over the limit of {MAX_PIXELS // 1_000_000} megapixels); resize it first."
    )


def _gray_levels(im: Image.Image) -> np.ndarray:
    """A single-channel wide-mode image as float 0..255."""
    arr = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        return np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0
    return np.clip(arr, 0.0, 65535.0) / 257.0


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or (im.mode in ("P", "L", "RGB", "1") and "transparency" in im.info)


def _rgb(im: Image.Image) -> Image.Image:
    if im.mode in _WIDE_MODES:
        return Image.fromarray(np.rint(_gray_levels(im)).astype(np.uint8), "L").convert("RGB")
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _mask(im: Image.Image) -> np.ndarray:
    if im.mode in _WIDE_MODES:
        gray = _gray_levels(im)
    elif _has_alpha(im):
        la = np.asarray(im.convert("RGBA").convert("LA")).astype(np.float64)
        gray = la[..., 0] * la[..., 1] / 255.0
    else:
        gray = np.asarray(im.convert("L")).astype(np.float64)
    return gray > 127.5
