"""`conceptforge export DIR --format diffusers|a1111|kohya`: the learned concepts for other tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOut, ProjectDir, Quiet, handle_errors, print_json, print_text


@handle_errors
def export_command(
    directory: ProjectDir,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", "-f", metavar="FORMAT",
            help="diffusers | a1111 (AUTOMATIC1111, ComfyUI) | kohya (sd-scripts: embeddings, LoRA, images with captions, masks).",
            show_default=False,
        ),
    ],
    out: Annotated[Path | None, typer.Option("--out", metavar="FOLDER", help="Output folder.", show_default="DIR/export/FORMAT")] = None,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Write the learned tokens, LoRA and masks in the layout another tool reads (see docs/export.md)."""
    from ..engine.interop import export_project
    from ..project import Project

    project = Project.load(directory)
    result = export_project(project, fmt, out if out is not None else project.root / "export" / fmt)
    if json_out:
        print_json(result.to_dict())
        return
    if not quiet:
        print_text(f"Exported {len(result.files)} file(s) for {fmt} to {result.out}:")
    for path in result.files:
        print_text(str(path))
    for note in result.notes:
        print_text(f"note: {note}")
