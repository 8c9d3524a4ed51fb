"""Read one run from disk for the report: its E-steps and training steps
(metrics.jsonl), the mask files of every concept, settings, state and the
project's samples. Only files inside the project are read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...project import Project
from ..runs import RunDir

MAX_SAMPLES = 24


@dataclass
class Cell:
    """One concept at one E-step."""

    iteration: int
    step: int
    area: float | None
    iou_prev: float | None
    iou_gt: float | None
    mask: Path | None  # None when the file is missing
    soft: Path | None


@dataclass
class ConceptRow:
    image: str
    token: str
    background: bool
    init: str | None
    has_gt: bool
    cells: list[Cell] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.image} {self.token}"

    @property
    def anchor(self) -> str:
        return f"c-{self.image}-{self.token[1:-1]}"


@dataclass
class ImageBlock:
    stem: str
    file: str
    path: Path | None  # None when missing or outside the project
    rows: list[ConceptRow] = field(default_factory=list)


@dataclass
class Sample:
    path: Path
    prompt: str | None
    seed: str | None
    run: str | None


@dataclass
class RunView:
    """Everything the report shows, read once."""

    root: Path
    model: str
    run: RunDir
    state: dict[str, Any]
    config: dict[str, Any]
    records: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    images: list[ImageBlock]
    samples: list[Sample]

    @property
    def rows(self) -> list[ConceptRow]:
        return [row for block in self.images for row in block.rows]


def inside(path: Path, root: Path) -> bool:
    """Whether `path` (links followed) is a file under `root`."""
    try:
        return path.is_file() and path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def read_run(project: Project, run: RunDir) -> RunView:
    """The run as the report needs it."""
    root = project.root
    records, steps = _split_metrics(run.metrics())
    images = []
    for entry in project.images:
        path = project.image_path(entry)
        block = ImageBlock(entry.stem, entry.file, path if inside(path, root) else None)
        for concept in entry.concepts:
            row = ConceptRow(entry.stem, concept.token, concept.background, concept.init, bool(concept.gt_mask))
            for rec in records:
                m = next((m for m in rec["masks"] if m.get("image") == entry.stem and m.get("token") == concept.token), None)
                if m is None:
                    continue
                folder = run.iteration_dir(rec["iteration"]) / entry.stem
                mask, soft = folder / f"{concept.name}.png", folder / f"{concept.name}_attn.png"
                row.cells.append(
                    Cell(
                        rec["iteration"],
                        rec["step"],
                        _number(m.get("area")),
                        _number(m.get("iou_prev")),
                        _number(m.get("iou_gt")),
                        mask if inside(mask, root) else None,
                        soft if inside(soft, root) else None,
                    )
                )
            block.rows.append(row)
        images.append(block)
    return RunView(root, project.model, run, run.state(), _config(run, root), records, steps, images, _samples(project))


def _split_metrics(lines: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """E-step records (the last one per iteration wins, in order) and training-step records."""
    by_iter: dict[int, dict[str, Any]] = {}
    steps = []
    for rec in lines:
        if not isinstance(rec, dict):
            continue
        if rec.get("kind") == "estep" and isinstance(rec.get("iteration"), int) and isinstance(rec.get("masks"), list):
            rec = dict(rec, step=rec.get("step") if isinstance(rec.get("step"), int) else 0, masks=[m for m in rec["masks"] if isinstance(m, dict)])
            by_iter[rec["iteration"]] = rec
        elif rec.get("kind") == "step" and isinstance(rec.get("step"), int):
            steps.append(rec)
    return [by_iter[i] for i in sorted(by_iter)], steps


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _config(run: RunDir, root: Path) -> dict[str, Any]:
    import yaml

    if not inside(run.config_path, root):
        return {}
    try:
        data = yaml.safe_load(run.config_path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _samples(project: Project) -> list[Sample]:
    """The newest generated images of the project with their prompt, seed and run."""
    from PIL import Image, UnidentifiedImageError

    folder = project.samples_dir
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.png") if inside(p, project.root)]
    files.sort(key=lambda p: (-p.stat().st_mtime_ns, p.name))
    out = []
    for path in files[:MAX_SAMPLES]:
        try:
            with Image.open(path) as im:
                info = dict(im.info)
        except (UnidentifiedImageError, OSError, ValueError):
            continue
        text = {k: v for k, v in info.items() if isinstance(v, str)}
        out.append(Sample(path, text.get("conceptforge:prompt"), text.get("conceptforge:seed"), text.get("conceptforge:run")))
    return out
