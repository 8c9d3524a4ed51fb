"""Learn one project: resolve settings, take the lock, start or resume a run."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

from ..errors import ConceptforgeError, InputError
from ..project import Project
from .backbone import resolve_source
from .config import LearnConfig, resolve_config
from .parallel import Parallel
from .runs import ProjectLock, RunDir, list_runs, new_run


def unfinished_run(project: Project) -> RunDir | None:
    runs = [r for r in list_runs(project.runs_dir) if r.state().get("status") in ("running", "failed", "interrupted")]
    return runs[-1] if runs else None


def learn_project(
    root: Path,
    overrides: dict[str, Any],
    resume: bool = True,
    on_event: Callable | None = None,
) -> dict[str, Any]:
    """Run (or resume) the method on a project; return a summary."""
    from .em import Learner

    par = Parallel.from_env()
    project = Project.load(root)
    if not project.concepts():
        raise InputError(f"The project {root} has no concepts; add one with `conceptforge add-concept`.")
    source = resolve_source(project.model, project.model_config, base=project.root)
    _check_given_masks(project, overrides)
    with contextlib.ExitStack() as held:
        run, config = _pick_run(project, source, overrides, resume, par, held)
        learner = Learner(project, run, config, source, on_event, parallel=par)
        try:
            result = learner.learn()
        except KeyboardInterrupt:
            _mark(run, par, status="interrupted")
            raise
        except ConceptforgeError as exc:
            _mark(run, par, status="failed", error=str(exc))
            raise
        except Exception as exc:
            _mark(run, par, status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        result["project"] = str(root)
        result["config"] = config.to_dict()
        return result


def _pick_run(
    project: Project, source, overrides: dict[str, Any], resume: bool, par: Parallel, held: contextlib.ExitStack
) -> tuple[RunDir, LearnConfig]:
    """Take the project lock (into `held`), pick the run to continue or start one,
    and resolve its settings; the main process decides and shares the choice,
    and the others stop with its error if it fails."""
    if not par.is_main:
        kind, text, payload = par.broadcast(None)
        if kind == "error":
            exc = ConceptforgeError(f"The main process stopped: {text}")
            exc.exit_code = payload
            raise exc
        return RunDir(project.runs_dir / text), LearnConfig(**payload)
    try:
        held.enter_context(ProjectLock(project.runs_dir))
        run = unfinished_run(project) if resume else None
        if run is not None:
            import yaml

            saved = yaml.safe_load(run.config_path.read_text()) if run.config_path.is_file() else {}
            saved = {k: v for k, v in (saved or {}).items() if k not in ("model", "run")}
            config = resolve_config(source.is_builtin, saved, {})
        else:
            config = resolve_config(source.is_builtin, project.settings, overrides)
            run = new_run(project.runs_dir, config.masks)
        run.set_state(status="running")
    except Exception as exc:
        message = str(exc) if isinstance(exc, ConceptforgeError) else f"{type(exc).__name__}: {exc}"
        par.broadcast(("error", message, getattr(exc, "exit_code", 1)))
        raise
    par.broadcast(("ok", run.path.name, config.to_dict()))
    return run, config


def _mark(run: RunDir, par: Parallel, **state: Any) -> None:
    if par.is_main:
        run.set_state(**state)


def _check_given_masks(project: Project, overrides: dict[str, Any]) -> None:
    mode = overrides.get("masks") or project.settings.get("masks")
    if mode != "given":
        return
    for entry, concept in project.concepts():
        if not concept.gt_mask:
            raise InputError(f"--masks given needs a --gt-mask for every concept; {concept.token} on image {entry.file} has none.")
