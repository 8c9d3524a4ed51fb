"""`conceptforge export DIR --format diffusers|a1111|kohya`: the learned concepts for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOut, ProjectDir, Quiet, console, handle_errors, print_json


@handle_errors
def export_command(
    directory: ProjectDir,
    fmt: Annotated[str, typer.Option("--format", "-f", help="diffusers | a1111 (AUTOMATIC1111, ComfyUI) | kohya (sd-scripts, with images and masks).")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: DIR/export/<format>).")] = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Write the learned tokens, LoRA and masks in the layout another tool reads."""
    from ..engine.interop import export_project
    from ..project import Project

    project = Project.load(directory)
    result = export_project(project, fmt, out if out is not None else project.root / "export" / fmt)
    if json_out:
        print_json(result.to_dict())
        return
    if not quiet:
        console.print(f"Exported {len(result.files)} file(s) for [bold]{fmt}[/] to {result.out}:", highlight=False)
    for path in result.files:
        console.print(str(path), highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
