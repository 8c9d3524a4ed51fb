"""Read a run's masks back: per-iteration records from metrics.jsonl and the
mask PNGs, for tables, JSON and contact sheets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from .runs import RunDir


def estep_records(run: RunDir) -> list[dict[str, Any]]:
    """One record per E-step, in order (the last one per iteration wins)."""
    by_iter: dict[int, dict[str, Any]] = {}
    for rec in run.metrics():
        if rec.get("kind") == "estep":
            by_iter[rec["iteration"]] = rec
    return [by_iter[i] for i in sorted(by_iter)]


def masks_report(run: RunDir, iteration: int | None = None) -> dict[str, Any]:
    records = estep_records(run)
    if not records:
        raise InputError(f"The run {run.id} has no masks yet.")
    if iteration is None:
        chosen = records[-1]
    else:
        matches = [r for r in records if r["iteration"] == iteration]
        if not matches:
            raise InputError(f"The run {run.id} has no E-step {iteration} (it has 0 to {records[-1]['iteration']}).")
        chosen = matches[0]
    return {
        "run": run.id,
        "iteration": chosen["iteration"],
        "step": chosen["step"],
        "iterations": [r["iteration"] for r in records],
        "converged": chosen.get("converged", False),
        "masks": [dict(m, path=str(run.iteration_dir(chosen["iteration"]) / m["image"] / f"{m['token'][1:-1]}.png")) for m in chosen["masks"]],
    }


def contact_sheet(run: RunDir, images_dir: Path, out: Path, image_files: dict[str, str]) -> Path:
    """A row per concept, a column per E-step: each mask over its image."""
    from PIL import Image

    from . import masks as mask_ops

    records = estep_records(run)
    if not records:
        raise InputError(f"The run {run.id} has no masks yet.")
    concepts = [(m["image"], m["token"]) for m in records[0]["masks"]]
    rows, labels = [], []
    for stem, token in concepts:
        with Image.open(images_dir / image_files[stem]) as im:
            base = im.convert("RGB")
        cells = []
        for rec in records:
            path = run.iteration_dir(rec["iteration"]) / stem / f"{token[1:-1]}.png"
            if path.is_file():
                cells.append(mask_ops.overlay(base, [mask_ops.load_mask_png(path)]))
            else:
                cells.append(base)
        rows.append(cells)
        labels.append(f"{stem} {token}")
    sheet = mask_ops.contact_sheet(rows, labels=labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
