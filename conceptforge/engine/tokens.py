"""Concept tokens: add them to a tokenizer/text encoder, initialise, keep the
other embedding rows frozen, save and load in the diffusers textual-inversion
layout ({token: tensor(1, dim)} per safetensors file)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from ..fsutil import atomic_write


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
    """One safetensors per token: {token: tensor(1, dim)}, named after the token."""
    from safetensors.torch import save_file

    paths = []
    for token, vec in embeddings.items():
        path = out_dir / f"{token[1:-1]}.safetensors"
        atomic_write(path, lambda tmp, v=vec, t=token: save_file({t: v.reshape(1, -1).contiguous()}, str(tmp)))
        paths.append(path)
    return paths


def load_concept_files(paths: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in paths:
        for token, vec in load_file(str(path)).items():
            out[token] = vec.reshape(-1)
    return out


def install_concepts(tokenizer, text_encoder, embeddings: dict[str, torch.Tensor]) -> None:
    """Add learned tokens to a tokenizer/text encoder with their embeddings."""
    new = [t for t in embeddings if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    set_concept_embeddings(text_encoder, tokenizer, embeddings)
