"""Learn one project: resolve and check the settings, take the lock, start or
resume a run, load the model and data, train, export.

Resume rule: an unfinished run (running, interrupted or failed) is resumed
only when every setting asked for explicitly (in conceptforge.yaml or as an
option) equals the run's, and the project's concepts are the ones it started
with; otherwise `learn` refuses with one sentence naming the difference, and
`--no-resume` starts a new run.  A run that fails before its first E-step is
finished leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml

from ..errors import ConceptforgeError, InputError
from ..fsutil import remove_stale_temp_files, write_yaml_atomic
from ..project import Project
from .backbone import pick_device, resolve_source
from .config import DEFAULTS, LearnConfig, resolve_config, validate_settings
from .events import Event, EventBus
from .parallel import Parallel
from .runs import ProjectLock, RunDir, list_runs, new_run

UNFINISHED = ("running", "failed", "interrupted")


def unfinished_run(project: Project) -> RunDir | None:
    runs = [r for r in list_runs(project.runs_dir) if r.state().get("status") in UNFINISHED]
    return runs[-1] if runs else None


def finished_run(project: Project) -> RunDir | None:
    """The finished run whose concepts are exported and are the project's current ones."""
    import json

    from .export import INDEX_FILE

    try:
        index = json.loads((project.concepts_dir / INDEX_FILE).read_text())
        run = RunDir(project.runs_dir / str(index["run"]))
        saved = yaml.safe_load(run.config_path.read_text())
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return None
    if not run.finished or not isinstance(saved, dict) or saved.get("concepts") != concept_signature(project):
        return None
    return run


def concept_signature(project: Project) -> list[dict[str, Any]]:
    """What a run learns: each image (by content) and its concepts."""
    return [
        {"image": im.file, "sha256": im.sha256, "concepts": [c.to_dict() for c in im.concepts]}
        for im in project.images
    ]


