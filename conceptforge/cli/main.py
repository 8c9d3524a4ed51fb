"""The `conceptforge` command: one module per command, registered here."""

from __future__ import annotations

import typer

from . import concepts, evaluate, export, generate, init, learn, masks

app = typer.Typer(
    name="conceptforge",
    help="Learn text tokens for visual concepts in your images without masks, then generate them in new scenes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("init")(init.init_command)
app.command("add-concept")(concepts.add_concept_command)
app.command("concepts")(concepts.list_command)
app.command("learn")(learn.learn_command)
app.command("masks")(masks.masks_command)
app.command("generate")(generate.generate_command)
app.command("export")(export.export_command)
app.command("evaluate")(evaluate.evaluate_command)


def run() -> None:
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    app()
