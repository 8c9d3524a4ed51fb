"""Careful file writes (atomic replace, durable appends), temp-file cleanup and content hashing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import yaml

# atomic_write's temporary files: "." + target name + "." + mkstemp's 8 random characters + ".tmp"
TEMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask.

    Read from /proc/self/status where the kernel reports it (Linux 4.7+), which
    changes nothing.  Elsewhere os.umask is set and restored at once (it has no
    getter); a lock keeps this module's own callers from racing, though another
    thread creating a file in that instant would see a umask of 0o077."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None], durable: bool = True) -> None:
    """Call write(tmp) on a temporary file beside `path`, flush it to disk, then rename it over `path`.

    The file gets the mode a plain open() would give: that of the file it
    replaces, or 0o666 less the umask for a new one.  `durable=False` skips the
    flushes (files a run rewrites at every E-step: the rename stays atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    fd, tmp_name = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.close(fd)
        write(tmp)
        os.chmod(tmp, mode)
        if durable:
            _fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def link_or_copy(source: Path, path: Path) -> None:
    """Give `path` the bytes of `source` without reading them where the file
    system allows (a hard link), else by copying; atomically either way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_yaml_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and flush it to disk, so a kill loses at most the line being written.

    A line left cut short by an earlier kill is ended first, so it cannot run
    into this one."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: Path, older_than_s: float = 60) -> int:
    """Remove atomic_write's temporary files (".NAME.XXXXXXXX.tmp") under `folder`
    whose last change is older than `older_than_s` seconds, left by a killed
    process; return how many were removed.  Symlinks are neither followed nor removed."""
    if not folder.is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if not TEMP_PATTERN.match(name):
                continue
            path = Path(root) / name
            try:
                info = path.lstat()
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # removed meanwhile
    return removed


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
