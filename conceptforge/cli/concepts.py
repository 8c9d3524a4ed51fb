"""`conceptforge add-concept` and `conceptforge concepts`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOut, ProjectDir, Quiet, console, handle_errors, print_json


@handle_errors
def add_concept_command(
    directory: ProjectDir,
    image: Annotated[Path, typer.Argument(help="An image showing the concept.", show_default=False)],
    token: Annotated[str, typer.Option("--token", "-t", help='The new token, in angle brackets: "<me>".')],
    init: Annotated[str | None, typer.Option("--init", help="A word of the model's vocabulary whose embedding seeds the token.")] = None,
    background: Annotated[bool, typer.Option("--background", help="The concept is the image's background.")] = False,
    gt_mask: Annotated[Path | None, typer.Option("--gt-mask", help="A human mask of the concept, for evaluation and --masks given.")] = None,
    quiet: Quiet = False,
) -> None:
    """Register a concept shown in an image."""
    from ..engine.backbone import load_tokenizer, resolve_source
    from ..engine.tokens import init_word_id, is_model_word
    from ..project import Project, check_image_file, validate_token

    project = Project.load(directory)
    validate_token(token)
    check_image_file(image)
    tokenizer = load_tokenizer(resolve_source(project.model, project.model_config, base=project.root))
    if tokenizer is not None and init:
        init_word_id(tokenizer, init)
    check = (lambda t: is_model_word(tokenizer, t)) if tokenizer is not None else None
    entry, concept = project.add_concept(image, token, init=init, background=background, gt_mask=gt_mask, is_model_word=check)
    if quiet:
        console.print(f"{entry.file} {concept.token}")
    else:
        n = len(entry.concepts)
        console.print(f"Added [bold]{concept.token}[/] to images/{entry.file} ({n} concept{'s' if n != 1 else ''} on it).")


@handle_errors
def list_command(directory: ProjectDir, json_out: JsonOut = False, quiet: Quiet = False) -> None:
    """List the project's images and concepts."""
    from rich.table import Table

    from ..project import Project

    project = Project.load(directory)
    rows = [
        {"image": im.file, "token": c.token, "init": c.init, "background": c.background, "gt_mask": c.gt_mask}
        for im, c in project.concepts()
    ]
    if json_out:
        print_json({"model": project.model, "concepts": rows})
        return
    table = Table(title=f"{project.root} — model {project.model}")
    for col in ("image", "token", "init", "background", "gt mask"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["image"], r["token"], r["init"] or "", "yes" if r["background"] else "", r["gt_mask"] or "")
    console.print(table)
