"""`conceptforge generate DIR PROMPT`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import Device, JsonOut, ProjectDir, Quiet, handle_errors, print_json, print_text


@handle_errors
def generate_command(
    directory: ProjectDir,
    prompt: Annotated[
        str, typer.Argument(metavar="PROMPT", help='A prompt using learned tokens, e.g. "a <v1> and a <v2>".', show_default=False)
    ],
    n: Annotated[int, typer.Option("-n", "--num", min=1, metavar="N", help="How many images.")] = 4,
    steps: Annotated[int, typer.Option("--steps", min=1, metavar="N", help="Sampling steps.")] = 30,
    guidance: Annotated[float, typer.Option("--guidance", metavar="SCALE", help="Classifier-free guidance scale, 0 or more.")] = 5.0,
    seed: Annotated[int, typer.Option("--seed", metavar="SEED", help="Seed of the first image, 0 or more; image i uses seed + i.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", metavar="FOLDER", help="Output folder.", show_default="DIR/samples")] = None,
    negative: Annotated[str | None, typer.Option("--negative", metavar="TEXT", help="Negative prompt.", show_default="none")] = None,
    device: Device = "auto",
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Generate images with the learned concepts."""
    from ..engine.backbone import pick_device, resolve_source
    from ..engine.export import read_index
    from ..engine.generate import GenerateSettings, check_prompt, check_settings, generate
    from ..engine.outputs import check_output_dir, check_outside_project_data
    from ..errors import InputError
    from ..project import Project

    project = Project.load(directory)
    settings = GenerateSettings(n=n, steps=steps, guidance=guidance, seed=seed, device=device)
    check_settings(settings)
    pick_device(device)
    index = read_index(project.concepts_dir)
    if index is None or not index["tokens"]:
        raise InputError(f"No learned concepts in {project.concepts_dir}; run `conceptforge learn {directory}` first.")
    check_prompt(prompt, index["tokens"])
    out_dir = out or project.samples_dir
    check_outside_project_data(out_dir, project)
    check_output_dir(out_dir)
    source = resolve_source(project.model, project.model_config, base=project.root)
    paths = generate(source, project.concepts_dir, prompt, out_dir, settings, project.model, negative)
    if json_out:
        print_json({"prompt": prompt, "images": [str(p) for p in paths]})
        return
    for p in paths:
        print_text(str(p))
