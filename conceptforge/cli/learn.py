"""`conceptforge learn DIR [DIR ...]`: run the method, with a progress bar on a
terminal and plain log lines when the output goes to a file or a pipe."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..errors import ConceptforgeError
from .common import JsonOut, Quiet, console, debug_enabled, err_console, first_line, handle_errors, print_json


@handle_errors
def learn_command(
    directories: Annotated[list[Path], typer.Argument(metavar="DIR...", help="One or more project folders, learned in sequence.", show_default=False)],
    masks: Annotated[str | None, typer.Option("--masks", metavar="MODE", help="em (the method), fixed (the first E-step's masks, never updated) or given (the --gt-mask masks).", show_default="em")] = None,
    em_steps: Annotated[int | None, typer.Option("--em-steps", metavar="N", help="Steps of the EM phase.", show_default="400; 200 on the built-in model")] = None,
    joint_steps: Annotated[int | None, typer.Option("--joint-steps", metavar="N", help="Steps of the joint phase (tokens + weights, masks fixed).", show_default="400; 100 on the built-in model")] = None,
    finetune: Annotated[str | None, typer.Option("--finetune", metavar="MODE", help="Weights trained in the joint phase: lora, full or none.", show_default="lora")] = None,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", help="Seed of every random choice; the same seed gives the same result.", show_default="0")] = None,
    device: Annotated[str | None, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or mps.", show_default="auto")] = None,
    mixed_precision: Annotated[str | None, typer.Option("--mixed-precision", metavar="MODE", help="no, fp16 (CUDA) or bf16.", show_default="no")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing", help="Trade time for memory.", show_default="off")] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", metavar="NAME", help="adamw or adamw8bit (needs bitsandbytes).", show_default="adamw")] = None,
    crf: Annotated[bool | None, typer.Option("--crf/--no-crf", help="Refine masks with DenseCRF.", show_default="on")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="Any setting of conceptforge.yaml for this run (repeatable), e.g. --set token_lr=1e-3.", show_default=False)] = None,
    skip_finished: Annotated[bool, typer.Option("--skip-finished", help="Leave projects whose concepts were already learned by a finished run (for re-running a batch).")] = False,
    report_page: Annotated[bool, typer.Option("--report/--no-report", help="Rewrite runs/<id>/report.html after every E-step.", show_default="report")] = True,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Resume an unfinished run with the same settings, or start a new run.", show_default="resume")] = True,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """Learn a token per concept (EM over masks from cross-attention), then fine-tune."""
    from ..engine.config import parse_set_option
    from ..engine.learn import learn_project
    from ..engine.parallel import is_main_process

    report = is_main_process()  # under accelerate/torchrun only rank 0 reports
    if not report:
        quiet, json_out = True, False
    overrides = parse_set_option(settings or [])
    named = dict(
        masks=masks, em_steps=em_steps, joint_steps=joint_steps, finetune=finetune, seed=seed, device=device,
        mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing, optimizer=optimizer, crf=crf,
    )
    overrides.update({k: v for k, v in named.items() if v is not None})
    results: list[dict[str, Any]] = []
    for directory in directories:
        try:
            with _display(quiet or json_out, str(directory)) as display:
                result = learn_project(directory, overrides, resume=resume, on_event=display.on_event, report=report_page, skip_finished=skip_finished)
            results.append({"project": str(directory), "ok": True, "run": result["run"], "exported": result["exported"], "skipped": bool(result.get("skipped"))})
            if report and not json_out:
                _print_result(result, quiet)
        except Exception as exc:  # noqa: BLE001 - one project's failure must not stop the others
            if (len(directories) == 1 and not json_out) or debug_enabled():
                raise  # one project: the usual one-line error from handle_errors
            code = exc.exit_code if isinstance(exc, ConceptforgeError) else 1
            message = str(exc) if isinstance(exc, ConceptforgeError) else f"learning failed unexpectedly: {first_line(exc)}"
            results.append({"project": str(directory), "ok": False, "error": message, "exit_code": code})
            if report:
                err_console.print(f"[bold red]error:[/] {escape(str(directory))}: {escape(message)}", highlight=False)
        if json_out:
            print_json(results[-1])
    failed = [r for r in results if not r["ok"]]
    if len(directories) > 1 and not json_out and report:
        _summary(results)
    if failed:
        raise typer.Exit(max(r["exit_code"] for r in failed))


def _print_result(result: dict[str, Any], quiet: bool) -> None:
    if quiet:
        console.print(result["run"], markup=False, highlight=False)
        return
    if result.get("skipped"):
        console.print(f"{escape(result['project'])}: already learned by the finished run {escape(result['run'])}; skipped.")
        return
    console.print(f"Run [bold]{escape(result['run'])}[/] finished after {result['iterations']} E-step(s); exported:")
    for path in result["exported"]:
        console.print(f"  {path}", markup=False, highlight=False)


def _summary(results: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="learn")
    table.add_column("project")
    table.add_column("result")
    table.add_column("run / error")
    for r in results:
        status = "[red]failed[/]" if not r["ok"] else ("skipped" if r.get("skipped") else "[green]ok[/]")
        table.add_row(escape(r["project"]), status, escape(r.get("run") or r.get("error", "")))
    console.print(table)


def _display(quiet: bool, label: str):
    """Progress bar on a terminal, plain lines otherwise, nothing when quiet."""
    if quiet:
        return _Display()
    if err_console.is_terminal:
        return _Progress(label)
    return _PlainLog(label)


class _Display:
    """Shows nothing (the base of the displays)."""

    def __enter__(self) -> "_Display":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def on_event(self, event) -> None:
        return None


def _estep_line(event) -> str:
    d = event.data
    ious = [m["iou_gt"] for m in d["masks"] if m["iou_gt"] is not None]
    extra = f", mean GT IoU {sum(ious) / len(ious):.3f}" if ious else ""
    return f"E-step {d['iteration']} at step {event.step}{extra}" + (" (masks converged)" if d.get("converged") else "")


class _PlainLog(_Display):
    """One plain line per event worth a log: for files, pipes and batch logs."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.perf_counter()
        self.last = (self.started, 0)

    def _line(self, text: str) -> None:
        elapsed = time.perf_counter() - self.started
        sys.stderr.write(f"[{elapsed:7.1f}s] {self.label}: {text}\n")
        sys.stderr.flush()

    def on_event(self, event) -> None:
        kind, d = event.kind, event.data
        if kind == "warning":
            self._line(f"warning: {d['message']}")
        elif kind == "started":
            settings = ", ".join(f"{k}={v}" for k, v in d["settings"].items()) or "the model's defaults"
            self._line(f"{'resuming' if d['resumed'] else 'started'} run {d['run']} with {settings}")
            if d.get("report"):
                self._line(f"report (refresh to follow the run): {d['report']}")
        elif kind == "resumed":
            self._line(f"resumed run {d.get('run', '')} at {event.phase} step {event.step} of {event.total}")
        elif kind == "phase":
            self._line(f"{event.phase} phase: steps {event.step + 1} to {event.total}")
            self.last = (time.perf_counter(), event.step)
        elif kind == "step":
            every = max(1, event.total // 10)
            if event.step % every == 0 or event.step == event.total:
                now, (then, step0) = time.perf_counter(), self.last
                rate = (event.step - step0) / max(now - then, 1e-9)
                self.last = (now, event.step)
                self._line(
                    f"{event.phase} step {event.step}/{event.total}: loss {d['loss']:.4f} "
                    f"(diffusion {d['diffusion']:.4f}, attention {d['attention']:.3f}), {rate:.1f} steps/s"
                )
        elif kind == "estep":
            self._line(_estep_line(event))
            for m in d["masks"]:
                change = "-" if m["iou_prev"] is None else f"{m['iou_prev']:.3f}"
                refused = " (change refused: area bound)" if m.get("refused") else ""
                self._line(f"  {m['image']} {m['token']}: area {m['area']:.3f}, IoU with previous {change}{refused}")
        elif kind == "checkpoint":
            self._line(f"checkpoint at {event.phase} step {event.step}")
        elif kind == "done":
            self._line(f"finished run {d['run']} after {d['iterations']} E-step(s)")


class _Progress(_Display):
    """Renders engine events as a rich progress bar."""

    def __init__(self, label: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.label = label
        self.task = None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[losses]}"), TimeRemainingColumn(), console=err_console, transient=False,
        )

    def __enter__(self) -> "_Progress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def on_event(self, event) -> None:
        if event.kind in ("phase", "resumed"):
            if event.kind == "resumed":
                self.progress.console.print(f"  resumed run {escape(event.data.get('run', ''))} at {event.phase} step {event.step}", highlight=False)
            desc = f"{escape(self.label)} {event.phase}"
            self.task = self.progress.add_task(desc, total=event.total, completed=event.step, losses="")
        elif event.kind == "warning":
            self.progress.console.print(f"[yellow]warning:[/] {escape(event.data['message'])}", highlight=False)
        elif event.kind == "started":
            d = event.data
            self.progress.console.print(f"{'Resuming' if d['resumed'] else 'Started'} run {escape(d['run'])}", highlight=False)
            if d.get("report"):
                self.progress.console.print(f"Report (refresh to follow the run): {escape(d['report'])}", highlight=False)
        elif event.kind == "step" and self.task is not None:
            d = event.data
            text = f"loss {d['loss']:.4f} (diff {d['diffusion']:.4f} attn {d['attention']:.3f})"
            self.progress.update(self.task, completed=event.step, losses=text)
        elif event.kind == "estep":
            self.progress.console.print(f"  {_estep_line(event)}", highlight=False)
