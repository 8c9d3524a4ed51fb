"""`conceptforge generate DIR PROMPT`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOut, ProjectDir, Quiet, console, handle_errors, print_json


@handle_errors
def generate_command(
    directory: ProjectDir,
    prompt: Annotated[str, typer.Argument(help='A prompt using learned tokens, e.g. "a <v1> and a <v2>".', show_default=False)],
    n: Annotated[int, typer.Option("-n", "--num", min=1, help="How many images.")] = 4,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Sampling steps.")] = 30,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale.")] = 5.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first image; image i uses seed + i.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: DIR/samples).")] = None,
    negative: Annotated[str | None, typer.Option("--negative", help="Negative prompt.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Generate images with the learned concepts."""
    from ..engine.backbone import resolve_source
    from ..engine.export import read_index
    from ..engine.generate import GenerateSettings, check_prompt, generate
    from ..errors import InputError
    from ..project import Project

    project = Project.load(directory)
    index = read_index(project.concepts_dir)
    if index is None:
        raise InputError(f"No learned concepts in {project.concepts_dir}; run `conceptforge learn {directory}` first.")
    check_prompt(prompt, index["tokens"])
    source = resolve_source(project.model, project.model_config, base=project.root)
    settings = GenerateSettings(n=n, steps=steps, guidance=guidance, seed=seed, device=device)
    paths = generate(source, project.concepts_dir, prompt, out or project.samples_dir, settings, project.model, negative)
    if json_out:
        print_json({"prompt": prompt, "images": [str(p) for p in paths]})
        return
    for p in paths:
        console.print(str(p), highlight=False)
