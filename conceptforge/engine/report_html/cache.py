"""Rendered pictures as data URIs, kept on disk by a key of their inputs (the
bytes of small files, the path, size and modification time of large ones) and
render settings, so a report rewritten after every E-step renders only the
pictures that are new, and a mask an E-step left unchanged is drawn once."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ...fsutil import current_umask
from ..pictures import RUN_PNG_LEVEL

VERSION = 2  # raise when pictures are drawn differently, so kept ones are drawn again
_NAME = re.compile(r"^[0-9a-f]{40}\.png$")


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=RUN_PNG_LEVEL)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("conceptforge")
    except PackageNotFoundError:
        return "unknown"


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


CONTENT_KEY_MAX = 1 << 20  # bytes: inputs up to this size are known by their content, larger ones by path and time


class PictureCache:
    """Rendered bytes under `folder` (PNG pictures, and the 3-byte RGB outline colour
    of an image) named by the hash of what they were made from; no folder: nothing is kept."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.used: set[str] = set()
        self.rendered = 0
        self._known: dict[tuple, list[Any]] = {}  # input hashes by path, time and size (`fingerprint`)

    def fingerprint(self, path: Path | None) -> list[Any]:
        """What a picture's input file is known by: the hash of its bytes for files up to
        CONTENT_KEY_MAX (the mask and soft-map PNGs: an E-step that leaves a mask as it was
        writes the same bytes again, so its picture is not drawn again), else its path,
        modification time and size (a user's large photo is not read for every cell).
        Hashes are kept by path, time and size, so a file is read once per report."""
        if path is None:
            return [None]
        info = path.stat()
        stamp = (str(path), info.st_mtime_ns, info.st_size)
        if info.st_size > CONTENT_KEY_MAX:
            return list(stamp)
        if stamp not in self._known:
            self._known[stamp] = [hashlib.sha1(path.read_bytes()).hexdigest()]
        return self._known[stamp]

    def uri(self, parts: list[Any], inputs: list[Path | None], render: Callable[[], Image.Image | bytes]) -> str:
        """The picture for `parts` and `inputs` as a data URI, rendered only when not kept yet."""
        return data_uri(self.get(parts, inputs, render))

    def get(self, parts: list[Any], inputs: list[Path | None], render: Callable[[], Image.Image | bytes]) -> bytes:
        key = hashlib.sha1(json.dumps([VERSION, _package_version(), parts, [self.fingerprint(p) for p in inputs]], default=str).encode()).hexdigest()
        name = f"{key}.png"
        self.used.add(name)
        if self.folder is not None:
            try:
                return (self.folder / name).read_bytes()
            except OSError:
                pass
        made = render()
        data = made if isinstance(made, bytes) else png_bytes(made)
        self.rendered += 1
        if self.folder is not None:
            self._store(name, data)
        return data

    def _store(self, name: str, data: bytes) -> None:
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, self.folder / name)
        except OSError:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)  # a cache that cannot be written only costs time

    def prune(self) -> None:
        """Remove kept pictures this report did not use (from older E-steps' files or settings)."""
        if self.folder is None or not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if _NAME.match(path.name) and path.name not in self.used:
                path.unlink(missing_ok=True)
