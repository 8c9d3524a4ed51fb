"""Run folders: creation, the project lock, status, listing and metrics."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, ProjectBusyError
from ..fsutil import write_text_atomic

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
        path = self.path / STATE_NAME
        if not path.is_file():
            return {"status": "unknown"}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return {"status": "unknown"}

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
    """An exclusive lock file in runs/ holding the pid of the learning process."""

    def __init__(self, runs_root: Path):
        self.path = runs_root / LOCK_NAME

    def __enter__(self) -> "ProjectLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._holder_alive():
                    raise ProjectBusyError(f"Another learn is running on this project (lock {self.path}).") from None
                self.path.unlink(missing_ok=True)  # stale lock of a killed process
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return self
        raise ProjectBusyError(f"Could not take the project lock {self.path}.")

    def _holder_alive(self) -> bool:
        try:
            pid = int(self.path.read_text().strip() or "0")
        except (OSError, ValueError):
            return False
        if pid <= 0:
            return False
        if pid == os.getpid():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)
