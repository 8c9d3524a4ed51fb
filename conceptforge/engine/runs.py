"""Run folders: creation, the project lock, status, listing and metrics."""

from __future__ import annotations

import json
import os
import secrets
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, ProjectBusyError
from ..fsutil import current_umask, write_text_atomic

LOCK_NAME = ".learn.lock"
STATE_NAME = "state.json"


@dataclass
class RunDir:
    """One run: runs/<run-id>/."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def masks_dir(self) -> Path:
        return self.path / "masks"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def iteration_dir(self, iteration: int) -> Path:
        return self.masks_dir / f"iter_{iteration:04d}"

    def iterations(self) -> list[int]:
        if not self.masks_dir.is_dir():
            return []
        return sorted(int(p.name[5:]) for p in self.masks_dir.glob("iter_*") if p.name[5:].isdigit())

    def state(self) -> dict[str, Any]:
        """The run's state.json; {"status": "unknown"} when there is none.

        Raises InputError when the file exists but is not a JSON object."""
        path = self.path / STATE_NAME
        if not path.is_file():
            return {"status": "unknown"}
        try:
            state = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            state = None
        if not isinstance(state, dict):
            raise InputError(
                f"The run state file {path} cannot be read as a JSON object; "
                "fix or delete it, or start a new run with --no-resume."
            )
        return state

    def set_state(self, **values: Any) -> None:
        state = self.state()
        state.update(values)
        write_text_atomic(self.path / STATE_NAME, json.dumps(state, indent=2) + "\n")

    @property
    def finished(self) -> bool:
        return self.state().get("status") == "finished"

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
        return out

    def clear_metrics(self) -> None:
        """Empty metrics.jsonl (a run restarted from scratch)."""
        write_text_atomic(self.metrics_path, "")

    def truncate_metrics(self, phase_order: list[str], phase: str, step: int) -> None:
        """Drop metric lines written after a checkpoint (phase, step)."""
        rank = {p: i for i, p in enumerate(phase_order)}
        keep = []
        for rec in self.metrics():
            r = rank.get(rec.get("phase", ""), 0)
            if r < rank[phase] or (r == rank[phase] and rec.get("step", 0) <= step):
                keep.append(json.dumps(rec))
        write_text_atomic(self.metrics_path, "".join(line + "\n" for line in keep))


def list_runs(runs_root: Path) -> list[RunDir]:
    if not runs_root.is_dir():
        return []
    return sorted((RunDir(p) for p in runs_root.iterdir() if p.is_dir() and (p / STATE_NAME).exists()), key=lambda r: r.id)


def find_run(runs_root: Path, run_id: str | None) -> RunDir:
    runs = list_runs(runs_root)
    if run_id:
        for r in runs:
            if r.id == run_id:
                return r
        raise InputError(f"No run {run_id!r} in {runs_root}.")
    if not runs:
        raise InputError(f"No runs yet in {runs_root}; run `conceptforge learn` first.")
    return runs[-1]


def new_run(runs_root: Path, label: str) -> RunDir:
    runs_root.mkdir(parents=True, exist_ok=True)
    base = time.strftime("%Y%m%d-%H%M%S") + f"-{label}"
    name, n = base, 1
    while (runs_root / name).exists():
        n += 1
        name = f"{base}-{n}"
    run = RunDir(runs_root / name)
    run.path.mkdir()
    run.set_state(status="running", created=time.time())
    return run


class ProjectLock:
    """An exclusive lock file in runs/ naming the learning process.

    The file holds {"pid", "host", "started", "boot"}: the process's start time
    (clock ticks after boot, /proc/<pid>/stat field 22) and the boot id, where
    the system reports them.  On the same host a lock is stale, and taken over,
    when its pid is dead, or alive but started at another time (the pid was
    reused), or the machine has rebooted since.  Lock files holding a bare pid
    (older versions) are read too."""

    def __init__(self, runs_root: Path):
        self.path = runs_root / LOCK_NAME
        self._record: dict[str, Any] | None = None

    def __enter__(self) -> "ProjectLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = _own_record()
        for _ in range(3):
            if _create_exclusive(self.path, json.dumps(record)):
                self._record = record
                return self
            text = _read_lock(self.path)
            if text is None:
                continue  # removed meanwhile
            holder = _parse_lock(text)
            if holder is not None and _holder_alive(holder):
                where = f"pid {holder['pid']}" + (f" on {holder['host']}" if holder.get("host") else "")
                raise ProjectBusyError(
                    f"Another learn is running on this project ({where}, lock {self.path}); "
                    f"if no learn is running on this project, delete {self.path}."
                )
            _remove_if_unchanged(self.path, text)  # a stale lock of a process that is gone
        raise ProjectBusyError(
            f"Could not take the project lock {self.path}; if no learn is running on this project, delete {self.path}."
        )

    def __exit__(self, *exc: object) -> None:
        text = _read_lock(self.path)
        holder = _parse_lock(text) if text is not None else None
        if self._record is not None and holder is not None and all(holder.get(k) == self._record[k] for k in ("pid", "started")):
            self.path.unlink(missing_ok=True)
        self._record = None


def process_start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks after boot (/proc/<pid>/stat field 22); None where unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _own_record() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": process_start_time(pid), "boot": _boot_id()}


def _create_exclusive(path: Path, text: str) -> bool:
    """Create `path` holding `text` unless it exists; the content is complete
    before the file appears (hard link of a written temporary file)."""
    fd, tmp_name = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        mode = 0o666 & ~current_umask()
        os.chmod(tmp_name, mode)
        try:
            os.link(tmp_name, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links
            try:
                new = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
            except FileExistsError:
                return False
            with os.fdopen(new, "w") as fh:
                fh.write(text)
            return True
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _read_lock(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return ""


def _parse_lock(text: str) -> dict[str, Any] | None:
    """{"pid", "host", "started", "boot"} from a lock file's text (JSON, or an older bare pid); None if neither."""
    text = text.strip()
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    if type(data) is int:
        data = {"pid": data}
    if not isinstance(data, dict) or type(data.get("pid")) is not int or data["pid"] <= 0:
        return None
    out = {"pid": data["pid"], "host": data.get("host"), "started": data.get("started"), "boot": data.get("boot")}
    if not all(isinstance(out[k], t) or out[k] is None for k, t in (("host", str), ("started", int), ("boot", str))):
        return None
    return out


def _holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the lock's process may still be running (True when it cannot be told)."""
    if holder["host"] is not None and holder["host"] != socket.gethostname():
        return True  # another machine's process cannot be checked from here
    boot = _boot_id()
    if holder["boot"] and boot and holder["boot"] != boot:
        return False  # rebooted since
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return True
    started = process_start_time(pid)
    return holder["started"] is None or started is None or started == holder["started"]


def _remove_if_unchanged(path: Path, text: str) -> None:
    """Remove the lock file if it still holds `text`: moved aside first, so a lock
    another process took meanwhile is put back rather than lost."""
    aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        if _read_lock(aside) != text:
            try:
                os.link(aside, path)
            except OSError:
                pass
    finally:
        aside.unlink(missing_ok=True)
