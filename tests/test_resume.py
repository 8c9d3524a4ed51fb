"""An interrupted learn resumes from its last checkpoint, with the settings it
was started with; anything else is refused with the way on."""

from __future__ import annotations

import json

import pytest
import yaml

from cli_helpers import cf, make_project, tree_digest
from conceptforge.engine import losses, trainer
from conceptforge.engine.learn import learn_project


def _steps(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in line]


def _runs(proj):
    return sorted(p for p in (proj / "runs").iterdir() if p.is_dir())


def _kill_at(monkeypatch, n: int) -> None:
    """Make the n-th training step raise KeyboardInterrupt (a kill)."""
    original = trainer.Trainer.train_step
    calls = {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trainer.Trainer, "train_step", dying)


def _interrupted(proj, monkeypatch, n: int, settings: dict) -> None:
    """A learn of `proj` killed at its n-th training step."""
    _kill_at(monkeypatch, n)
    with pytest.raises(KeyboardInterrupt):
        learn_project(proj, settings)
    monkeypatch.undo()


def test_killed_run_resumes_from_checkpoint(tmp_path, tiny_model, scene_files, monkeypatch):
    proj = make_project(tmp_path, tiny_model, scene_files)
    _kill_at(monkeypatch, 6)  # a kill between checkpoints 4 and 6
    with pytest.raises(KeyboardInterrupt):
        learn_project(proj, {"em_steps": 8, "joint_steps": 2})
    (run,) = _runs(proj)
    assert json.loads((run / "state.json").read_text())["status"] == "interrupted"
    assert not (proj / "runs" / ".learn.lock").exists()
    monkeypatch.undo()

    r = cf("learn", proj, "--em-steps", "8", "--joint-steps", "2", "-q")
    assert r.exit_code == 0, r.output
    assert _runs(proj) == [run]
    em_steps = [s["step"] for s in _steps(run) if s.get("kind") == "step" and s["phase"] == "em"]
    assert em_steps == list(range(1, 9))  # step 5 (lost) redone once, nothing duplicated
    assert json.loads((run / "state.json").read_text())["status"] == "finished"


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_model, scene_files, monkeypatch):
    settings = {"em_steps": 8, "joint_steps": 4, "seed": 3}
    whole = make_project(tmp_path / "whole", tiny_model, scene_files)
    learn_project(whole, settings)
    cut = make_project(tmp_path / "cut", tiny_model, scene_files)
    _interrupted(cut, monkeypatch, 11, settings)  # in the joint phase, after its checkpoint at joint step 2
    learn_project(cut, settings)
    tokens_and_lora = {k: v for k, v in tree_digest(whole / "concepts").items() if k.endswith(".safetensors")}
    assert len(tokens_and_lora) == 4  # three tokens and the LoRA, bit for bit
    assert tokens_and_lora == {k: v for k, v in tree_digest(cut / "concepts").items() if k.endswith(".safetensors")}


def test_resume_with_other_settings_is_refused(tmp_path, tiny_model, scene_files, monkeypatch):
    proj = make_project(tmp_path, tiny_model, scene_files)
    _interrupted(proj, monkeypatch, 3, {"em_steps": 8, "joint_steps": 0})
    before = tree_digest(proj)
    r = cf("learn", proj, "--em-steps", "8", "--joint-steps", "0", "--masks", "fixed")
    assert r.exit_code == 2, r.output
    assert "masks 'em' (asked: 'fixed')" in r.output and "--no-resume" in r.output and "Traceback" not in r.output
    assert tree_digest(proj) == before
    # a setting changed in the manifest is asked for too
    manifest = proj / "conceptforge.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["settings"]["token_lr"] = 1e-4
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    r = cf("learn", proj, "--em-steps", "8", "--joint-steps", "0")
    assert r.exit_code == 2 and "token_lr" in r.output
    # the way on works: a new run with the settings asked for
    r = cf("learn", proj, "--em-steps", "2", "--joint-steps", "0", "--masks", "fixed", "--no-resume", "-q")
    assert r.exit_code == 0, r.output
    config = yaml.safe_load((_runs(proj)[-1] / "config.yaml").read_text())
    assert config["masks"] == "fixed" and config["token_lr"] == 1e-4


