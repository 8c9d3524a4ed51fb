"""`conceptforge learn DIR [DIR ...]`: run the method, with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ConceptforgeError
from .common import JsonOut, Quiet, console, debug_enabled, err_console, handle_errors, print_json


@handle_errors
def learn_command(
    directories: Annotated[list[Path], typer.Argument(help="One or more project folders, learned in sequence.", show_default=False)],
    masks: Annotated[str | None, typer.Option("--masks", help="em (the method) | fixed (masks of the first E-step) | given (the --gt-mask masks).")] = None,
    em_steps: Annotated[int | None, typer.Option("--em-steps", help="Steps of the EM phase.")] = None,
    joint_steps: Annotated[int | None, typer.Option("--joint-steps", help="Steps of the joint phase (tokens + weights, masks fixed).")] = None,
    finetune: Annotated[str | None, typer.Option("--finetune", help="lora | full | none.")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda.")] = None,
    mixed_precision: Annotated[str | None, typer.Option("--mixed-precision", help="no | fp16 | bf16.")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing")] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="adamw | adamw8bit (needs bitsandbytes).")] = None,
    crf: Annotated[bool | None, typer.Option("--crf/--no-crf", help="Refine masks with DenseCRF.")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Resume an unfinished run (default) or start a new one.")] = True,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Learn a token per concept (EM over masks from cross-attention), then fine-tune."""
    from ..engine.learn import learn_project
    from ..engine.parallel import is_main_process

    report = is_main_process()  # under accelerate/torchrun only rank 0 reports
    if not report:
        quiet, json_out = True, False

    overrides = dict(
        masks=masks, em_steps=em_steps, joint_steps=joint_steps, finetune=finetune, seed=seed, device=device,
        mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing, optimizer=optimizer, crf=crf,
    )
    results: list[dict[str, Any]] = []
    for directory in directories:
        try:
            with _Progress(enabled=not quiet and not json_out, label=str(directory)) as progress:
                result = learn_project(directory, overrides, resume=resume, on_event=progress.on_event)
            results.append({"project": str(directory), "ok": True, "run": result["run"], "exported": result["exported"]})
            if report and not json_out:
                _print_result(result, quiet)
        except Exception as exc:  # noqa: BLE001 - one project's failure must not stop the others
            if (len(directories) == 1 and not json_out) or debug_enabled():
                raise  # one project: the usual one-line error from handle_errors
            code = exc.exit_code if isinstance(exc, ConceptforgeError) else 1
            message = str(exc) if isinstance(exc, ConceptforgeError) else f"{type(exc).__name__}: {exc}"
            results.append({"project": str(directory), "ok": False, "error": message, "exit_code": code})
            if report:
                err_console.print(f"[bold red]error:[/] {directory}: {message}", highlight=False)
        if json_out:
            print_json(results[-1])
    failed = [r for r in results if not r["ok"]]
    if len(directories) > 1 and not json_out and report:
        _summary(results)
    if failed:
        raise typer.Exit(max(r["exit_code"] for r in failed))


def _print_result(result: dict[str, Any], quiet: bool) -> None:
    if quiet:
        console.print(result["run"])
        return
    console.print(f"Run [bold]{result['run']}[/] finished after {result['iterations']} E-step(s); exported:")
    for path in result["exported"]:
        console.print(f"  {path}", highlight=False)


def _summary(results: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="learn")
    table.add_column("project")
    table.add_column("result")
    table.add_column("run / error")
    for r in results:
        table.add_row(r["project"], "[green]ok[/]" if r["ok"] else "[red]failed[/]", r.get("run") or r.get("error", ""))
    console.print(table)


class _Progress:
    """Renders engine events as a rich progress bar (or nothing when quiet)."""

    def __init__(self, enabled: bool, label: str):
        self.enabled = enabled
        self.label = label
        self.progress = None
        self.task = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[losses]}"), TimeRemainingColumn(), console=err_console, transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def on_event(self, event) -> None:
        if self.progress is None:
            return
        if event.kind in ("phase", "resumed"):
            desc = f"{self.label} {event.phase}"
            if self.task is not None:
                self.progress.update(self.task, visible=True)
            self.task = self.progress.add_task(desc, total=event.total, completed=event.step, losses="")
        elif event.kind == "step" and self.task is not None:
            d = event.data
            text = f"loss {d['loss']:.4f} (diff {d['diffusion']:.4f} attn {d['attention']:.3f})"
            self.progress.update(self.task, completed=event.step, losses=text)
        elif event.kind == "estep":
            ious = [m["iou_gt"] for m in event.data["masks"] if m["iou_gt"] is not None]
            extra = f", mean GT IoU {sum(ious) / len(ious):.3f}" if ious else ""
            self.progress.console.print(f"  E-step {event.data['iteration']} at step {event.step}{extra}", highlight=False)
