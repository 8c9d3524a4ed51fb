"""`conceptforge masks DIR`: the masks of a run, as a table, JSON or a contact sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOut, ProjectDir, Quiet, RunId, console, handle_errors, print_json


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@handle_errors
def masks_command(
    directory: ProjectDir,
    run_id: RunId = None,
    iteration: Annotated[int | None, typer.Option("--iteration", "-i", help="E-step number (default: the last).")] = None,
    json_out: JsonOut = False,
    sheet: Annotated[Path | None, typer.Option("--sheet", help="Write a contact sheet PNG: a row per concept, a column per E-step.")] = None,
    quiet: Quiet = False,
) -> None:
    """Report the masks of a run (default: the latest)."""
    from rich.table import Table

    from ..engine.report import contact_sheet, masks_report
    from ..engine.runs import find_run
    from ..project import Project

    project = Project.load(directory)
    run = find_run(project.runs_dir, run_id)
    report = masks_report(run, iteration)
    if sheet is not None:
        files = {im.stem: im.file for im in project.images}
        report["sheet"] = str(contact_sheet(run, project.images_dir, sheet, files))
    if json_out:
        print_json(report)
        return
    table = Table(title=f"run {report['run']} — E-step {report['iteration']} (step {report['step']})")
    for col in ("image", "token", "area", "IoU prev", "IoU GT"):
        table.add_column(col, justify="right" if col not in ("image", "token") else "left")
    for m in report["masks"]:
        table.add_row(m["image"], m["token"], f"{m['area']:.3f}", _fmt(m["iou_prev"]), _fmt(m["iou_gt"]))
    console.print(table)
    if sheet is not None and not quiet:
        console.print(f"Contact sheet: {report['sheet']}", highlight=False)