def test_concept_added_after_a_kill_is_refused_not_a_crash(tmp_path, tiny_model, scene_files, monkeypatch):
    proj = make_project(tmp_path, tiny_model, scene_files)
    _interrupted(proj, monkeypatch, 5, {"em_steps": 8, "joint_steps": 0})
    assert cf("add-concept", proj, scene_files["b"], "--token", "<v4>", "--init", "dog").exit_code == 0
    r = cf("learn", proj, "--em-steps", "8", "--joint-steps", "0")
    assert r.exit_code == 2 and "concepts or images changed" in r.output and "--no-resume" in r.output
    assert cf("learn", proj, "--em-steps", "2", "--joint-steps", "0", "--no-resume", "-q").exit_code == 0


def test_failure_before_the_run_starts_leaves_no_run(tmp_path, tiny_model, scene_files, monkeypatch):
    proj = make_project(tmp_path, tiny_model, scene_files)
    before = tree_digest(proj)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    r = cf("learn", proj, "--device", "cuda")
    assert r.exit_code == 2 and "CUDA" in r.output
    assert _runs(proj) == [] and tree_digest(proj) == before
    # and the next plain learn runs what it asks for, not a leftover run
    r = cf("learn", proj, "--em-steps", "1", "--joint-steps", "0", "--seed", "3", "-q")
    assert r.exit_code == 0, r.output
    (run,) = _runs(proj)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["em_steps"] == 1 and config["seed"] == 3
    assert [s["step"] for s in _steps(run) if s.get("kind") == "step"] == [1]


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, tiny_model, scene_files, monkeypatch):
    proj = make_project(tmp_path, tiny_model, scene_files)
    original = losses.masked_diffusion_loss
    calls = {"n": 0}

    def nan_on_third(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(losses, "masked_diffusion_loss", nan_on_third)
    r = cf("learn", proj, "--em-steps", "4", "-q")
    assert r.exit_code == 1
    assert "NaN" in r.output and "em step 3" in r.output and "step 2) is kept" in r.output and "Traceback" not in r.output
    (run,) = _runs(proj)
    assert (run / "checkpoints" / "state.safetensors").is_file()
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "failed" and "NaN" in state["error"]


def test_nan_before_any_checkpoint_says_so(tmp_path, tiny_model, scene_files, monkeypatch):
    proj = make_project(tmp_path, tiny_model, scene_files)
    monkeypatch.setattr(losses, "masked_diffusion_loss", lambda *a, **k: a[0].sum() * float("nan"))
    r = cf("learn", proj, "--em-steps", "4", "-q")
    assert r.exit_code == 1 and "no checkpoint had been written yet" in r.output
    assert "last good checkpoint" not in r.output


def test_diverged_tokens_are_never_exported(tmp_path, tiny_model, scene_files, monkeypatch):
    proj = make_project(tmp_path, tiny_model, scene_files)
    original = trainer.Trainer.train_step

    def blow_up(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        with __import__("torch").no_grad():
            self.model.rows.rows.mul_(1e30)
        return out

    monkeypatch.setattr(trainer.Trainer, "train_step", blow_up)
    r = cf("learn", proj, "--em-steps", "1", "--joint-steps", "0", "-q")
    assert r.exit_code == 1 and "diverged" in r.output
    assert not (proj / "concepts").exists()


def test_second_learn_refuses_while_locked(tmp_path, tiny_model, scene_files):
    import os

    proj = make_project(tmp_path, tiny_model, scene_files)
    lock = proj / "runs" / ".learn.lock"
    lock.write_text(str(os.getppid()))  # a live process holds it
    r = cf("learn", proj, "-q")
    assert r.exit_code == 2 and "Another learn is running" in r.output
    lock.write_text("999999")  # a dead process: a stale lock is taken over
    assert cf("learn", proj, "--em-steps", "1", "--joint-steps", "0", "-q").exit_code == 0


def test_skip_finished_leaves_learned_projects(tmp_path, tiny_model, scene_files):
    done = make_project(tmp_path / "done", tiny_model, scene_files)
    todo = make_project(tmp_path / "todo", tiny_model, scene_files)
    assert cf("learn", done, "--em-steps", "1", "--joint-steps", "0", "-q").exit_code == 0
    before = tree_digest(done)
    r = cf("learn", done, todo, "--em-steps", "1", "--joint-steps", "0", "--skip-finished", "--json")
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    assert [line["skipped"] for line in lines] == [True, False]
    assert tree_digest(done) == before and len(_runs(todo)) == 1
    # a concept added since: learned again
    assert cf("add-concept", done, scene_files["b"], "--token", "<v4>", "--init", "dog").exit_code == 0
    r = cf("learn", done, "--em-steps", "1", "--joint-steps", "0", "--skip-finished", "--json")
    assert json.loads(r.output.splitlines()[-1])["skipped"] is False and len(_runs(done)) == 2
