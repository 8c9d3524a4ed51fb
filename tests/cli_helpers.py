"""Helpers for driving the CLI in tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from typer.testing import CliRunner

from conceptforge.cli.main import app

runner = CliRunner()


def cf(*args: str):
    """Run `conceptforge ARGS` in-process; return the click Result."""
    return runner.invoke(app, [str(a) for a in args])


def tree_digest(root: Path) -> dict[str, str]:
    """Path -> sha256 of every file under root (to prove nothing changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


FAST_SETTINGS = {"em_warmup": 2, "mask_every": 2, "init_mask_timesteps": 4, "mask_timesteps": 2, "checkpoint_every": 2}


def make_project(root: Path, model: Path, files: dict[str, Path]) -> Path:
    """init + three concepts over two images, with fast learn settings."""
    import yaml

    proj = root / "proj"
    assert cf("init", proj, "--model", model).exit_code == 0
    r = cf("add-concept", proj, files["a"], "--token", "<v1>", "--init", "dog", "--gt-mask", files["a0"])
    assert r.exit_code == 0, r.output
    assert cf("add-concept", proj, files["a"], "--token", "<v2>", "--init", "cat", "--gt-mask", files["a1"]).exit_code == 0
    assert cf("add-concept", proj, files["b"], "--token", "<v3>", "--background", "--init", "background").exit_code == 0
    manifest = proj / "conceptforge.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["settings"] = dict(FAST_SETTINGS)
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    return proj


def learned_project(root: Path, model: Path) -> Path:
    """A project of two drawn scenes learned once (2 EM + 2 joint steps, LoRA)."""
    from conftest import draw_scene

    src = root / "src"
    src.mkdir()
    a, (a0, a1) = draw_scene(src / "first.png", 1)
    b, _ = draw_scene(src / "second.png", 2)
    proj = make_project(root, model, {"a": a, "a0": a0, "a1": a1, "b": b})
    r = cf("learn", proj, "--em-steps", "2", "--joint-steps", "2", "-q")
    assert r.exit_code == 0, r.output
    return proj
