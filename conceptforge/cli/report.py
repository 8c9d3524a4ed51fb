"""`conceptforge report DIR`: one HTML page about a run (masks at every E-step, curves, settings, samples)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOut, ProjectDir, Quiet, RunId, handle_errors, print_json, print_text


@handle_errors
def report_command(
    directory: ProjectDir,
    run_id: RunId = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", metavar="FILE.html", help="The HTML file to write.", show_default="DIR/runs/RUN-ID/report.html"),
    ] = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Write a self-contained HTML report of a run (default: the latest) and print its path; open it in any browser."""
    from ..engine.report_html import make_report
    from ..engine.runs import find_run
    from ..project import Project

    project = Project.load(directory)
    run = find_run(project.runs_dir, run_id)
    report = make_report(project.root, run.path, out)
    if json_out:
        findings = [{"kind": f.kind, "image": f.image, "tokens": f.tokens, "text": f.text} for f in report.findings]
        print_json({"run": run.id, "report": str(report.path), "findings": findings})
        return
    if not quiet:
        for f in report.findings:
            print_text(f"check: {f.text}", stderr=True)
    print_text(str(report.path))
