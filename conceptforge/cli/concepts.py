"""`conceptforge add-concept`, `conceptforge remove-concept` and `conceptforge concepts`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .common import JsonOut, ProjectDir, Quiet, console, handle_errors, print_json


def init_word_pieces(tokenizer, word: str) -> list[str]:
    """The tokenizer's pieces of an init word; InputError when it gives none or pieces the tokenizer does not know."""
    from ..errors import InputError

    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise InputError(f"The init word {word!r} gives no token in the model's vocabulary.")
    if set(ids) & set(tokenizer.all_special_ids):
        raise InputError(f"The init word {word!r} has characters the model's tokenizer does not know; choose a plain word, such as person.")
    return list(tokenizer.convert_ids_to_tokens(ids))


@handle_errors
def add_concept_command(
    directory: ProjectDir,
    image: Annotated[Path, typer.Argument(help="An image showing the concept.", show_default=False)],
    token: Annotated[str, typer.Option("--token", "-t", help='The new token, in angle brackets: "<me>".')],
    init: Annotated[str | None, typer.Option("--init", help="A word of the model's vocabulary whose embedding seeds the token.")] = None,
    background: Annotated[bool, typer.Option("--background", help="The concept is the image's background.")] = False,
    gt_mask: Annotated[Path | None, typer.Option("--gt-mask", help="A human mask of the concept (white on black), for evaluation and --masks given.")] = None,
    quiet: Quiet = False,
) -> None:
    """Register a concept shown in an image."""
    from ..engine.backbone import load_tokenizer, resolve_source
    from ..engine.tokens import is_model_word
    from ..project import Project, check_image_file, validate_init_word, validate_token

    project = Project.load(directory)
    validate_token(token)
    if init is not None:
        validate_init_word(init)
    check_image_file(image)
    tokenizer = load_tokenizer(resolve_source(project.model, project.model_config, base=project.root))
    pieces = init_word_pieces(tokenizer, init) if tokenizer is not None and init else None
    check = (lambda t: is_model_word(tokenizer, t)) if tokenizer is not None else None
    entry, concept = project.add_concept(image, token, init=init, background=background, gt_mask=gt_mask, is_model_word=check)
    if quiet:
        console.print(f"{entry.file} {concept.token}", markup=False, highlight=False, soft_wrap=True)
        return
    n = len(entry.concepts)
    console.print(f"Added [bold]{escape(concept.token)}[/] to images/{escape(entry.file)} ({n} concept{'s' if n != 1 else ''} on it).", soft_wrap=True)
    if pieces is not None and len(pieces) > 1:
        console.print(
            f"Note: the model's tokenizer splits the init word {init!r} into {len(pieces)} pieces ({' '.join(pieces)}); "
            f"the first, {pieces[0]}, seeds {concept.token}.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@handle_errors
def remove_concept_command(
    directory: ProjectDir,
    token: Annotated[str, typer.Option("--token", "-t", help='The token to remove: "<me>".')],
    quiet: Quiet = False,
) -> None:
    """Remove a concept from the manifest (image and mask files stay in images/)."""
    from ..project import Project

    project = Project.load(directory)
    result = project.remove_concept(token)
    if quiet:
        for entry, removed in result:
            console.print(f"{entry.file} {'removed' if removed else 'kept'}", markup=False, highlight=False, soft_wrap=True)
        return
    gone = [entry.file for entry, removed in result if removed]
    text = f"Removed {token} from {len(result)} image{'s' if len(result) != 1 else ''}."
    if gone:
        text += (
            f" {', '.join('images/' + f for f in gone)} {'has' if len(gone) == 1 else 'have'} no concept left and left the "
            "manifest; the files stay in images/."
        )
    console.print(text, markup=False, highlight=False, soft_wrap=True)


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
    table = Table(title=escape(f"{project.root} — model {project.model}"))
    for col in ("image", "token", "init", "background", "gt mask"):
        table.add_column(col)
    for r in rows:
        table.add_row(escape(r["image"]), escape(r["token"]), escape(r["init"] or ""), "yes" if r["background"] else "", escape(r["gt_mask"] or ""))
    console.print(table)
