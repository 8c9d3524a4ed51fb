"""`conceptforge discover DIR IMAGE`: propose the concepts of an image (how many and where)
from the model's self-attention, write the proposals into the project and, with --add,
register them as concepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from .common import Device, JsonOut, ProjectDir, Quiet, console, handle_errors, print_json, print_text

STEM_MAX = 50  # a token is <STEM-N>: at most 64 characters


def token_stem(stem: str) -> str:
    """The image stem as it may stand in a token: letters, digits, '-' and '_', starting with a letter or digit."""
    safe = re.sub(r"[^A-Za-z0-9_\-]", "_", stem).lstrip("_-")[:STEM_MAX]
    return safe or "image"


def resolve_image(project, image: Path) -> tuple[Path, str]:
    """(file to read, stem it has or will have in the project): a path to an image file, or
    the file name of an image already in the project's images/ folder."""
    from ..errors import InputError
    from ..fsutil import sha256_file

    if image.is_file():
        digest = sha256_file(image)
        entry = next((im for im in project.images if im.sha256 == digest), None)
        return image, entry.stem if entry is not None else image.stem
    entry = next((im for im in project.images if im.file == image.name or im.stem == image.name), None)
    if entry is not None and project.image_path(entry).is_file():
        return project.image_path(entry), entry.stem
    raise InputError(f"The image {image} does not exist, and no image of {project.root} has that name.")


def proposal_tokens(stem: str, n: int) -> tuple[list[str], str]:
    """<STEM-1> ... <STEM-n> and the background's <STEM-bg>."""
    base = token_stem(stem)
    return [f"<{base}-{k}>" for k in range(1, n + 1)], f"<{base}-bg>"


def check_new_tokens(project, tokens: list[str], tokenizer) -> None:
    """Refuse tokens that are not valid, clash (any case) with the project's or are words of the model."""
    from ..engine.tokens import is_model_word
    from ..errors import InputError
    from ..project import validate_token

    existing = {t.lower(): t for t in project.tokens()}
    for token in tokens:
        validate_token(token)
        if token.lower() in existing:
            raise InputError(
                f"The project already has the token {existing[token.lower()]}; remove it with `conceptforge remove-concept` "
                "or discover from an image with another name."
            )
        if tokenizer is not None and is_model_word(tokenizer, token):
            raise InputError(f"Token {token} is already a word of the model's tokenizer; rename the image and try again.")


def register(project, image: Path, pairs: list[tuple[str, str | None, bool]]) -> None:
    """Add each (token, init, background) concept on the image; undo the ones added when one fails."""
    added: list[str] = []
    try:
        for token, init, background in pairs:
            project.add_concept(image, token, init=init, background=background)
            added.append(token)
    except BaseException:
        for token in reversed(added):
            project.remove_concept(token)
        raise


@handle_errors
def discover_command(
    directory: ProjectDir,
    image: Annotated[
        Path,
        typer.Argument(
            metavar="IMAGE", help="An image file, or the file name of an image already in the project.", show_default=False
        ),
    ],
    max_concepts: Annotated[int, typer.Option("--max-concepts", "-k", metavar="K", help="Propose at most K objects (largest first).")] = 5,
    background: Annotated[
        bool, typer.Option("--background/--no-background", help="Also propose (and with --add register) the background.")
    ] = True,
    add: Annotated[bool, typer.Option("--add", metavar="", help="Register the proposals as concepts of the image: <STEM-1>, <STEM-2>, ...")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, metavar="SEED", help="Seed of the noise the features are read under.")] = 0,
    device: Device = "auto",
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Propose the concepts of an image without being told how many or where."""
    from rich.table import Table

    from ..engine.discover import discover_concepts, load_project_model, model_rgb, settings_for, write_discovery
    from ..errors import InputError
    from ..imageio import open_rgb
    from ..project import Project, check_image_file

    if max_concepts < 1:
        raise InputError(f"--max-concepts {max_concepts} proposes nothing; give 1 or more.")
    project = Project.load(directory)
    path, stem = resolve_image(project, image)
    check_image_file(path)
    picture = open_rgb(path)
    model, cfg = load_project_model(project, device)
    settings = settings_for(cfg, model.is_builtin, seed=seed, max_concepts=max_concepts)
    found = discover_concepts(model, model_rgb(picture, model.size), settings, original_size=picture.size)
    if not background:
        found.background = None
    tokens, back_token = proposal_tokens(stem, len(found.objects))
    back_token = back_token if found.background is not None else None
    if add:
        if not found.objects and found.background is None:
            raise InputError(f"Nothing was found in {image} to register.")
        check_new_tokens(project, tokens + ([back_token] if back_token else []), model.tokenizer)
    folder = project.root / "discover" / token_stem(stem)
    written = write_discovery(folder, picture, found, tokens, back_token)
    if add:
        pairs = [(t, p.init, False) for t, p in zip(tokens, found.objects)]
        if back_token:
            pairs.append((back_token, found.background.init, True))
        register(project, path, pairs)
    rows = list(zip(tokens, found.objects)) + ([(back_token, found.background)] if back_token else [])
    if json_out:
        print_json(
            {
                "image": str(image), "folder": str(folder), "added": add, "clusters": found.clusters,
                "proposals": [
                    {"token": t, "area": round(p.area, 5), "init": p.init, "background": p.background, "mask": str(folder / f"{t.strip('<>')}.png")}
                    for t, p in rows
                ],
            }
        )
        return
    if quiet:
        for t, p in rows:
            print_text(f"{t} {p.area:.3f} {p.init or '-'}")
        return
    n = len(found.objects)
    print_text(f"{n} concept{'s' if n != 1 else ''} proposed in {image}" + (" and the background" if back_token else "") + ":")
    table = Table(show_edge=False)
    for col, justify in (("#", "right"), ("token", "left"), ("area", "right"), ("init word", "left"), ("mask", "left")):
        table.add_column(col, justify=justify)
    for k, (t, p) in enumerate(rows, 1):
        table.add_row("bg" if p.background else str(k), t, f"{100 * p.area:.1f}%", p.init or "-", f"{t.strip('<>')}.png")
    console.print(table)
    notes = []
    if found.dropped_small:
        notes.append(f"{found.dropped_small} tiny region{'s' if found.dropped_small != 1 else ''} left out")
    if found.dropped_cap:
        notes.append(f"{found.dropped_cap} more over --max-concepts {max_concepts} left out")
    if notes:
        print_text("(" + "; ".join(notes) + ")")
    print_text(f"Wrote {written[-2]} and the masks in {folder}.")
    if add:
        print_text(f"Registered {len(rows)} concept{'s' if len(rows) != 1 else ''}; run `conceptforge learn {directory}` to learn them.")
    else:
        print_text(f"Add --add to register them as concepts, then run `conceptforge learn {directory}`.")
