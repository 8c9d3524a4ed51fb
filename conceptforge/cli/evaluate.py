"""`conceptforge evaluate DIR`: mask IoU per E-step and generation fidelity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import Device, JsonOut, ProjectDir, Quiet, RunId, console, handle_errors, no_masks_error, print_json, print_text, run_problem


@handle_errors
def evaluate_command(
    directory: ProjectDir,
    run_id: RunId = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", metavar="FILE.png", help="Write IoU against step, one line per concept.", show_default="none")
    ] = None,
    n: Annotated[int, typer.Option("-n", "--num", min=2, metavar="N", help="Samples per prompt template (2 or more).")] = 4,
    steps: Annotated[int, typer.Option("--steps", min=1, metavar="N", help="Sampling steps.")] = 20,
    guidance: Annotated[float, typer.Option("--guidance", metavar="SCALE", help="Classifier-free guidance scale, 0 or more.")] = 5.0,
    seed: Annotated[int, typer.Option("--seed", metavar="SEED", help="Seed of the first sample, 0 or more.")] = 0,
    generation: Annotated[
        bool, typer.Option("--generation/--no-generation", metavar="", help="Also generate samples and measure them.")
    ] = True,
    clip: Annotated[
        Path | None,
        typer.Option("--clip", metavar="FOLDER", help="Local CLIP model folder, for CLIP scores with SD models.", show_default="none"),
    ] = None,
    device: Device = "auto",
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Measure masks against GT masks and the fidelity and diversity of generated images."""
    from ..engine import evaluate as ev
    from ..engine.backbone import pick_device, resolve_source
    from ..engine.generate import GenerateSettings, check_settings
    from ..engine.outputs import check_image_output, check_outside_project_data
    from ..engine.runs import find_run
    from ..errors import InputError
    from ..project import Project

    if plot is not None:
        check_image_output(plot, "plot", formats=("PNG",))
    if generation:
        check_settings(GenerateSettings(n=n, steps=steps, guidance=guidance, seed=seed, device=device))
        torch_device = pick_device(device)
        if clip is not None and not clip.is_dir():
            raise InputError(f"The CLIP model folder {clip} does not exist or is not a folder.")
    project = Project.load(directory)
    if plot is not None:
        check_outside_project_data(plot, project)
    run = find_run(project.runs_dir, run_id)
    if not ev.checked_estep_records(run):
        raise no_masks_error(run, directory)
    result: dict[str, Any] = {"run": run.id, "masks": ev.iou_curves(run)}
    problem = run_problem(run, directory, shown=True)
    if problem:
        result["note"] = problem
    if not result["masks"]["concepts"]:
        result.setdefault("note", "No concept has a GT mask (add-concept --gt-mask FILE), so there is no mask IoU to measure.")
    if plot is not None:
        result["plot"] = str(ev.plot_curves(result["masks"], plot, f"mask IoU with GT — run {run.id}"))
    if generation:
        from ..engine.export import read_index
        from ..engine.generate import load_concept_pipeline

        index = read_index(project.concepts_dir)
        if index is None or not index["tokens"]:
            raise InputError(f"No learned concepts in {project.concepts_dir}; run `conceptforge learn {directory}` first, or pass --no-generation.")
        unlearned = [t for t in project.tokens() if t not in index["tokens"]]
        if unlearned:
            raise InputError(
                f"The concept {unlearned[0]} was added after the concepts were learned; run `conceptforge learn {directory}` again, or pass --no-generation."
            )
        source = resolve_source(project.model, project.model_config, base=project.root)
        pipe, index = load_concept_pipeline(source, project.concepts_dir, torch_device)
        result["generation_from_run"] = index.get("run")
        if source.is_builtin:
            result["generation"] = ev.builtin_fidelity(pipe, ev.builtin_identities(project, run), n, steps, guidance, seed)
        elif clip is not None:
            result["generation"] = ev.clip_scores(pipe, project, index["tokens"], clip, n, steps, guidance, seed)
        else:
            result["skipped"] = {"clip": "no local CLIP weights were given (--clip FOLDER)"}
    if json_out:
        print_json(result)
        return
    _render(result, quiet)


def _render(result: dict[str, Any], quiet: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    masks = result["masks"]
    table = Table(title=Text(f"mask IoU with GT — run {result['run']}"))
    for col in ("image", "token", "E-steps", "first", "final"):
        table.add_column(col)
    for c in masks["concepts"]:
        table.add_row(Text(c["image"]), Text(c["token"]), str(len(c["iou"])), f"{c['first']:.3f}", f"{c['final']:.3f}")
    if masks["mean_final"] is not None:
        table.add_row("mean", "", "", f"{masks['mean_first']:.3f}", f"{masks['mean_final']:.3f}")
    console.print(table)
    gen = result.get("generation")
    if gen and "mean_fidelity" in gen:
        t2 = Table(title="generation (recogniser of the built-in world)")
        for col in ("token", "colours", "shape", "fidelity (exact)", "score (partial)", "diversity"):
            t2.add_column(col)
        for c in gen["concepts"]:
            t2.add_row(Text(c["token"]), " ".join(c["colors"]), c["shape"] or "-", f"{c['fidelity']:.2f}", f"{c['score']:.2f}", f"{c['diversity']:.3f}")
        console.print(t2)
    elif gen:
        t2 = Table(title="generation (CLIP)")
        for col in ("token", "CLIP image", "CLIP text"):
            t2.add_column(col)
        for c in gen["concepts"]:
            t2.add_row(Text(c["token"]), f"{c['clip_image']:.3f}", f"{c['clip_text']:.3f}")
        console.print(t2)
    for what, why in result.get("skipped", {}).items():
        print_text(f"skipped {what}: {why}")
    if "note" in result and not quiet:
        print_text(f"note: {result['note']}", stderr=True)
    if "plot" in result and not quiet:
        print_text(f"Plot: {result['plot']}")
