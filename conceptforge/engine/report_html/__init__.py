"""One self-contained HTML page about a learning run: per image and concept,
the mask and soft map at every E-step with their area and IoU values; loss,
IoU and area curves; settings, timing and samples; and the concepts whose
masks look wrong. Read from the run's files only; cheap to write again after
every E-step (pictures are kept in runs/<id>/report_cache/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError
from .checks import Finding, find_problems
from .model import RunView, read_run

__all__ = ["write_report", "make_report", "build_report", "Report", "Finding", "RunView", "REPORT_NAME", "CACHE_NAME"]

REPORT_NAME = "report.html"
CACHE_NAME = "report_cache"


def build_report(project_root: Path, run_dir: Path) -> tuple[str, list[Finding]]:
    """The page's HTML and the findings about suspicious concepts."""
    from ...project import Project
    from .cache import PictureCache
    from .cells import Pictures
    from .render import render

    project = Project.load(Path(project_root))
    run = _check_run(project.runs_dir, Path(run_dir))
    view = read_run(project, run)
    findings = find_problems(view)
    cache = PictureCache(run.path / CACHE_NAME)
    html = render(view, findings, Pictures(view, cache))
    cache.prune()
    return html, findings


@dataclass
class Report:
    path: Path
    findings: list[Finding]


def make_report(project_root: Path, run_dir: Path, out: Path | None = None) -> Report:
    """Write the report of the run in `run_dir` to `out` (default runs/<id>/report.html), atomically."""
    from ...fsutil import write_text_atomic

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / REPORT_NAME
    if out.is_dir():
        raise InputError(f"The report path {out} is a folder; give a file name such as {out / REPORT_NAME}.")
    html, findings = build_report(project_root, run_dir)
    write_text_atomic(out, html)
    return Report(out, findings)


def write_report(project_root: Path, run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of the run in `run_dir` (see `make_report`); return its path."""
    return make_report(project_root, run_dir, out).path


def _check_run(runs_root: Path, run_dir: Path):
    from ..runs import RunDir

    if not run_dir.is_dir():
        raise InputError(f"The run folder {run_dir} does not exist.")
    if run_dir.resolve().parent != runs_root.resolve():
        raise InputError(f"The run folder {run_dir} is not in the project's runs folder {runs_root}.")
    return RunDir(run_dir)
