"""Careful file writes: modes like open(), durable appends, stale temporary files removed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conceptforge import fsutil
from conceptforge.engine.masks import save_mask_png, save_soft_png
from conceptforge.fsutil import append_jsonl, atomic_write, current_umask, remove_stale_temp_files, write_text_atomic, write_yaml_atomic


@pytest.fixture
def umask():
    """Set the umask for one test, restore it after."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027])
def test_new_files_get_the_mode_of_a_plain_open(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    for name, write in [
        ("a.txt", lambda p: write_text_atomic(p, "hello")),
        ("b.yaml", lambda p: write_yaml_atomic(p, {"a": 1})),
        ("c.bin", lambda p: atomic_write(p, lambda tmp: tmp.write_bytes(b"\0"))),
        ("d.png", lambda p: save_mask_png(np.ones((2, 2), bool), p)),
        ("e.png", lambda p: save_soft_png(np.ones((2, 2), np.float32), p)),
    ]:
        write(tmp_path / name)
        assert mode(tmp_path / name) == 0o666 & ~mask == mode(plain), name


def test_new_file_mode_when_the_writer_replaces_the_temp_file(tmp_path, umask):
    umask(0o022)

    def replace(tmp: Path) -> None:  # a writer that unlinks and recreates its output
        tmp.unlink()
        tmp.write_text("new")

    atomic_write(tmp_path / "r.txt", replace)
    assert mode(tmp_path / "r.txt") == 0o644


def test_replacing_a_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "keep.txt"
    path.write_text("old")
    path.chmod(0o600)
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o600


def test_umask_is_read_without_changing_it(tmp_path, umask):
    umask(0o027)
    current_umask()
    current_umask()
    assert os.umask(0o027) == 0o027


def test_umask_fallback_without_proc(monkeypatch, umask):
    umask(0o037)
    real_open = open

    def no_proc(path, *a, **k):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", no_proc)
    assert current_umask() == 0o037
    monkeypatch.undo()
    assert os.umask(0o037) == 0o037  # restored


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("old")

    def boom(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_atomic_write_flushes_before_the_rename(tmp_path, monkeypatch):
    path = tmp_path / "d.txt"
    synced: list[bool] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(path.exists())
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    write_text_atomic(path, "data")
    assert synced and synced[0] is False  # the temporary file is synced before it takes the name


def test_run_pictures_are_replaced_atomically_without_flushes(tmp_path, monkeypatch):
    synced: list[int] = []
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: synced.append(fd))
    save_mask_png(np.ones((2, 2), bool), tmp_path / "m.png")
    save_mask_png(np.zeros((2, 2), bool), tmp_path / "m.png")
    assert synced == [] and [p.name for p in tmp_path.iterdir()] == ["m.png"]
    write_text_atomic(tmp_path / "t.txt", "data")
    assert synced  # the durable writers still flush


def test_append_jsonl_syncs_each_line(tmp_path, monkeypatch):
    path = tmp_path / "m.jsonl"
    seen: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        seen.append(path.read_text())  # what is in the file when it is synced
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    append_jsonl(path, {"a": 1})
    append_jsonl(path, {"b": 2})
    assert seen == ['{"a": 1}\n', '{"a": 1}\n{"b": 2}\n']


def test_append_after_a_line_cut_short(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"step": 1})
    with path.open("a") as fh:
        fh.write('{"step": 2, "lo')  # a kill while writing
    append_jsonl(path, {"step": 3})
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"step": 1} and json.loads(lines[-1]) == {"step": 3}
    assert len(lines) == 3


def test_append_jsonl_file_mode(tmp_path, umask):
    umask(0o022)
    append_jsonl(tmp_path / "m.jsonl", {"a": 1})
    assert mode(tmp_path / "m.jsonl") == 0o644


def test_kill_during_append_loses_at_most_that_line(tmp_path):
    path = tmp_path / "m.jsonl"
    code = (
        "import sys; from pathlib import Path; from conceptforge.fsutil import append_jsonl\n"
        "p = Path(sys.argv[1])\n"
        "for i in range(100000): append_jsonl(p, {'step': i, 'pad': 'x' * 200})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)])
    deadline = time.time() + 30
    while time.time() < deadline and (not path.exists() or path.stat().st_size < 2000):
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    lines = path.read_text().splitlines()
    good = [json.loads(line) for line in lines[:-1]]
    assert [r["step"] for r in good] == list(range(len(good)))
    append_jsonl(path, {"step": "after"})
    assert json.loads(path.read_text().splitlines()[-1]) == {"step": "after"}


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def test_remove_stale_temp_files(tmp_path):
    (tmp_path / "runs" / "r1" / "checkpoints").mkdir(parents=True)
    stale = [
        tmp_path / ".config.yaml.a1b2c3d4.tmp",
        tmp_path / "runs" / "r1" / "checkpoints" / ".state.safetensors.x_9yz012.tmp",
        tmp_path / "runs" / ".learn.lock.abcdefgh.tmp",
    ]
    fresh = tmp_path / "runs" / ".metrics.jsonl.qwertyui.tmp"
    kept = [
        tmp_path / "notes.tmp",  # not hidden
        tmp_path / ".hidden",  # not .tmp
        tmp_path / ".x.tmp",  # not our pattern
        tmp_path / ".a.short.tmp",  # random part not 8 characters
        tmp_path / "runs" / "r1" / "state.json",
    ]
    for p in stale + kept + [fresh]:
        p.write_text("")
        _age(p, 3600)
    _age(fresh, 1)
    folder = tmp_path / ".dir.abcdefgh.tmp"  # a folder with the name is left alone
    folder.mkdir()
    _age(folder, 3600)

    assert remove_stale_temp_files(tmp_path, older_than_s=60) == 3
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept) and fresh.exists() and folder.is_dir()
    assert remove_stale_temp_files(tmp_path, older_than_s=0) == 1  # now the fresh one too
    assert remove_stale_temp_files(tmp_path / "missing") == 0


def test_remove_stale_temp_files_does_not_follow_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / ".data.abcdefgh.tmp"
    victim.write_text("")
    _age(victim, 3600)
    project = tmp_path / "project"
    project.mkdir()
    (project / "linked").symlink_to(outside, target_is_directory=True)
    link = project / ".link.abcdefgh.tmp"
    link.symlink_to(victim)
    _age(link, 3600)
    assert remove_stale_temp_files(project) == 0
    assert victim.exists() and link.is_symlink()


def test_temp_files_of_atomic_write_match_the_pattern(tmp_path):
    names: list[str] = []
    atomic_write(tmp_path / "state.safetensors", lambda tmp: (names.append(tmp.name), tmp.write_bytes(b"x")))
    assert fsutil.TEMP_PATTERN.match(names[0])


def test_link_or_copy_links_and_copies_where_links_fail(tmp_path, monkeypatch):
    source = tmp_path / "a.png"
    source.write_bytes(b"png bytes")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.png").write_bytes(b"old")
    fsutil.link_or_copy(source, tmp_path / "out" / "old.png")
    assert (tmp_path / "out" / "old.png").samefile(source)

    def no_links(*_):
        raise OSError("no hard links here")

    monkeypatch.setattr(fsutil.os, "link", no_links)
    fsutil.link_or_copy(source, tmp_path / "out" / "copy.png")
    assert (tmp_path / "out" / "copy.png").read_bytes() == b"png bytes"
    assert not (tmp_path / "out" / "copy.png").samefile(source)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["copy.png", "old.png"]
