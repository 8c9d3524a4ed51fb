"""`conceptforge init DIR [--model SOURCE]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .common import ProjectDir, Quiet, console, handle_errors


@handle_errors
def init_command(
    directory: ProjectDir,
    model: Annotated[str, typer.Option("--model", "-m", help="builtin:tiny-shapes, a diffusers folder, a .safetensors/.ckpt file, or a hub id.")] = "builtin:tiny-shapes",
    model_config: Annotated[Path | None, typer.Option("--model-config", help="Local diffusers folder with the configs of a single-file model (offline use).")] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Re-initialise an existing project (images and runs are kept; a broken manifest is repaired and kept beside it)."),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Create a project folder."""
    from ..engine.backbone import FAMILY_NAMES, resolve_source
    from ..project import Project

    Project.check_creatable(directory, force)
    source = resolve_source(model, str(model_config) if model_config else None)
    spec = model if source.kind in ("builtin", "hub") else str(source.path)
    project = Project.create(directory, model=spec, force=force, model_config=str(source.config) if source.config else None)
    repair = project.repair
    if quiet:
        console.print(str(project.root), markup=False, highlight=False, soft_wrap=True)
        return
    if repair is not None:
        carried = (
            f"{repair.images[0]} of its {repair.images[1]} image entries and {repair.concepts[0]} of its {repair.concepts[1]} "
            "concepts were carried over"
            if repair.images[0]
            else "nothing in it could be carried over, so the manifest starts afresh (the files in images/ stay)"
        )
        console.print(
            f"Repaired {project.manifest_path} (it {repair.reason}): the broken file is kept as {repair.backup.name}; {carried}.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    family = FAMILY_NAMES[source.family]
    console.print(f"Initialised [bold]{escape(str(project.root))}[/] with model [cyan]{escape(spec)}[/] ({family}).", soft_wrap=True)
