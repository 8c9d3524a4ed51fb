"""Resumable checkpoints of a run: one state file, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..fsutil import atomic_write

STATE_FILE = "state.pt"


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    path = folder / STATE_FILE
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, weights_only=False, map_location="cpu")
