"""The `conceptforge` command: one module per command, registered here."""

from __future__ import annotations

import typer

from . import concepts, discover, evaluate, export, generate, init, learn, masks, report, vocab
from .common import Command, Group, app_options

app = typer.Typer(
    name="conceptforge",
    cls=Group,
    help="Learn text tokens for visual concepts in your images without masks, then generate them in new scenes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.callback()(app_options)
app.command("init", cls=Command)(init.init_command)
app.command("add-concept", cls=Command)(concepts.add_concept_command)
app.command("concepts", cls=Command)(concepts.list_command)
app.command("remove-concept", cls=Command)(concepts.remove_concept_command)
app.command("vocab", cls=Command)(vocab.vocab_command)
app.command("discover", cls=Command)(discover.discover_command)
app.command("learn", cls=Command)(learn.learn_command)
app.command("masks", cls=Command)(masks.masks_command)
app.command("generate", cls=Command)(generate.generate_command)
app.command("export", cls=Command)(export.export_command)
app.command("evaluate", cls=Command)(evaluate.evaluate_command)
app.command("report", cls=Command)(report.report_command)


def run() -> None:
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    app()
