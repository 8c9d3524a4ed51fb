"""`conceptforge add-concept`, `conceptforge remove-concept` and `conceptforge concepts`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .common import JsonOut, ProjectDir, Quiet, console, handle_errors, print_json, print_text


def init_word_pieces(tokenizer, word: str) -> list[str]:
    """The tokenizer's pieces of an init word; InputError when it gives none or pieces the tokenizer does not know."""
    from ..errors import InputError

    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise InputError(f"The init word {word!r} gives no token in the model's vocabulary.")
    if set(ids) & set(tokenizer.all_special_ids):
        raise InputError(f"The init word {word!r} has characters the model's tokenizer does not know; choose a plain word, such as person.")
    return list(tokenizer.convert_ids_to_tokens(ids))


def model_image_size(source, settings: dict | None = None) -> int | None:  # noqa: ANN001
    """The side in pixels at which a project's images are learned: the `image_size`
    setting, else the model's own (UNet sample_size x the VAE's downscaling), read
    from the model's unet/ and vae/ config.json without loading weights; None when
    the configs cannot be read here (a single-file model without --model-config, a
    hub id not in the local cache)."""
    import json

    value = (settings or {}).get("image_size") if isinstance(settings, dict) else None
    if type(value) is int and value > 0:
        return value

    def config(part: str) -> dict:
        if source.kind in ("builtin", "folder"):
            path = source.path / part / "config.json"
        elif source.kind == "single_file" and source.config is not None:
            path = source.config / part / "config.json"
        elif source.kind == "hub":
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source.spec, f"{part}/config.json")
            path = Path(cached) if isinstance(cached, str) else None
        else:
            path = None
        if path is None:
            raise LookupError(part)
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(part)
        return data

    try:
        sample = config("unet").get("sample_size")
        channels = config("vae").get("block_out_channels")
    except (OSError, ValueError, LookupError, UnicodeDecodeError):
        return None
    if isinstance(sample, (list, tuple)) and sample:
        sample = sample[0]
    if type(sample) is not int or sample <= 0 or not isinstance(channels, (list, tuple)) or not channels:
        return None
    return sample * 2 ** (len(channels) - 1)


def size_note(width: int, height: int, size: int) -> str | None:
    """A note when an image of width x height is much larger than the side `size` it is learned
    at (more than 4x), or not square (the learner resizes every image to size x size)."""
    large = max(width, height) > 4 * size
    square = abs(width - height) <= 0.02 * max(width, height)
    crop = "crop it to a square around the concept first to keep its proportions"
    if large and square:
        return f"Note: the image is {width}x{height}; the model learns at {size}x{size} px, so the image is learned at that size."
    if large:
        return (
            f"Note: the image is {width}x{height}; the model learns at {size}x{size} px, so the image is learned at that size, "
            f"resized to a square ({crop})."
        )
    if not square:
        return f"Note: the image is {width}x{height}, not square; it is resized to a square of {size}x{size} px to be learned ({crop})."
    return None


