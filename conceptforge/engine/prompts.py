"""Prompt templates per model, and finding concept tokens in prompts."""

from __future__ import annotations

import re

TOKEN_IN_PROMPT = re.compile(r"<[^<>\s]+>")


def training_prompt(tokens: list[str], background: list[bool], builtin: bool) -> str:
    """The prompt naming a subset of an image's concepts.

    SD: Break-a-Scene's "a photo of <c1> and <c2>".  The built-in model gets
    its own caption grammar, "a <c1> and a <c2> on a <c3>", background last.
    """
    if not builtin:
        return "a photo of " + " and ".join(tokens)
    objects = [t for t, bg in zip(tokens, background) if not bg]
    backs = [t for t, bg in zip(tokens, background) if bg]
    text = " and ".join(f"a {t}" for t in objects)
    if backs:
        text = (text + " on " if text else "") + f"a {backs[0]}"
    return text


def prompt_tokens(prompt: str) -> list[str]:
    """Every <token> written in a prompt."""
    return TOKEN_IN_PROMPT.findall(prompt)
