"""Concept tokens: add them to a tokenizer/text encoder, initialise, keep the
other embedding rows frozen, save and load in the diffusers textual-inversion
layout ({token: tensor(1, dim)} per safetensors file).

Stable Diffusion XL concepts have a row in each text encoder and are stored
in the layout of SDXL embedding files (diffusers' documentation, AUTOMATIC1111
and ComfyUI): {"clip_l": tensor(1, 768), "clip_g": tensor(1, 1280)} per file,
the first and the second text encoder's rows.  In memory such a concept is
the dict {"clip_l": row, "clip_g": row}; an SD 1.x/2.x concept is one row.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import ConceptforgeError, InputError
from ..fsutil import atomic_write

# A CLIP token embedding row has an L2 norm of about 0.2 to 1 (the built-in
# model: median 0.22, largest 0.42; Stable Diffusion 1.x/2.x: about 0.4), and a
# learned row drifts to a few times that.  A row with a norm above this bound,
# a thousand times a typical one, comes only from a diverged run or a damaged
# or foreign file; it saturates the text encoder (in half precision, to inf)
# and the sampler then writes black images.
MAX_EMBEDDING_NORM = 1000.0
MAX_EMBEDDING_WIDTH = 1 << 16  # text encoders are 512 to 4096 wide; the header is checked before any read
FINETUNE_KINDS = ("none", "lora", "full")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
XL_KEYS = ("clip_l", "clip_g")  # an SDXL concept's rows: text_encoder's, text_encoder_2's


def is_model_word(tokenizer, token: str) -> bool:
    """True when the token already is one token of the tokenizer's vocabulary."""
    vocab = tokenizer.get_vocab()
    return token in vocab or token.lower() in vocab or (token.lower() + "</w>") in vocab


