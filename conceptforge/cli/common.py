"""Shared CLI pieces: option aliases, consoles, and the error boundary."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable

import typer
from rich.console import Console

from ..errors import ConceptforgeError

console = Console()
err_console = Console(stderr=True)

ProjectDir = Annotated[Path, typer.Argument(help="The project folder.", show_default=False)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output: only results and errors.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]
RunId = Annotated[str | None, typer.Option("--run", help="Run id (default: the latest run).")]


def debug_enabled() -> bool:
    return os.environ.get("CONCEPTFORGE_DEBUG", "") not in ("", "0")


def fail(message: str, code: int) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Map known failures to one line and an exit code; a traceback only with CONCEPTFORGE_DEBUG=1."""

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
            raise fail("Interrupted; a learn run resumes from its last checkpoint with `conceptforge learn DIR`.", 130) from None
        except Exception as exc:  # noqa: BLE001 - the boundary of the CLI
            if debug_enabled():
                raise
            text = str(exc).strip().splitlines()
            detail = text[0] if text else ""
            raise fail(f"{type(exc).__name__}: {detail} (set CONCEPTFORGE_DEBUG=1 for the traceback)", 1) from None

    return wrapper


def print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()
