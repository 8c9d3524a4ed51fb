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


SHEET_CELL = 128  # pixels per picture in a contact sheet


def contact_sheet(run: RunDir, images_dir: Path, out: Path, image_files: dict[str, str]) -> Path:
    """A row per concept: its plain image, then its mask at every E-step, outlined
    in a colour that stands out on the image with the rest darkened. A header
    names each column's E-step and training step; under each mask its area and
    IoU with the previous E-step and the GT mask; a mask that changed a lot
    (IoU with the previous E-step < 0.5) gets an orange border."""
    from PIL import Image

    from ..fsutil import atomic_write
    from . import pictures
    from .masks import load_mask_png
    from .report_html.checks import big_change

    records = estep_records(run)
    if not records:
        raise InputError(f"The run {run.id} has no masks yet.")
    concepts: list[tuple[str, str]] = []
    for rec in records:
        for m in rec["masks"]:
            if (m["image"], m["token"]) not in concepts:
                concepts.append((m["image"], m["token"]))
    header = ["image"] + [f"E-step {r['iteration']}\nstep {r['step']}" for r in records]
    rows, labels, captions, borders = [], [], [], []
    bases: dict[str, tuple[Image.Image, tuple[int, int, int]]] = {}
    for stem, token in concepts:
        if stem not in bases:
            with Image.open(images_dir / image_files[stem]) as im:
                small = pictures.fit(im.convert("RGB"), SHEET_CELL)
            bases[stem] = (small, pictures.contrast_colour(small))
        base, colour = bases[stem]
        cells, texts, frame = [base], [""], [None]
        for rec in records:
            m = next((m for m in rec["masks"] if m["image"] == stem and m["token"] == token), None)
            path = run.iteration_dir(rec["iteration"]) / stem / f"{token[1:-1]}.png"
            if m is None or not path.is_file():
                cells.append(Image.new("RGB", base.size, (235, 235, 235)))
                texts.append("no mask")
                frame.append(None)
                continue
            cells.append(pictures.outline(base, load_mask_png(path), colour))
            gt = "" if m.get("iou_gt") is None else f" · GT {m['iou_gt']:.2f}"
            prev = "-" if m.get("iou_prev") is None else f"{m['iou_prev']:.2f}"
            texts.append(f"area {m['area']:.1%}\nprev {prev}{gt}")
            frame.append(pictures.CHANGED_BORDER if big_change(m.get("iou_prev")) else None)
        rows.append(cells)
        labels.append(f"{stem}\n{token}")
        captions.append(texts)
        borders.append(frame)
    sheet = pictures.contact_sheet(rows, labels=labels, cell=SHEET_CELL, header=header, captions=captions, borders=borders, gap=6, text_size=13)
    fmt = Image.registered_extensions().get(out.suffix.lower(), "PNG")
    atomic_write(out, lambda tmp: sheet.save(tmp, format=fmt))
    return out
