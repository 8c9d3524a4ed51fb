"""`conceptforge masks DIR`: the masks of a run, as a table, JSON or a contact sheet."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOut, ProjectDir, Quiet, RunId, console, handle_errors, no_masks_error, print_json, print_text, run_problem


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@handle_errors
def masks_command(
    directory: ProjectDir,
    run_id: RunId = None,
    iteration: Annotated[
        int | None, typer.Option("--iteration", "-i", metavar="N", help="E-step number.", show_default="the last")
    ] = None,
    json_out: JsonOut = False,
    sheet: Annotated[
        Path | None,
        typer.Option("--sheet", metavar="FILE.png", help="Write a contact sheet: a row per concept, a column per E-step.", show_default="none"),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Report the masks of a run (default: the latest)."""
    from rich.table import Table
    from rich.text import Text

    from ..engine.evaluate import checked_estep_records
    from ..engine.outputs import check_image_output, check_outside_project_data
    from ..engine.report import masks_report
    from ..engine.runs import find_run
    from ..project import Project

    if sheet is not None:
        check_image_output(sheet, "contact sheet")
    project = Project.load(directory)
    if sheet is not None:
        check_outside_project_data(sheet, project)
    run = find_run(project.runs_dir, run_id)
    records = checked_estep_records(run)
    if not records:
        raise no_masks_error(run, directory)
    report = masks_report(run, iteration)
    report["status"] = run.state().get("status", "unknown")
    if sheet is not None:
        report["sheet"] = str(_contact_sheet(project, run, records, sheet))
    if json_out:
        print_json(report)
        return
    table = Table(title=Text(f"run {report['run']} — E-step {report['iteration']} (step {report['step']})"))
    for col in ("image", "token", "area", "IoU prev", "IoU GT"):
        table.add_column(col, justify="right" if col not in ("image", "token") else "left")
    for m in report["masks"]:
        table.add_row(Text(m["image"]), Text(m["token"]), f"{m['area']:.3f}", _fmt(m["iou_prev"]), _fmt(m["iou_gt"]))
    console.print(table)
    problem = run_problem(run, directory, shown=True)
    if problem and not quiet:
        print_text(f"note: {problem}", stderr=True)
    if sheet is not None and not quiet:
        print_text(f"Contact sheet: {report['sheet']}")


def _contact_sheet(project, run, records: list[dict], sheet: Path) -> Path:  # noqa: ANN001
    """Draw the contact sheet; a missing or damaged image or mask is an InputError naming it."""
    from PIL import UnidentifiedImageError

    from ..engine.report import contact_sheet
    from ..errors import InputError

    files = {im.stem: im.file for im in project.images}
    for rec in records:
        for m in rec["masks"]:
            name = files.get(m["image"])
            if name is None:
                raise InputError(f"The run {run.id} has masks of an image {m['image']!r} that the project no longer lists.")
            if Path(name).name != name:
                raise InputError(f"The manifest names the image {name!r}, which is not a plain file name in images/.")
    try:
        return contact_sheet(run, project.images_dir, sheet, files)
    except UnidentifiedImageError as exc:
        found = re.search(r"'(.+)'", str(exc))
        what = found.group(1) if found else "an image or mask of the run"
        raise InputError(f"Could not draw the contact sheet: {what} is damaged or not an image.") from None
    except FileNotFoundError as exc:
        raise InputError(f"Could not draw the contact sheet: {exc.filename or 'an image of the project'} is missing.") from None
