"""The run writer: a subscriber to the trainer's events that keeps the run
folder (metrics.jsonl, mask PNGs per E-step, checkpoints)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..fsutil import append_jsonl, link_or_copy
from ..imageio import open_rgb
from . import masks as mask_ops
from .checkpoint import save_checkpoint
from .data import ImageData
from .estep import EStepResult
from .events import Event
from .runs import RunDir


class RunWriter:
    """Writes what the trainer reports into runs/<id>/."""

    def __init__(self, run: RunDir, images: list[ImageData], image_paths: list[Path]) -> None:
        self.run = run
        self.images = images
        self.image_paths = image_paths
        self.last: EStepResult | None = None  # the last E-step written (None: write every file)

    def __call__(self, event: Event) -> None:
        if event.kind == "step":
            append_jsonl(self.run.metrics_path, {"kind": "step", "phase": event.phase, "step": event.step, **{k: round(v, 6) for k, v in event.data.items()}})
        elif event.kind == "estep":
            self.write_masks(event.payload)
            append_jsonl(self.run.metrics_path, event.data)
        elif event.kind == "checkpoint":
            save_checkpoint(self.run.checkpoints_dir, event.payload)
            if event.data.get("timing"):
                self.run.set_state(timing=event.data["timing"])


    def write_masks(self, result: EStepResult) -> None:
        """masks/iter_NNNN/<image>/<token>.png, <token>_attn.png and overlay.png at the image's own size.
        An image whose masks and maps equal the last E-step's this writer wrote gets that E-step's
        files again (linked, not re-encoded)."""
        last = self.last
        for i, data in enumerate(self.images):
            folder = self.run.iteration_dir(result.iteration) / data.stem
            folder.mkdir(parents=True, exist_ok=True)
            files = {t: (f"{t[1:-1]}.png", f"{t[1:-1]}_attn.png") for t in data.tokens}  # mask, soft map
            names = [n for pair in files.values() for n in pair] + ["overlay.png"]
            if last is not None and self._unchanged(i, result, last):
                before = self.run.iteration_dir(last.iteration) / data.stem
                if all((before / n).is_file() for n in names):
                    for n in names:
                        link_or_copy(before / n, folder / n)
                    continue
            w, h = data.original_size
            full = []
            for t, (mask_name, soft_name) in files.items():
                mask = mask_ops.resize_mask(result.masks[(i, t)], h, w)
                full.append(mask)
                mask_ops.save_mask_png(mask, folder / mask_name)
                mask_ops.save_soft_png(result.soft[(i, t)], folder / soft_name, size=(w, h))
            picture = mask_ops.overlay(open_rgb(self.image_paths[i]), full)
            mask_ops.save_png_atomic(picture, folder / "overlay.png")
        self.last = result

    def _unchanged(self, image: int, result: EStepResult, last: EStepResult) -> bool:
        """Whether an image's masks and soft maps are those of the `last` E-step written."""
        keys = [(image, t) for t in self.images[image].tokens]
        return last.iteration < result.iteration and all(
            np.array_equal(last.masks[k], result.masks[k]) and np.array_equal(last.soft[k], result.soft[k]) for k in keys
        )


REPORT_SHARE = 0.03  # the most of a run's time the live report may take (EM's whole cost target is 10%)


class LiveReport:
    """Rewrites runs/<id>/report.html after E-steps and at the end, so a
    browser showing it can be refreshed while the run goes on.

    A rewrite costs about a second; after an E-step it is skipped while less
    than (its last cost / REPORT_SHARE) has passed since the last one ended, so
    the report takes at most about REPORT_SHARE of the run's time however
    often E-steps come.  The first E-step and the end are always written."""

    def __init__(self, project_root: Path, run: RunDir, warn, clock: Callable[[], float] = time.perf_counter) -> None:
        self.project_root = project_root
        self.run = run
        self.warn = warn
        self.clock = clock
        self.failed = False
        self.last_cost: float | None = None
        self.last_end = 0.0

    @property
    def path(self) -> Path:
        return self.run.path / "report.html"

    def __call__(self, event: Event) -> None:
        if event.kind not in ("estep", "done") or self.failed:
            return
        if event.kind == "estep" and self.last_cost is not None and (self.clock() - self.last_end) * REPORT_SHARE < self.last_cost:
            return
        from .report_html import write_report

        try:
            start = self.clock()
            write_report(self.project_root, self.run.path, self.path)
            self.last_end = self.clock()
            self.last_cost = self.last_end - start
        except Exception as exc:  # noqa: BLE001 - a report must never stop learning
            self.failed = True
            self.warn(f"The live report could not be written ({type(exc).__name__}: {exc}); learning goes on.")
