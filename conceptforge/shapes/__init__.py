"""The built-in world of coloured shapes and its trained model."""

from __future__ import annotations

from pathlib import Path

from .world import COLORS, SHAPES, Scene, SceneObject, sample_scene

MODEL_DIR = Path(__file__).resolve().parent / "tiny_shapes"


def model_path() -> Path:
    """The diffusers folder of the built-in model `builtin:tiny-shapes`."""
    if not (MODEL_DIR / "model_index.json").is_file():
        from ..errors import ConceptforgeError

        raise ConceptforgeError(f"The built-in model is missing from {MODEL_DIR}; reinstall conceptforge.")
    return MODEL_DIR


__all__ = ["COLORS", "SHAPES", "Scene", "SceneObject", "sample_scene", "model_path", "MODEL_DIR"]
