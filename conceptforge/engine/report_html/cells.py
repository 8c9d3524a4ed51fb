"""The report's pictures: images, mask outlines, heat maps, samples and curves,
each made through the picture cache."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from .. import pictures
from .cache import PictureCache
from .model import Cell, RunView

CELL = 128  # pixels: a mask or heat-map cell
IMAGE = 192  # pixels: an image at the head of its block


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


class Pictures:
    """Data URIs of every picture of one report."""

    def __init__(self, view: RunView, cache: PictureCache):
        self.view = view
        self.cache = cache
        self._bases: dict[Path, Image.Image] = {}
        self._colours: dict[Path, tuple[int, int, int]] = {}

    def _base(self, path: Path) -> Image.Image:
        """The image fitted to a cell (read once per report, and only when a cell needs rendering)."""
        if path not in self._bases:
            self._bases[path] = pictures.fit(_open_rgb(path), CELL)
        return self._bases[path]

    def colour(self, path: Path) -> tuple[int, int, int]:
        """The outline colour of an image's masks: the candidate farthest from its colours."""
        if path not in self._colours:
            data = self.cache.get(["colour"], [path], lambda: bytes(pictures.contrast_colour(self._base(path))))
            self._colours[path] = (data[0], data[1], data[2])
        return self._colours[path]

    def image(self, path: Path, size: int = IMAGE) -> str:
        return self.cache.uri(["image", size], [path], lambda: pictures.fit(_open_rgb(path), size))

    def mask(self, image: Path, cell: Cell) -> str | None:
        if cell.mask is None:
            return None
        colour = self.colour(image)

        def render() -> Image.Image:
            from ..masks import load_mask_png

            return pictures.outline(self._base(image), load_mask_png(cell.mask), colour)

        return self.cache.uri(["mask", CELL, colour], [image, cell.mask], render)

    def heat(self, image: Path, cell: Cell) -> str | None:
        if cell.soft is None:
            return None

        def render() -> Image.Image:
            base = self._base(image)
            with Image.open(cell.soft) as soft:
                return pictures.heat_map(soft, base, size=base.size)

        return self.cache.uri(["heat", CELL], [image, cell.soft], render)

    def curves(self) -> list[tuple[str, str]]:
        """(title, data URI) of the loss, IoU and area plots; drawn again only when metrics.jsonl changed."""
        from .. import plots

        view = self.view
        metrics = view.run.metrics_path if view.run.metrics_path.is_file() else None
        esteps = [r["step"] for r in view.records]
        return [
            ("training losses", self.cache.uri(["losses"], [metrics], lambda: plots.losses_png(view.steps, esteps))),
            ("mask IoU per E-step", self.cache.uri(["iou"], [metrics], lambda: plots.iou_png(view.records))),
            ("mask area per concept", self.cache.uri(["area"], [metrics], lambda: plots.area_png(view.records))),
        ]