@handle_errors
def add_concept_command(
    directory: ProjectDir,
    image: Annotated[Path, typer.Argument(help="An image showing the concept.", show_default=False)],
    token: Annotated[str, typer.Option("--token", "-t", help='The new token, in angle brackets: "<me>".')],
    init: Annotated[str | None, typer.Option("--init", help="A word of the model's vocabulary whose embedding seeds the token.")] = None,
    background: Annotated[bool, typer.Option("--background", help="The concept is the image's background.")] = False,
    gt_mask: Annotated[Path | None, typer.Option("--gt-mask", help="A human mask of the concept (white on black), for evaluation and --masks given.")] = None,
    quiet: Quiet = False,
) -> None:
    """Register a concept shown in an image."""
    from ..engine.backbone import load_tokenizer, resolve_source
    from ..engine.tokens import is_model_word
    from ..project import Project, check_image_file, validate_init_word, validate_token

    project = Project.load(directory)
    validate_token(token)
    if init is not None:
        validate_init_word(init)
    width, height = check_image_file(image)
    source = resolve_source(project.model, project.model_config, base=project.root)
    tokenizer = load_tokenizer(source)
    pieces = init_word_pieces(tokenizer, init) if tokenizer is not None and init else None
    check = (lambda t: is_model_word(tokenizer, t)) if tokenizer is not None else None
    size = model_image_size(source, project.settings)
    size_text = size_note(width, height, size) if size else None
    entry, concept = project.add_concept(image, token, init=init, background=background, gt_mask=gt_mask, is_model_word=check)
    if quiet:
        console.print(f"{entry.file} {concept.token}", markup=False, highlight=False, soft_wrap=True)
        return
    n = len(entry.concepts)
    console.print(f"Added [bold]{escape(concept.token)}[/] to images/{escape(entry.file)} ({n} concept{'s' if n != 1 else ''} on it).", soft_wrap=True)
    if pieces is not None and len(pieces) > 1:
        console.print(
            f"Note: the model's tokenizer splits the init word {init!r} into {len(pieces)} pieces ({' '.join(pieces)}); "
            f"the first, {pieces[0]}, seeds {concept.token}. `conceptforge vocab {directory}` lists the words the model has "
            "as one token.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if size_text:
        print_text(size_text)


@handle_errors
def remove_concept_command(
    directory: ProjectDir,
    token: Annotated[str, typer.Option("--token", "-t", help='The token to remove: "<me>".')],
    quiet: Quiet = False,
) -> None:
    """Remove a concept from the manifest (image and mask files stay in images/)."""
    from ..project import Project

    project = Project.load(directory)
    result = project.remove_concept(token)
    if quiet:
        for entry, removed in result:
            console.print(f"{entry.file} {'removed' if removed else 'kept'}", markup=False, highlight=False, soft_wrap=True)
        return
    gone = [entry.file for entry, removed in result if removed]
    text = f"Removed {token} from {len(result)} image{'s' if len(result) != 1 else ''}."
    if gone:
        text += (
            f" {', '.join('images/' + f for f in gone)} {'has' if len(gone) == 1 else 'have'} no concept left and left the "
            "manifest; the files stay in images/."
        )
    console.print(text, markup=False, highlight=False, soft_wrap=True)


@handle_errors
def list_command(directory: ProjectDir, json_out: JsonOut = False, quiet: Quiet = False) -> None:
    """List the project's images and concepts: which are learned, in which run, and their files."""
    from rich.table import Table

    from ..project import Project

    project = Project.load(directory)
    status = learned_status(project)
    rows = []
    for im, c in project.concepts():
        learned = status["tokens"].get(c.token, {"learned": False, "run": None, "files": []})
        rows.append(
            {"image": im.file, "token": c.token, "init": c.init, "background": c.background, "gt_mask": c.gt_mask,
             "learned": learned["learned"], "run": learned["run"], "files": learned["files"]}
        )
    if json_out:
        print_json({
            "model": project.model, "concepts": rows,
            **{k: status[k] for k in ("index", "weights", "exports", "last_run", "notes")},
        })
        return
    if quiet:
        for r in rows:
            print_text(f"{r['image']} {r['token']} {(r['run'] or 'learned') if r['learned'] else '-'}")
        return
    table = Table(title=escape(f"{project.root} — model {project.model}"))
    for col in ("image", "token", "init", "background", "gt mask", "learned"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            escape(r["image"]), escape(r["token"]), escape(r["init"] or ""), "yes" if r["background"] else "", escape(r["gt_mask"] or ""),
            "yes" if r["learned"] else "no",
        )
    console.print(table)
    for line in status_lines(status, project, directory):
        print_text(line)


def learned_status(project) -> dict:  # noqa: ANN001
    """What concepts/, export/ and runs/ say about the project's concepts.

    {"tokens": {token: {"learned", "run", "files"}}, "index": the checked concepts.json or None,
    "weights": the fine-tuned weights' path or None, "exports": [{"format", "folder", "files"}],
    "last_run": {"id", "status", "error"} or None, "notes": [sentences]}; paths are relative to the project."""
    from ..engine.export import LORA_FILE, read_index
    from ..engine.runs import list_runs
    from ..errors import InputError

    root = project.root
    notes: list[str] = []

    def rel(path: Path) -> str:
        return path.relative_to(root).as_posix()

    try:
        index = read_index(project.concepts_dir)
    except InputError as exc:
        index = None
        notes.append(str(exc))
    export_dirs = sorted(p for p in (root / "export").iterdir() if p.is_dir()) if (root / "export").is_dir() else []
    learned_tokens = index["tokens"] if index else []
    tokens: dict[str, dict] = {}
    missing = []
    for token in dict.fromkeys(project.tokens() + learned_tokens):
        name = token[1:-1]
        own = project.concepts_dir / f"{name}.safetensors"
        files = [rel(own)] if own.is_file() else []
        files += [rel(d / f"{name}.safetensors") for d in export_dirs if (d / f"{name}.safetensors").is_file()]
        learned = token in learned_tokens and own.is_file()
        if token in learned_tokens and not own.is_file():
            missing.append(token)
        tokens[token] = {"learned": learned, "run": index["run"] if learned else None, "files": files}
    if missing:
        notes.append(
            f"concepts/concepts.json lists {', '.join(missing)}, but {'its file is' if len(missing) == 1 else 'their files are'} "
            f"missing from concepts/; run `conceptforge learn {root}` again."
        )
    gone = [t for t in learned_tokens if t not in project.tokens()]
    if gone:
        notes.append(
            f"concepts/ also holds {', '.join(gone)}, learned in run {index['run']} but no longer a concept of the manifest."
        )
    if index and index.get("model") and index["model"] != project.model:
        notes.append(
            f"The concepts in concepts/ were learned on the model {index['model']}, but the project now uses {project.model}; "
            f"run `conceptforge learn {root}` to learn them on it."
        )
    weights = None
    if index and index["finetune"] == "lora":
        weights = rel(project.concepts_dir / LORA_FILE) if (project.concepts_dir / LORA_FILE).is_file() else None
        if weights is None:
            notes.append(f"The LoRA file concepts/{LORA_FILE} that concepts/concepts.json names is missing.")
    elif index and index["finetune"] == "full":
        weights = rel(project.concepts_dir / "unet") if (project.concepts_dir / "unet").is_dir() else None
        if weights is None:
            notes.append("The fine-tuned UNet folder concepts/unet that concepts/concepts.json names is missing.")
    exports = [
        {"format": d.name, "folder": rel(d), "files": sum(1 for p in d.rglob("*") if p.is_file())} for d in export_dirs
    ]
    last_run = None
    runs = list_runs(project.runs_dir)
    if runs:
        run = runs[-1]
        try:
            state = run.state()
        except InputError as exc:
            state = {"status": "unknown"}
            notes.append(str(exc))
        error = state.get("error")
        last_run = {"id": run.id, "status": state.get("status", "unknown"), "error": error if isinstance(error, str) else None}
    return {
        "tokens": tokens,
        "index": {k: index[k] for k in ("run", "model", "finetune", "tokens")} if index else None,
        "weights": weights,
        "exports": exports,
        "last_run": last_run,
        "notes": notes,
    }


def status_lines(status: dict, project, directory: Path) -> list[str]:  # noqa: ANN001
    """Sentences under the table: where the learned concepts are, what is not learned, how the last run ended."""
    from .common import strip_class_name

    lines = []
    index = status["index"]
    learned = [(t, v) for t, v in status["tokens"].items() if v["learned"]]
    if index and learned:
        kind = {"lora": "with a LoRA", "full": "with the UNet fine-tuned in full", "none": "tokens only"}[index["finetune"]]
        if status["weights"]:
            kind += f": {status['weights']}"
        lines.append((f"Learned in run {index['run']}" if index["run"] else "Learned") + f" ({kind}):")
        lines += [f"  {token}  {', '.join(v['files'])}" for token, v in learned]
    for export in status["exports"]:
        lines.append(f"Exported for {export['format']}: {export['folder']}/ ({export['files']} file{'s' if export['files'] != 1 else ''}).")
    waiting = [t for t in project.tokens() if not status["tokens"][t]["learned"]]
    if waiting:
        lines.append(
            f"Not learned yet: {', '.join(waiting)}; `conceptforge learn {directory}` learns "
            f"{'it' if len(waiting) == 1 else 'them'}."
        )
    run = status["last_run"]
    if run is not None and run["status"] != "finished":
        if run["status"] == "failed":
            reason = next((line for line in (run["error"] or "").splitlines() if line.strip()), "")
            reason = strip_class_name(reason).strip().rstrip(".") or "no error was recorded"
            if len(reason) > 300:
                reason = reason[:297] + "..."
            lines.append(
                f"The last run, {run['id']}, failed: {reason}. Fix the cause and run `conceptforge learn {directory}` "
                "to resume it, or add --no-resume to start over."
            )
        elif run["status"] == "interrupted":
            lines.append(f"The last run, {run['id']}, was interrupted; `conceptforge learn {directory}` resumes it.")
        elif run["status"] == "running":
            lines.append(
                f"The last run, {run['id']}, has not finished: it is running now, or was killed "
                f"(`conceptforge learn {directory}` resumes a killed run)."
            )
    lines += status["notes"]
    return lines
