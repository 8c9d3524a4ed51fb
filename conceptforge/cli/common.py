"""Shared CLI pieces: option aliases, consoles, help rendering, `--version`, and the error boundary."""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Callable

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup

from ..errors import ConceptforgeError

console = Console()
err_console = Console(stderr=True)

ProjectDir = Annotated[Path, typer.Argument(metavar="DIR", help="The project folder.", show_default=False)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress output: only results and errors.")]
JsonOut = Annotated[bool, typer.Option("--json", metavar="", help="Print the result as one JSON object.")]
RunId = Annotated[str | None, typer.Option("--run", metavar="RUN-ID", help="Run id, a folder name under DIR/runs.", show_default="the latest run")]
Device = Annotated[
    str, typer.Option("--device", metavar="DEVICE", help="auto (CUDA when there is one, else CPU), cpu, cuda, cuda:N or mps.")
]

# errno values that mean the user pointed at a path that cannot be used (exit 2);
# any other OSError is a failure while running (exit 1), such as a full disk
_INPUT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG}
_CLASS_PREFIX = re.compile(r"^\s*[A-Za-z_][\w.]*(Error|Exception|Interrupt|Warning)\s*:\s*")


class Command(TyperCommand):
    """A command whose help reads in words: `DIR PROMPT` in the usage line and
    no type tag on flags such as --help, nor on an argument named in words."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument) and param.metavar:
                param.display_type_rich = lambda ctx: None  # "DIR", not "DIR <path>"

    def get_help_option(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def collect_usage_pieces(self, ctx) -> list[str]:  # noqa: ANN001
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 and not name.endswith("...") else ""))
        return pieces


class Group(TyperGroup):
    """The top-level command, with no type tag on --help either."""

    def get_help_option(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("conceptforge")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        console.print(f"conceptforge {package_version()}", markup=False, highlight=False)
        raise typer.Exit(0)


def app_options(
    version: Annotated[
        bool, typer.Option("--version", metavar="", is_eager=True, callback=_print_version, help="Print the version and exit.")
    ] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads", metavar="N", min=1, envvar="CONCEPTFORGE_THREADS",
            help="CPU threads for torch (also CONCEPTFORGE_THREADS).", show_default="the cores not busy with other processes",
        ),
    ] = None,
) -> None:
    """Learn text tokens for visual concepts in your images without masks, then generate them in new scenes."""
    from ..threads import configure_threads

    configure_threads(threads)


def debug_enabled() -> bool:
    return os.environ.get("CONCEPTFORGE_DEBUG", "") not in ("", "0")


def print_text(text: str, *, stderr: bool = False) -> None:
    """Print user-supplied text (paths, prompts, messages) verbatim: no markup, no highlighting."""
    (err_console if stderr else console).print(text, markup=False, highlight=False, soft_wrap=True)


def error_text(message: str) -> Text:
    """`error: MESSAGE` with the label styled and the message verbatim (brackets in it stay as they are)."""
    return Text.assemble(("error:", "bold red"), " ", message)


def fail(message: str, code: int) -> typer.Exit:
    err_console.print(error_text(message), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def strip_class_name(text: str) -> str:
    """A message without a leading Python exception class name ("ValueError: x" -> "x")."""
    return _CLASS_PREFIX.sub("", text, count=1)


def first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return strip_class_name(lines[0]).strip() if lines else ""


def os_error_message(exc: OSError) -> tuple[str, int]:
    """A sentence and an exit code for an OSError that reached the CLI boundary."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return f"A file is not a readable image ({first_line(exc)}).", 2
    reason = exc.strerror or first_line(exc) or "an operating-system error"
    where = f" {exc.filename}" if exc.filename else ""
    if exc.filename2:
        where += f" -> {exc.filename2}"
    code = 2 if exc.errno in _INPUT_ERRNOS else 1
    return f"Could not use{where}: {reason[:1].lower() + reason[1:]}.", code


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Map known failures to one sentence and an exit code; a traceback only with CONCEPTFORGE_DEBUG=1."""
    interrupted = (
        "Interrupted; a learn run resumes from its last checkpoint with `conceptforge learn DIR`."
        if func.__name__.startswith("learn")
        else "Interrupted; every file written so far is complete, and none was left half-written."
    )

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except ConceptforgeError as exc:
            if debug_enabled():
                raise
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail(interrupted, 130) from None
        except OSError as exc:
            if debug_enabled():
                raise
            raise fail(*os_error_message(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the boundary of the CLI
            if debug_enabled():
                raise
            detail = first_line(exc) or f"an internal error of kind {type(exc).__name__}"
            raise fail(f"conceptforge failed unexpectedly: {detail} (set CONCEPTFORGE_DEBUG=1 for the traceback).", 1) from None

    return wrapper


def run_problem(run: Any, directory: Path, shown: bool = False) -> str | None:
    """One sentence, when a run's state says it failed or stopped: the error
    from its state.json and what to do.  `shown`: the run's masks so far are
    being shown (else: it has none)."""
    state = run.state()
    status = state.get("status")
    when = "after the masks shown" if shown else "before writing masks"
    if status == "failed":
        lines = [line for line in str(state.get("error") or "").splitlines() if line.strip()]
        reason = strip_class_name(lines[0]).strip().rstrip(".") if lines else "no error was recorded"
        if len(reason) > 300:
            reason = reason[:297] + "..."
        return (
            f"The run {run.id} failed {when} ({reason}); fix the cause and run "
            f"`conceptforge learn {directory}` to resume it, or add --no-resume to start over."
        )
    if status == "interrupted":
        return f"The run {run.id} was interrupted {when}; run `conceptforge learn {directory}` to resume it."
    if status == "running" and not shown:
        return f"The run {run.id} has no masks yet: it is still running, or was killed (`conceptforge learn {directory}` resumes a killed run)."
    return None


def no_masks_error(run: Any, directory: Path) -> ConceptforgeError:
    """The InputError for a run without masks: why (from its state), and an earlier run that has masks."""
    from ..engine.runs import list_runs
    from ..errors import InputError

    message = run_problem(run, directory) or f"The run {run.id} has no masks yet; run `conceptforge learn {directory}` first."
    earlier = [r for r in list_runs(run.path.parent) if r.id != run.id and r.iterations()]
    if earlier:
        message = message.rstrip(".") + f"; the run {earlier[-1].id} has masks (--run {earlier[-1].id})."
    return InputError(message)


def print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()
