"""Checks on where a command will write, made before anything is computed or written."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError


def check_output_dir(out: Path, what: str = "output folder") -> None:
    """Refuse a folder that cannot be created or written: a file in its place
    or in the place of one of its parents, or a nearest existing parent that
    this user may not write to."""
    for p in (out, *out.parents):
        if not p.exists():
            continue
        if not p.is_dir() and p == out:
            raise InputError(f"The {what} {out} exists and is not a folder.")
        if not p.is_dir():
            raise InputError(f"The {what} {out} cannot be created: {p} is a file, not a folder.")
        if not os.access(p, os.W_OK | os.X_OK):
            raise InputError(f"The {what} {out} cannot be written: {p} is not writable.")
        return


def image_format(path: Path) -> str | None:
    """The PIL format that saves files with this extension, or None."""
    from PIL import Image

    Image.init()
    fmt = Image.registered_extensions().get(path.suffix.lower())
    return fmt if fmt is not None and fmt in Image.SAVE else None


def check_image_output(path: Path, what: str = "image", formats: tuple[str, ...] | None = None) -> None:
    """Refuse an image path whose extension no image format writes (or none of
    `formats`, PIL format names such as "PNG"), or whose folder cannot be written."""
    if path.exists() and path.is_dir():
        raise InputError(f"The {what} path {path} is a folder; give a file name such as {path / 'out.png'}.")
    fmt = image_format(path)
    if fmt is None or (formats is not None and fmt not in formats):
        kind = "an image format conceptforge can write" if formats is None else f"the {what}'s format ({', '.join(formats)})"
        ends = f"ends in {path.suffix}, which is not {kind}" if path.suffix else "has no extension"
        raise InputError(f"The {what} path {path} {ends}; give a name ending in .png.")
    check_output_dir(path.parent, what=f"folder of the {what}")


def check_outside_project_data(path: Path, project) -> None:  # noqa: ANN001 - a project.Project
    """Refuse an output inside the folders the project keeps its data in
    (images/, runs/, concepts/), where it could replace the user's images,
    a run's masks or the learned concepts."""
    target = path.expanduser().resolve()
    for folder in (project.images_dir, project.runs_dir, project.concepts_dir):
        kept = folder.resolve()
        if target == kept or kept in target.parents:
            raise InputError(f"The output {path} is inside the project's {folder.name}/ folder, which holds its data; choose another place.")
