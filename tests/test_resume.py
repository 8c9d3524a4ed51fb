"""An interrupted learn resumes from its last checkpoint."""

from __future__ import annotations

import json

import pytest

from cli_helpers import cf, make_project
from conceptforge.engine import em
from conceptforge.engine.learn import learn_project


def _steps(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in line]


def test_killed_run_resumes_from_checkpoint(tmp_path, tiny_model, scene_files, monkeypatch):
    proj = make_project(tmp_path, tiny_model, scene_files)
    original = em.Learner._train_step
    calls = {"n": 0}

    def dying(self):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # a kill between checkpoints 4 and 6
        return original(self)

    monkeypatch.setattr(em.Learner, "_train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        learn_project(proj, {"em_steps": 8, "joint_steps": 2})
    run = next(p for p in (proj / "runs").iterdir() if p.is_dir())
    assert json.loads((run / "state.json").read_text())["status"] == "interrupted"
    assert not (proj / "runs" / ".learn.lock").exists()
    monkeypatch.setattr(em.Learner, "_train_step", original)

    r = cf("learn", proj, "-q")
    assert r.exit_code == 0, r.output
    assert [p for p in (proj / "runs").iterdir() if p.is_dir()] == [run]
    em_steps = [s["step"] for s in _steps(run) if s.get("kind") == "step" and s["phase"] == "em"]
    assert em_steps == list(range(1, 9))  # steps 5 (lost) redone once, nothing duplicated
    assert json.loads((run / "state.json").read_text())["status"] == "finished"


def test_no_resume_starts_a_new_run(tmp_path, tiny_model, scene_files):
    proj = make_project(tmp_path, tiny_model, scene_files)
    assert cf("learn", proj, "--em-steps", "2", "--joint-steps", "0", "-q").exit_code == 0
    assert cf("learn", proj, "--em-steps", "2", "--joint-steps", "0", "--no-resume", "-q").exit_code == 0
    assert len([p for p in (proj / "runs").iterdir() if p.is_dir()]) == 2


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, tiny_model, scene_files, monkeypatch):
    proj = make_project(tmp_path, tiny_model, scene_files)
    original = em.masked_diffusion_loss
    calls = {"n": 0}

    def nan_on_third(pred, noise, mask):
        calls["n"] += 1
        loss = original(pred, noise, mask)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(em, "masked_diffusion_loss", nan_on_third)
    r = cf("learn", proj, "--em-steps", "4", "-q")
    assert r.exit_code == 1
    assert "NaN" in r.output and "Traceback" not in r.output
    run = next(p for p in (proj / "runs").iterdir() if p.is_dir())
    assert (run / "checkpoints" / "state.pt").is_file()
    assert json.loads((run / "state.json").read_text())["status"] == "failed"


def test_second_learn_refuses_while_locked(tmp_path, tiny_model, scene_files):
    import os

    proj = make_project(tmp_path, tiny_model, scene_files)
    lock = proj / "runs" / ".learn.lock"
    lock.write_text(str(os.getppid()))  # a live process holds it
    r = cf("learn", proj, "-q")
    assert r.exit_code == 2 and "Another learn is running" in r.output
    lock.write_text("999999")  # a dead process: a stale lock is taken over
    assert cf("learn", proj, "--em-steps", "1", "--joint-steps", "0", "-q").exit_code == 0