def learn_project(
    root: Path,
    overrides: dict[str, Any],
    resume: bool = True,
    on_event: Callable[[Event], None] | None = None,
    report: bool = True,
    skip_finished: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the method on a project; return a summary.  With
    `report`, runs/<id>/report.html is rewritten after every E-step; with
    `skip_finished`, a project whose exported concepts come from a finished run
    of its current concepts is left as it is."""
    par = Parallel.from_env()
    project = Project.load(root)
    if not project.concepts():
        raise InputError(f"The project {root} has no concepts; add one with `conceptforge add-concept`.")
    project.check_files()
    done = finished_run(project) if skip_finished else None
    if done is not None:
        return {"run": done.id, "project": str(root), "skipped": True, "exported": [], "iterations": None}
    source = resolve_source(project.model, project.model_config, base=project.root)
    requested = resolve_config(source.is_builtin, project.settings, overrides)
    explicit = {k: getattr(requested, k) for k in {**project.settings, **{k: v for k, v in overrides.items() if v is not None}}}
    with contextlib.ExitStack() as held:
        run, config, resumed = _pick_run(project, requested, explicit, resume, par, held)
        return _learn(project, run, config, resumed, par, on_event, report)


def build_trainer(project: Project, config: LearnConfig, parallel: Parallel | None = None, events: EventBus | None = None, pipeline=None):
    """Load the model (or take a loaded `pipeline`) and the project's images and
    return a Trainer for them (nothing is written: subscribe a RunWriter to
    `events` for that)."""
    from .backbone import load_pipeline
    from .bundle import bundle_from_pipeline
    from .data import prepare_images
    from .estep import MaskEstimator
    from .trainer import Trainer

    par = parallel or Parallel()
    source = resolve_source(project.model, project.model_config, base=project.root)
    device = par.device(pick_device(config.device))
    tokens = project.tokens()
    pipe = pipeline if pipeline is not None else load_pipeline(source)
    model = bundle_from_pipeline(pipe, source.is_builtin, tokens, {t: project.concept_init(t) for t in tokens}, config, device)
    images = prepare_images(project, model)
    return Trainer(model, images, config, MaskEstimator(model, images, config, par), par, events)


def _learn(project: Project, run: RunDir, config: LearnConfig, resumed: bool, par: Parallel, on_event, report: bool) -> dict[str, Any]:
    from .checkpoint import load_checkpoint
    from .export import export_concepts
    from .run_writer import LiveReport, RunWriter

    events = EventBus(on_event)
    trainer = None
    try:
        _check_given_masks(project, config)
        for warning in _warnings(config, pick_device(config.device)):
            events(Event("warning", data={"message": warning}))
        trainer = build_trainer(project, config, par, events)
        model = trainer.model
        if par.is_main:
            events.subscribe(RunWriter(run, trainer.images, [project.image_path(e) for e in project.images]))
            live = LiveReport(project.root, run, lambda m: events(Event("warning", data={"message": m}))) if report else None
            if live:
                events.subscribe(live)
            changed = {k: v for k, v in config.to_dict().items() if v != DEFAULTS[k][0 if not model_is_builtin(project) else 1]}
            events(Event("started", data={"run": run.id, "resumed": resumed, "report": str(live.path) if live else None, "settings": changed}))
        ckpt = load_checkpoint(run.checkpoints_dir) if resumed else None
        if ckpt is not None:
            trainer.restore(ckpt)
            if par.is_main:
                run.truncate_metrics(["em", "joint"], trainer.phase, trainer.step)
            events(Event("resumed", trainer.phase, trainer.step, config.em_steps if trainer.phase == "em" else config.joint_steps, {"run": run.id}))
        else:
            if par.is_main:
                run.clear_metrics()  # a run restarted before its first checkpoint
            trainer.start()
        summary = trainer.run()
        if par.is_main:
            run.set_state(timing=trainer.timing)
        paths: list[Path] = []
        if par.is_main:
            finetune = config.finetune if config.joint_steps > 0 else "none"
            paths = export_concepts(project.concepts_dir, model.concept_embeddings(), model.unet, finetune, project.model, run.id)
            run.set_state(status="finished")
    except BaseException as exc:
        _after_failure(run, par, exc, resumed, started=trainer is not None and trainer.iteration >= 0)
        raise
    result = {"run": run.id, "project": str(project.root), "exported": [str(p) for p in paths], "config": config.to_dict(), "resumed": resumed, **summary}
    events(Event("done", data=result))
    return result


def model_is_builtin(project: Project) -> bool:
    return resolve_source(project.model, project.model_config, base=project.root).is_builtin


def _after_failure(run: RunDir, par: Parallel, exc: BaseException, resumed: bool, started: bool) -> None:
    """Mark the run failed or interrupted; a new run that never finished its first E-step is removed."""
    if not par.is_main:
        return
    if not resumed and not started:
        shutil.rmtree(run.path, ignore_errors=True)
        return
    if isinstance(exc, KeyboardInterrupt):
        run.set_state(status="interrupted")
    elif isinstance(exc, ConceptforgeError):
        run.set_state(status="failed", error=str(exc))
    else:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        run.set_state(status="failed", error=f"Learning failed unexpectedly: {detail}")


def _warnings(config: LearnConfig, device) -> list[str]:
    out = []
    message = config.schedule_warning()
    if message:
        out.append(message)
    if config.mixed_precision == "fp16" and device.type == "cpu":
        out.append("fp16 on a CPU is emulated and runs several times slower than fp32; use --mixed-precision bf16 or no.")
    return out


def _pick_run(
    project: Project, requested: LearnConfig, explicit: dict[str, Any], resume: bool, par: Parallel, held: contextlib.ExitStack
) -> tuple[RunDir, LearnConfig, bool]:
    """Take the project lock (into `held`), pick the run to continue or start one;
    the main process decides and shares the choice, the others stop with its
    error if it fails."""
    if not par.is_main:
        kind, text, payload, resumed = par.broadcast(None)
        if kind == "error":
            exc = ConceptforgeError(f"The main process stopped: {text}")
            exc.exit_code = payload
            raise exc
        return RunDir(project.runs_dir / text), validate_settings(payload), resumed
    try:
        held.enter_context(ProjectLock(project.runs_dir))
        remove_stale_temp_files(project.root)
        run = unfinished_run(project) if resume else None
        if run is not None:
            config = _resumable_config(project, run, requested, explicit)
            resumed = True
        else:
            config, resumed = requested, False
            run = new_run(project.runs_dir, config.masks)
            write_yaml_atomic(run.config_path, {"model": project.model, "run": run.id, **config.to_dict(), "concepts": concept_signature(project)})
        run.set_state(status="running")
    except BaseException as exc:
        message = str(exc) if isinstance(exc, ConceptforgeError) else f"{type(exc).__name__}: {exc}"
        par.broadcast(("error", message, getattr(exc, "exit_code", 1), False))
        raise
    par.broadcast(("ok", run.path.name, config.to_dict(), resumed))
    return run, config, resumed


def _resumable_config(project: Project, run: RunDir, requested: LearnConfig, explicit: dict[str, Any]) -> LearnConfig:
    """The unfinished run's settings, or InputError when what is asked for differs."""
    way_on = f"start a new run with `conceptforge learn {project.root} --no-resume`"
    try:
        saved = yaml.safe_load(run.config_path.read_text()) if run.config_path.is_file() else None
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict):
        raise InputError(f"The unfinished run {run.id} has no readable config.yaml ({run.config_path}); {way_on}.")
    settings = {k: v for k, v in saved.items() if k in DEFAULTS}
    try:
        config = validate_settings({**requested.to_dict(), **settings})
    except InputError as exc:
        raise InputError(f"The unfinished run {run.id} has settings this version cannot use ({exc}); {way_on}.") from None
    differ = [f"{k} {getattr(config, k)!r} (asked: {v!r})" for k, v in explicit.items() if getattr(config, k) != v]
    if differ:
        raise InputError(
            f"The unfinished run {run.id} uses {', '.join(differ)}; repeat its settings to resume it, or {way_on}."
        )
    if "concepts" in saved and saved["concepts"] != concept_signature(project):
        raise InputError(f"The project's concepts or images changed since the unfinished run {run.id} started; {way_on}.")
    return config


def _check_given_masks(project: Project, config: LearnConfig) -> None:
    if config.masks != "given":
        return
    for entry, concept in project.concepts():
        if not concept.gt_mask:
            raise InputError(f"--masks given needs a --gt-mask for every concept; {concept.token} on image {entry.file} has none.")
