"""`conceptforge evaluate DIR`: mask IoU per E-step and generation fidelity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import JsonOut, ProjectDir, Quiet, RunId, console, handle_errors, print_json


@handle_errors
def evaluate_command(
    directory: ProjectDir,
    run_id: RunId = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write IoU against step, one line per concept (PNG).")] = None,
    n: Annotated[int, typer.Option("-n", "--num", min=2, help="Samples per prompt template.")] = 4,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Sampling steps.")] = 20,
    guidance: Annotated[float, typer.Option("--guidance")] = 5.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    generation: Annotated[bool, typer.Option("--generation/--no-generation", help="Also measure generated images.")] = True,
    clip: Annotated[Path | None, typer.Option("--clip", help="Local CLIP model folder for CLIP scores with SD models.")] = None,
    device: Annotated[str, typer.Option("--device")] = "auto",
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Measure masks against GT masks and the fidelity and diversity of generated images."""
    from ..engine import evaluate as ev
    from ..engine.backbone import pick_device, resolve_source
    from ..engine.runs import find_run
    from ..errors import InputError
    from ..project import Project

    project = Project.load(directory)
    run = find_run(project.runs_dir, run_id)
    result: dict[str, Any] = {"run": run.id, "masks": ev.iou_curves(run)}
    if plot is not None:
        result["plot"] = str(ev.plot_curves(result["masks"], plot, f"mask IoU with GT — run {run.id}"))
    if generation:
        from ..engine.generate import load_concept_pipeline

        source = resolve_source(project.model, project.model_config, base=project.root)
        if not (project.concepts_dir / "concepts.json").is_file():
            raise InputError(f"No learned concepts in {project.concepts_dir}; run `conceptforge learn` first.")
        pipe, index = load_concept_pipeline(source, project.concepts_dir, pick_device(device))
        result["generation_from_run"] = index.get("run")
        if source.is_builtin:
            result["generation"] = ev.builtin_fidelity(pipe, ev.builtin_identities(project, run), n, steps, guidance, seed)
        elif clip is not None:
            result["generation"] = ev.clip_scores(pipe, project, index["tokens"], clip, n, steps, guidance, seed)
            result["skipped"] = {"lpips": "LPIPS needs its network weights, which are not loaded here"}
        else:
            result["skipped"] = {"clip": "no local CLIP weights were given (--clip PATH)", "lpips": "LPIPS needs its network weights, which are not loaded here"}
    if json_out:
        print_json(result)
        return
    _render(result, quiet)


def _render(result: dict[str, Any], quiet: bool) -> None:
    from rich.table import Table

    masks = result["masks"]
    table = Table(title=f"mask IoU with GT — run {result['run']}")
    for col in ("image", "token", "E-steps", "first", "final"):
        table.add_column(col)
    for c in masks["concepts"]:
        table.add_row(c["image"], c["token"], str(len(c["iou"])), f"{c['first']:.3f}", f"{c['final']:.3f}")
    if masks["mean_final"] is not None:
        table.add_row("mean", "", "", f"{masks['mean_first']:.3f}", f"{masks['mean_final']:.3f}")
    console.print(table)
    gen = result.get("generation")
    if gen and "mean_fidelity" in gen:
        t2 = Table(title="generation (recogniser of the built-in world)")
        for col in ("token", "colours", "shape", "fidelity (exact)", "score (partial)", "diversity"):
            t2.add_column(col)
        for c in gen["concepts"]:
            t2.add_row(c["token"], " ".join(c["colors"]), c["shape"] or "-", f"{c['fidelity']:.2f}", f"{c['score']:.2f}", f"{c['diversity']:.3f}")
        console.print(t2)
    elif gen:
        t2 = Table(title="generation (CLIP)")
        for col in ("token", "CLIP image", "CLIP text"):
            t2.add_column(col)
        for c in gen["concepts"]:
            t2.add_row(c["token"], f"{c['clip_image']:.3f}", f"{c['clip_text']:.3f}")
        console.print(t2)
    for what, why in result.get("skipped", {}).items():
        console.print(f"skipped {what}: {why}", highlight=False)
    if "plot" in result and not quiet:
        console.print(f"Plot: {result['plot']}", highlight=False)