def init_word_id(tokenizer, word: str) -> int:
    """The id of the first sub-token of an init word."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise InputError(f"The init word {word!r} gives no token in the model's vocabulary.")
    return int(ids[0])


def add_concept_tokens(tokenizer, text_encoder, tokens: list[str], init_words: dict[str, str | None], seed: int = 0) -> list[int]:
    """Add the tokens (new ones only), initialise their rows, return their ids."""
    new = [t for t in tokens if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    table = text_encoder.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        base = table[: len(tokenizer) - len(new)]
        mean, std = base.mean(dim=0), base.std(dim=0)
        for token, tid in zip(tokens, ids):
            if token not in new:
                continue
            word = init_words.get(token)
            if word:
                table[tid] = table[init_word_id(tokenizer, word)].clone()
            else:
                table[tid] = (mean + std * torch.randn(mean.shape, generator=gen)).to(table.dtype)
    return list(ids)


class ConceptRows(torch.nn.Module):
    """Trainable embedding rows of the concept tokens, swapped into the text
    encoder's input embeddings by a forward hook; every other row stays as it
    was, and only these rows get gradients and optimiser state."""

    def __init__(self, text_encoder, concept_ids: list[int]):
        super().__init__()
        table = text_encoder.get_input_embeddings().weight
        self.ids = list(concept_ids)
        self.rows = torch.nn.Parameter(table[self.ids].detach().float().clone())
        self._handle = text_encoder.get_input_embeddings().register_forward_hook(self._swap)

    def _swap(self, module, inputs, output):
        ids = inputs[0]
        for k, tid in enumerate(self.ids):
            hit = (ids == tid).unsqueeze(-1)
            output = torch.where(hit, self.rows[k].to(output.dtype), output)
        return output


def set_concept_embeddings(text_encoder, tokenizer, embeddings: dict[str, torch.Tensor]) -> None:
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, vec in embeddings.items():
            table[tokenizer.convert_tokens_to_ids(token)] = vec.reshape(-1).to(table.device, table.dtype)


def save_concept_files(out_dir: Path, embeddings: dict[str, torch.Tensor]) -> list[Path]:
    """One safetensors per token: {token: tensor(1, dim)}, named after the token.
    An embedding that `embedding_problem` faults is never written."""
    from safetensors.torch import save_file

    for token, vec in embeddings.items():
        parts = [vec[k] for k in XL_KEYS] if isinstance(vec, Mapping) else [vec]
        problem = next((found for part in parts if (found := embedding_problem(part.detach().cpu())) is not None), None)
        if problem is not None:
            raise ConceptforgeError(f"The learned embedding of {token} is not usable ({problem}); no concept file was written.")
    paths = []
    for token, vec in embeddings.items():
        path = out_dir / f"{token[1:-1]}.safetensors"
        atomic_write(path, lambda tmp, v=vec, t=token: save_file(embedding_tensors(t, v), str(tmp)))
        paths.append(path)
    return paths


def embedding_tensors(token: str, vec) -> dict[str, torch.Tensor]:
    """A concept file's tensors: {token: (1, dim)}, or for an SDXL concept
    {"clip_l": (1, dim_l), "clip_g": (1, dim_g)}."""
    if isinstance(vec, Mapping):
        return {key: vec[key].detach().float().cpu().reshape(1, -1).contiguous() for key in XL_KEYS}
    return {token: vec.reshape(1, -1).contiguous()}


def embedding_problem(vec: torch.Tensor, width: int | None = None) -> str | None:
    """What is wrong with a concept embedding, as a phrase, or None when it is usable.

    Usable: a floating-point vector of shape (dim,) or (1, dim) with every
    value finite and an L2 norm of at most MAX_EMBEDDING_NORM (and dim equal
    to `width`, the text encoder's, when given).
    """
    if not torch.is_floating_point(vec):
        return f"its values are of type {str(vec.dtype).removeprefix('torch.')}, not floating point"
    if vec.dim() not in (1, 2) or (vec.dim() == 2 and vec.shape[0] != 1) or vec.numel() == 0:
        return f"its shape is {tuple(vec.shape)}, not (1, width)"
    flat = vec.reshape(-1).float()
    if width is not None and flat.numel() != width:
        return f"it is {flat.numel()} values wide but the model's text embeddings are {width} wide"
    if not bool(torch.isfinite(flat).all()):
        return "it holds NaN or infinite values"
    norm = float(flat.double().norm())
    if norm > MAX_EMBEDDING_NORM:
        return f"its norm is {norm:.3g}, far above a text embedding's (about 0.2 to 1; at most {MAX_EMBEDDING_NORM:g} is accepted)"
    return None


def check_embedding(token: str, vec: torch.Tensor, path: Path | str, width: int | None = None) -> torch.Tensor:
    """The embedding of `token` read from `path` as a 1-D float tensor, or an
    InputError naming the file when `embedding_problem` finds a fault."""
    problem = embedding_problem(vec, width)
    if problem is not None:
        raise InputError(f"The concept file {path} cannot be used for {token}: {problem}; run `conceptforge learn` again.")
    return vec.reshape(-1)


def load_concept_file(path: Path, token: str, width: int | None = None) -> torch.Tensor:
    """Read and check one concept file: a safetensors file holding exactly one
    tensor, stored under `token`, that passes `check_embedding`.  The header
    is checked before any tensor is read."""
    from safetensors import safe_open

    if not path.is_file():
        raise InputError(f"The concept file {path} is missing; run `conceptforge learn` again.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
            if sorted(keys) == sorted(XL_KEYS):  # an SDXL concept: one row per text encoder
                vecs = {key: _read_row(fh, key, path, token) for key in XL_KEYS}
            else:
                if len(keys) != 1:
                    raise InputError(
                        f"The concept file {path} holds {len(keys)} tensors; a concept file holds one, stored under its token {token} "
                        "(or, for SDXL, clip_l and clip_g)."
                    )
                if keys[0] != token:
                    raise InputError(f"The concept file {path} holds the token {keys[0]!r}, not {token} as concepts.json says.")
                vec = _read_row(fh, token, path, token)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable header"
        raise InputError(f"The concept file {path} is damaged or not a safetensors file ({detail}).") from None
    if sorted(keys) == sorted(XL_KEYS):
        widths = width if isinstance(width, Mapping) else {}
        return {key: check_embedding(f"{token} ({key})", v, path, widths.get(key)) for key, v in vecs.items()}
    if isinstance(width, Mapping):
        raise InputError(f"The concept file {path} holds one text encoder's row for {token}, but the model is SDXL, which needs clip_l and clip_g.")
    return check_embedding(token, vec, path, width)


def _read_row(fh, key: str, path: Path, token: str) -> torch.Tensor:
    """One tensor of an open concept file, its header checked before it is read."""
    shape = fh.get_slice(key).get_shape()
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[0] != 1):
        raise InputError(f"The concept file {path} cannot be used for {token}: its shape is {tuple(shape)}, not (1, width).")
    if shape[-1] > MAX_EMBEDDING_WIDTH:
        raise InputError(f"The concept file {path} cannot be used for {token}: it is {shape[-1]} values wide, more than any text encoder's {MAX_EMBEDDING_WIDTH}.")
    return fh.get_tensor(key)


def load_concept_files(files: Mapping[str, Path] | Sequence[Path], width: int | None = None) -> dict[str, torch.Tensor]:
    """Token -> 1-D embedding from concept files, each checked by `load_concept_file`.

    `files` maps each token to its file, or lists files named after their
    tokens (`v1.safetensors` holds `<v1>`).  With `width`, every embedding
    must have the text encoder's width; without it, all must share one width.
    """
    pairs = list(files.items()) if isinstance(files, Mapping) else [(f"<{Path(p).stem}>", Path(p)) for p in files]
    out: dict[str, Any] = {}
    for token, path in pairs:
        vec = load_concept_file(Path(path), token, width)
        if width is None and out:
            first_token, first = next(iter(out.items()))
            if _widths(first) != _widths(vec):
                raise InputError(
                    f"The concept file {path} is {_widths(vec)} values wide but {first_token}'s is {_widths(first)}; "
                    "they were not learned on one model."
                )
        out[token] = vec
    return out


def _widths(vec) -> str:
    """A concept's width as words: "768", or "768 + 1280" for an SDXL concept."""
    if isinstance(vec, Mapping):
        return " + ".join(str(vec[k].numel()) for k in XL_KEYS)
    return str(vec.numel())


def install_pipeline_concepts(pipe, embeddings: Mapping[str, Any], files: Mapping[str, Path]) -> None:
    """Check learned concepts against a loaded pipeline's text encoders (their
    family and widths) and install them: an SD concept into `text_encoder`, an
    SDXL concept's clip_l row into `text_encoder` and clip_g row into `text_encoder_2`."""
    second = getattr(pipe, "text_encoder_2", None)
    for token, vec in embeddings.items():
        if isinstance(vec, Mapping) != (second is not None):
            learned, model = ("SDXL", "an SD 1.x/2.x") if isinstance(vec, Mapping) else ("SD 1.x/2.x", "an SDXL")
            raise InputError(f"The concept file {files[token]} was learned on an {learned} model, and this is {model} model.")
        if second is None:
            check_embedding(token, vec, files[token], pipe.text_encoder.get_input_embeddings().embedding_dim)
        else:
            for key, encoder in zip(XL_KEYS, (pipe.text_encoder, second)):
                check_embedding(f"{token} ({key})", vec[key], files[token], encoder.get_input_embeddings().embedding_dim)
    if second is None:
        install_concepts(pipe.tokenizer, pipe.text_encoder, dict(embeddings))
        return
    install_concepts(pipe.tokenizer, pipe.text_encoder, {t: v["clip_l"] for t, v in embeddings.items()})
    install_concepts(pipe.tokenizer_2, second, {t: v["clip_g"] for t, v in embeddings.items()})


def check_concept_index(path: Path) -> dict[str, Any]:
    """Read and check a concepts.json: a JSON object with `tokens` (distinct
    tokens such as <v1>), `run` (a run folder name or null), `finetune`
    (none | lora | full) and `model`; an InputError names the file and the fault."""
    import json

    from ..project import TOKEN_PATTERN

    def bad(what: str) -> InputError:
        return InputError(f"The concepts index {path} is damaged: {what}; run `conceptforge learn` again.")

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("it is not valid JSON") from None
    except OSError as exc:
        raise InputError(f"The concepts index {path} cannot be read ({exc.strerror or exc}).") from None
    if not isinstance(raw, dict):
        raise bad("it is not a JSON object")
    tokens = raw.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise bad("tokens must be a list of tokens such as <v1>")
    wrong = next((t for t in tokens if not TOKEN_PATTERN.match(t)), None)
    if wrong is not None:
        raise bad(f"{wrong!r} is not a token (a name in angle brackets, such as <v1>)")
    twice = next((t for t in tokens if tokens.count(t) > 1), None)
    if twice is not None:
        raise bad(f"the token {twice} is listed twice")
    run = raw.get("run")
    if run is not None and (not isinstance(run, str) or not RUN_NAME.match(run)):
        raise bad(f"run {run!r} is not the name of a run folder")
    finetune = raw.get("finetune", "none")
    if finetune not in FINETUNE_KINDS:
        raise bad(f"finetune {finetune!r} is not one of {', '.join(FINETUNE_KINDS)}")
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise bad("model must be a string")
    return dict(raw, tokens=list(tokens), run=run, finetune=finetune, model=model)


def install_concepts(tokenizer, text_encoder, embeddings: dict[str, torch.Tensor]) -> None:
    """Add learned tokens to a tokenizer/text encoder with their embeddings."""
    new = [t for t in embeddings if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    set_concept_embeddings(text_encoder, tokenizer, embeddings)
