"""Run folders: a damaged state.json is an error, metrics can be cleared, and the project lock
tells a live learn from a stale lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conceptforge.engine.runs import LOCK_NAME, ProjectLock, RunDir, new_run
from conceptforge.errors import InputError, ProjectBusyError
from conceptforge.fsutil import append_jsonl

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


# -- state.json ------------------------------------------------------------------


def test_missing_state_is_unknown(tmp_path):
    assert RunDir(tmp_path).state() == {"status": "unknown"}


def test_state_round_trip(tmp_path):
    run = new_run(tmp_path / "runs", "em")
    run.set_state(status="failed", error="x")
    assert run.state()["status"] == "failed" and run.state()["error"] == "x"


@pytest.mark.parametrize("text", ['{"status": "runn', "", "[1, 2]", '"running"', "null", "\xff\xfe"])
def test_unreadable_state_is_an_input_error(tmp_path, text):
    run = RunDir(tmp_path / "runs" / "r1")
    run.path.mkdir(parents=True)
    path = run.path / "state.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError) as info:
        run.state()
    message = str(info.value)
    assert str(path) in message and "--no-resume" in message and "\n" not in message
    with pytest.raises(InputError):
        run.set_state(status="running")  # refused: the file is left as it was
    assert path.read_bytes() == text.encode("latin-1")


def test_clear_metrics(tmp_path):
    run = new_run(tmp_path / "runs", "em")
    for step in (1, 2):
        append_jsonl(run.metrics_path, {"kind": "step", "phase": "em", "step": step})
    assert len(run.metrics()) == 2
    run.clear_metrics()
    assert run.metrics_path.read_text() == "" and run.metrics() == []
    append_jsonl(run.metrics_path, {"kind": "step", "phase": "em", "step": 1})
    assert run.metrics() == [{"kind": "step", "phase": "em", "step": 1}]


# -- the project lock ------------------------------------------------------------------


def start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat, read here independently of the package."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[19])


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(runs: Path, content) -> Path:
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / LOCK_NAME
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def assert_taken(runs: Path) -> None:
    with ProjectLock(runs) as lock:
        held = json.loads(lock.path.read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    assert not (runs / LOCK_NAME).exists()
    assert [p.name for p in runs.iterdir()] == []  # nothing left beside it


def assert_refused(runs: Path) -> None:
    path = runs / LOCK_NAME
    before = path.read_bytes()
    with pytest.raises(ProjectBusyError) as info:
        with ProjectLock(runs):
            pytest.fail("the lock was taken")
    message = str(info.value)
    assert f"if no learn is running on this project, delete {path}" in message and "\n" not in message
    assert path.read_bytes() == before  # left as it was


@needs_proc
def test_lock_records_pid_host_and_start_time(tmp_path):
    with ProjectLock(tmp_path) as lock:
        held = json.loads(lock.path.read_text())
    assert held["pid"] == os.getpid()
    assert held["host"] == socket.gethostname()
    assert held["started"] == start_time(os.getpid())


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    with ProjectLock(tmp_path):
        assert_refused(tmp_path)
    assert_taken(tmp_path)


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
    write_lock(tmp_path, {"pid": dead_pid(), "host": socket.gethostname(), "started": 1})
    assert_taken(tmp_path)


def test_older_bare_pid_lock_of_a_dead_pid_is_taken_over(tmp_path):
    write_lock(tmp_path, f"{dead_pid()}\n")
    assert_taken(tmp_path)


def test_older_bare_pid_lock_of_a_live_pid_is_refused(tmp_path):
    write_lock(tmp_path, str(os.getppid()))
    assert_refused(tmp_path)


@needs_proc
def test_live_pid_with_another_start_time_is_taken_over(tmp_path):
    parent = os.getppid()
    write_lock(tmp_path, {"pid": parent, "host": socket.gethostname(), "started": start_time(parent) + 1})
    assert_taken(tmp_path)


@needs_proc
def test_live_pid_with_the_same_start_time_is_refused(tmp_path):
    parent = os.getppid()
    write_lock(tmp_path, {"pid": parent, "host": socket.gethostname(), "started": start_time(parent)})
    assert_refused(tmp_path)


@needs_proc
def test_lock_from_before_a_reboot_is_taken_over(tmp_path):
    boot = Path("/proc/sys/kernel/random/boot_id")
    if not boot.exists():
        pytest.skip("no boot id")
    parent = os.getppid()
    write_lock(tmp_path, {"pid": parent, "host": socket.gethostname(), "started": start_time(parent), "boot": "another-boot"})
    assert_taken(tmp_path)
    write_lock(tmp_path, {"pid": parent, "host": socket.gethostname(), "started": start_time(parent), "boot": boot.read_text().strip()})
    assert_refused(tmp_path)


def test_lock_of_another_host_is_refused(tmp_path):
    write_lock(tmp_path, {"pid": dead_pid(), "host": socket.gethostname() + "-elsewhere", "started": 1})
    assert_refused(tmp_path)


@pytest.mark.parametrize("content", ["", "garbage", "-1", "0", '{"pid": "12"}', '{"pid": true}', '{"pid": 5, "started": "x"}'])
def test_unreadable_lock_is_taken_over(tmp_path, content):
    write_lock(tmp_path, content)
    assert_taken(tmp_path)


def test_release_keeps_a_lock_that_is_not_ours(tmp_path):
    lock = ProjectLock(tmp_path)
    with lock:
        lock.path.unlink()
        other = {"pid": os.getppid(), "host": socket.gethostname(), "started": 5}
        write_lock(tmp_path, other)
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == other


def test_lock_in_a_new_runs_folder(tmp_path):
    assert_taken(tmp_path / "project" / "runs")
