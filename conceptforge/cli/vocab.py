"""`conceptforge vocab [DIR] [--model MODEL] [--contains TEXT]`: the words the model has as one token,
to choose an --init word from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import JsonOut, Quiet, console, handle_errors, print_json, print_text

SHOWN_MAX = 300  # a list longer than this is cut to its first SHOWN_MAX words (common words first) unless --all
WORD_END = "</w>"


def _byte_decoder() -> dict[str, int]:
    """The inverse of the byte-to-character table of CLIP's (and GPT-2's) byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def whole_words(tokenizer) -> list[tuple[str, int]]:  # noqa: ANN001
    """(word, id) for each vocabulary entry that ends a word (`...</w>`) and is a word a user
    can type: two or more letters, which the tokenizer encodes back to that one token.
    In the tokenizer's order (its BPE merges: common words first)."""
    decoder = _byte_decoder()
    candidates: list[tuple[str, int]] = []
    for entry, tid in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if not entry.endswith(WORD_END):
            continue
        raw = entry[: -len(WORD_END)]
        try:
            word = bytes(decoder[ch] for ch in raw).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue  # a piece of a multi-byte character
        if len(word) >= 2 and word.isalpha():
            candidates.append((word, tid))
    if not candidates:
        return []
    encoded = tokenizer([w for w, _ in candidates], add_special_tokens=False).input_ids
    return [(w, tid) for (w, tid), ids in zip(candidates, encoded) if list(ids) == [tid]]


def builtin_words(words: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The built-in model's whole words that its text encoder was trained on (the words of its
    world's captions); its other entries are BPE word endings (ack, ange, ...) with no trained meaning."""
    from ..shapes.world import vocabulary

    trained = set(vocabulary())
    return [(w, tid) for w, tid in words if w in trained]


@handle_errors
def vocab_command(
    directory: Annotated[
        Path | None,
        typer.Argument(metavar="DIR", help="A project folder: list its model's words.", show_default="the built-in model"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", metavar="MODEL", help="builtin:tiny-shapes, a diffusers folder, a .safetensors/.ckpt file, or a hub id."),
    ] = None,
    model_config: Annotated[
        Path | None, typer.Option("--model-config", metavar="FOLDER", help="Local diffusers folder with the configs of a single-file model.")
    ] = None,
    contains: Annotated[str | None, typer.Option("--contains", metavar="TEXT", help="Only words containing TEXT (any case).")] = None,
    show_all: Annotated[bool, typer.Option("--all", metavar="", help=f"Print every word, even more than {SHOWN_MAX}.")] = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    """List the words the model has as one token, to choose an --init word from."""
    from rich.columns import Columns
    from rich.text import Text

    from ..engine.backbone import load_tokenizer, resolve_source
    from ..errors import InputError
    from ..project import DEFAULT_MODEL, Project

    if directory is not None and (model is not None or model_config is not None):
        raise InputError("Give a project folder or --model, not both.")
    if model_config is not None and model is None:
        raise InputError("--model-config goes with --model (the configs of a single-file model).")
    if directory is not None:
        project = Project.load(directory)
        spec, source = project.model, resolve_source(project.model, project.model_config, base=project.root)
    else:
        spec = model or DEFAULT_MODEL
        source = resolve_source(spec, str(model_config) if model_config else None)
    tokenizer = load_tokenizer(source)
    if tokenizer is None:
        raise InputError(
            f"The tokenizer of the single-file model {spec} is known only once the checkpoint is loaded; "
            "pass --model-config FOLDER, a local diffusers folder of the same architecture."
        )
    words = whole_words(tokenizer)
    if source.is_builtin:
        words = builtin_words(words)
    total = len(words)
    needle = contains.lower() if contains is not None else None
    if needle is not None:
        words = [(w, tid) for w, tid in words if needle in w.lower()]
    if json_out:
        print_json({"model": spec, "count": total, "contains": contains, "words": sorted(w for w, _ in words)})
        return
    if quiet:
        for word in sorted(w for w, _ in words):
            print_text(word)
        return
    cut = len(words) > SHOWN_MAX and not show_all
    shown = sorted(w for w, _ in (words[:SHOWN_MAX] if cut else words))
    trained = " (the words of its training captions)" if source.is_builtin else ""
    if needle is None:
        head = f"{spec} knows {total:,} word{'s' if total != 1 else ''} as single tokens{trained}"
    else:
        head = f"{len(words):,} of the {total:,} words {spec} knows as single tokens{trained} contain {contains!r}"
    if not words:
        print_text(head + ".")
        return
    if cut:
        head += (
            f"; below are the first {SHOWN_MAX} in the tokenizer's order (common words first). --contains TEXT searches "
            "all of them; --all or --json prints every one."
        )
    else:
        head += ":"
    print_text(head)
    console.print(Columns([Text(w) for w in shown], padding=(0, 2), equal=True, column_first=True))
    print_text(
        "Any of them can be an --init word; a word that is not listed is split into pieces, and only the first piece seeds the token."
    )
