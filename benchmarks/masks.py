"""Mask benchmark on the built-in world: EM vs the one-shot baseline vs GT masks.

Each unit (a scene, or in `multi` a project of several scenes) is learned
with `masks: em`, `masks: fixed` and `masks: given` (and, on request, EM
without DenseCRF, mode `em-no-crf`) at equal step budgets, one concept per
object initialised from its shape word and one per background initialised
from "background".  The report gives, per mode, the IoU of the masks with the
world's exact masks at every E-step and at the end, seconds per EM-phase step
(E-steps included) as a ratio to `fixed` and the E-steps' share of that time,
and the concept fidelity of generated images judged by the world's recogniser;
then the paired differences em - fixed with 95% intervals; then what DenseCRF
adds at every E-step of the `em` run, measured on that E-step's own soft maps
(float, handed to `learn_project`'s on_event with the E-step's result) refined
with DenseCRF, with DenseCRF's unary alone and by the threshold alone.

Scene sets (`--scene-set`; scenes of `sample_scene(seed)` with 2-3 objects of
distinct shapes, since two objects of one shape would get identical init
tokens and which of them is which would be a coin toss):

    dev1   the first 12 such seeds from 800000        used to choose settings
    dev2   the next 12 (same range; `--skip 12` before) used to choose settings
    dev3   the 12 after dev2 (same range)              used to choose settings
    dev4   the 12 after dev3 (same range)              used to choose settings
    dev5   the 12 after dev4 (same range)              used to choose settings
    dev6   the 12 after dev5 (same range)              used to choose settings
    test   the first 12 such seeds from 900000         held out
    multi  12 projects of `--images-per-project` (3)   held out
           scenes from seeds 910000 on

The held-out sets `test` and `multi` are reported only for the shipped
defaults and are never used to choose a setting: on them the script refuses
`--set`, `--em-steps`, `--joint-steps` and the mode `em-no-crf` unless
`--allow-tuning-on-test` is given, and then the report's header says in
bold that its figures are not test figures.  Choose settings on dev1-dev6,
then run test and multi once.

`multi` projects: the world cannot place a given object in a new scene, so
projects are found, not made: from seed 910000 on, each project starts at the
next unused qualifying scene and adds the next qualifying scenes (within 400)
that show an object of the same shape and colours (colour order ignored, as
the recogniser does) as an object already in the project, until it has N
images.  Objects of the same shape and colours in a project's scenes are one
concept: one token registered on each image that shows it (each with that
image's exact mask), learned from all of them.  Backgrounds of the same
colours (ground, sky) share a token the same way.  A start scene without
such partners is skipped.

Means: every mean weighs each concept of each unit once (for IoU a concept of
an image, i.e. one mask; for fidelity a token): the table, the per-E-step
curve (whose last point therefore equals the table's final IoU), "objects
only" and the JSON all use it.  Intervals: 95% percentile bootstrap over units
(10000 resamples, seed 0; units resampled whole, since the concepts of one
scene are not independent).

    python benchmarks/masks.py --scene-set dev1|dev2|test|multi [--scenes 12] [--samples 8]
                               [--modes em,fixed,given] [--quick]

Writes benchmarks/results/masks_<set>.md with .json and .png beside it
(`--quick`: under --work unless --out is given).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import stats  # noqa: E402
from scene_projects import PlannedConcept, build_project  # noqa: E402
from conceptforge.engine.backbone import pick_device, resolve_source  # noqa: E402
from conceptforge.engine.evaluate import builtin_fidelity, builtin_identities, iou_curves  # noqa: E402
from conceptforge.engine.generate import load_concept_pipeline  # noqa: E402
from conceptforge.engine.learn import learn_project  # noqa: E402
from conceptforge.engine.masks import iou, refine_masks, resize_mask  # noqa: E402
from conceptforge.engine.runs import find_run  # noqa: E402
from conceptforge.imageio import open_mask, open_rgb  # noqa: E402
from conceptforge.project import Project  # noqa: E402
from conceptforge.shapes.world import sample_scene  # noqa: E402

MODES = {
    "em": {"masks": "em"},
    "fixed": {"masks": "fixed"},
    "given": {"masks": "given"},
    "em-no-crf": {"masks": "em", "crf": False},
}
DEFAULT_MODES = "em,fixed,given"
PARTNER_WINDOW = 400  # qualifying scenes searched after a multi project's first scene


@dataclass(frozen=True)
class SceneSet:
    name: str
    base: int  # first seed of the range
    skip: int  # qualifying seeds of the range left out (dev2 follows dev1)
    size: int  # units in the set
    end: int  # seeds stay below this
    held_out: bool
    max_units: int | None = None  # beyond this the set would overlap another

    @property
    def role(self) -> str:
        if self.held_out:
            return "held out: reported only for the shipped defaults, never used to choose a setting"
        return "a development set: used to choose the shipped settings, so its figures may be optimistic"


SETS = {
    "dev1": SceneSet("dev1", 800_000, 0, 12, 900_000, False, max_units=12),
    "dev2": SceneSet("dev2", 800_000, 12, 12, 900_000, False, max_units=12),
    "dev3": SceneSet("dev3", 800_000, 24, 12, 900_000, False, max_units=12),
    "dev4": SceneSet("dev4", 800_000, 36, 12, 900_000, False, max_units=12),
    "dev5": SceneSet("dev5", 800_000, 48, 12, 900_000, False, max_units=12),
    "dev6": SceneSet("dev6", 800_000, 60, 12, 900_000, False),
    "test": SceneSet("test", 900_000, 0, 12, 910_000, True),
    "multi": SceneSet("multi", 910_000, 0, 12, 920_000, True),
}


@dataclass
class Unit:
    """What one project learns: its id and the seeds of its scenes."""

    id: str
    seeds: list[int]


# ----------------------------------------------------------------------------- scenes


def qualifies(seed: int) -> bool:
    """A scene of 2-3 objects of distinct shapes."""
    shapes = [o.shape for o in sample_scene(seed).objects]
    return len(shapes) >= 2 and len(set(shapes)) == len(shapes)


def qualifying_seeds(base: int, end: int):
    for s in range(base, end):
        if qualifies(s):
            yield s


def scene_seeds(n: int, skip: int = 0, base: int = 800_000, end: int = 900_000) -> list[int]:
    """The qualifying seeds number skip..skip+n-1 from `base` on."""
    seeds = []
    for s in qualifying_seeds(base, end):
        seeds.append(s)
        if len(seeds) == n + skip:
            return seeds[skip:]
    raise SystemExit(f"only {len(seeds)} qualifying seeds in {base}-{end - 1}; ask for fewer scenes")


def object_key(obj) -> tuple[str, tuple[str, ...]]:
    """What makes two objects one concept: shape and colours (any order)."""
    return obj.shape, tuple(sorted(obj.colors))


def multi_projects(n: int, images: int, base: int, end: int) -> list[Unit]:
    """`n` projects of `images` scenes, each scene after the first showing an
    object of the same shape and colours as an earlier scene of its project."""
    pool: list[tuple[int, set]] = []
    gen = qualifying_seeds(base, end)

    def scene(k: int) -> tuple[int, set] | None:
        while len(pool) <= k:
            s = next(gen, None)
            if s is None:
                return None
            pool.append((s, {object_key(o) for o in sample_scene(s).objects}))
        return pool[k]

    used: set[int] = set()
    units: list[Unit] = []
    start = 0
    while len(units) < n:
        first = scene(start)
        if first is None:
            raise SystemExit(f"only {len(units)} projects found in seeds {base}-{end - 1}; ask for fewer")
        if first[0] in used:
            start += 1
            continue
        group, keys = [first[0]], set(first[1])
        for k in range(start + 1, start + 1 + PARTNER_WINDOW):
            cand = scene(k)
            if cand is None:
                break
            if cand[0] not in used and cand[1] & keys:
                group.append(cand[0])
                keys |= cand[1]
                if len(group) == images:
                    break
        used.add(first[0])
        if len(group) == images:
            used.update(group)
            units.append(Unit("+".join(str(s) for s in group), group))
        start += 1
    return units


def plan_concepts(seeds: list[int]) -> list[tuple[int, list[dict]]]:
    """Per scene, its concepts: token, init word, background flag, exact mask.

    Objects of the same shape and colours share a token (`<o0>`, `<o1>`, ... in
    order of first appearance), backgrounds of the same colours too (`<bg>`
    when the project has one background, else `<bg0>`, `<bg1>`, ...)."""
    scenes = [(s, sample_scene(s)) for s in seeds]
    objects: dict = {}
    backgrounds: dict = {}
    for _, sc in scenes:
        for o in sc.objects:
            objects.setdefault(object_key(o), f"<o{len(objects)}>")
        backgrounds.setdefault(tuple(sc.background_colors), len(backgrounds))
    plan = []
    for seed, sc in scenes:
        concepts = [{"token": objects[object_key(o)], "init": o.shape, "background": False, "mask": o.mask} for o in sc.objects]
        k = backgrounds[tuple(sc.background_colors)]
        token = "<bg>" if len(backgrounds) == 1 else f"<bg{k}>"
        concepts.append({"token": token, "init": "background", "background": True, "mask": sc.background_mask})
        plan.append((seed, concepts))
    return plan


def make_project(root: Path, unit: Unit) -> dict[str, dict]:
    """A fresh project of the unit's scenes; returns 'image token' -> {background, shared}."""
    plan = plan_concepts(unit.seeds)
    images_of: dict[str, int] = {}
    for _, concepts in plan:
        for c in concepts:
            images_of[c["token"]] = images_of.get(c["token"], 0) + 1
    scenes = [(seed, sample_scene(seed).image, [PlannedConcept(c["token"], c["init"], c["background"], c["mask"]) for c in concepts])
              for seed, concepts in plan]
    stems = build_project(root, scenes)
    return {
        f"{stem} {c['token']}": {"background": c["background"], "shared": images_of[c["token"]] > 1}
        for stem, (_, concepts) in zip(stems, plan) for c in concepts
    }


# ----------------------------------------------------------------------------- running


def run_mode(root: Path, unit: Unit, overrides: dict, samples: int, steps: int) -> dict:
    info = make_project(root, unit)
    esteps: list[EStep] = []
    result = learn_project(root, dict(overrides), resume=False, on_event=lambda ev: keep_estep(ev, esteps))
    project = Project.load(root)
    run = find_run(project.runs_dir, result["run"])
    concepts = []
    for c in iou_curves(run)["concepts"]:
        key = f"{c['image']} {c['token']}"
        concepts.append({"image": c["image"], "token": c["token"], **info[key], "steps": c["steps"], "iou": c["iou"]})
    record = {"unit": unit.id, "seeds": unit.seeds, "run": result["run"], "concepts": concepts,
              "timing": result["timing"], "config": result["config"]}
    if result["config"]["masks"] == "em":
        record["crf"] = crf_per_estep(project, esteps, result["config"]["threshold"], result["config"]["crf_method"])
    if samples:
        pipe, _ = load_concept_pipeline(resolve_source(project.model), project.concepts_dir, pick_device("auto"))
        fid = builtin_fidelity(pipe, builtin_identities(project, run), samples, steps, 5.0, 0)
        background = {c["token"]: c["background"] for c in concepts}
        record["fidelity"] = [{**f, "background": background.get(f["token"], False)} for f in fid["concepts"]]
    return record


@dataclass
class EStep:
    """What one E-step of a run produced: the float maps it refined its masks from (after the joint
    assignment), the masks it kept, which updates it refused."""

    iteration: int
    step: int
    soft: dict
    masks: dict
    refused: dict


def keep_estep(event, out: list[EStep]) -> None:
    """`learn_project`'s on_event: keep each E-step's maps and masks (copies; a few KB each)."""
    if event.kind != "estep" or event.payload is None:
        return
    r = event.payload
    refused = {(m["image"], m["token"]): bool(m.get("refused")) for m in r.records}
    out.append(EStep(r.iteration, event.step, {k: np.array(v, np.float32) for k, v in r.drawn.items()},
                     {k: np.array(v, bool) for k, v in r.masks.items()}, refused))


def crf_per_estep(project: Project, esteps: list[EStep], threshold: float, method: str = "photo") -> list[dict]:
    """Per E-step, each concept's IoU with its exact mask four ways: the mask
    the run kept, and the E-step's own soft maps (float, momentum included, as
    passed to `refine_masks`) refined with DenseCRF, with DenseCRF's unary
    alone (0 mean-field iterations) and by the threshold alone
    (`refine_masks(..., use_crf=False)`).

    Images and exact masks are read at the run's mask size as the engine reads
    them (bicubic image, nearest-neighbour mask), so the recomputed DenseCRF
    mask equals the run's wherever the run did not refuse the update;
    `same_as_run` records that check."""
    out = []
    for e in esteps:
        concepts = []
        for i, entry in enumerate(project.images):
            tokens = [c.token for c in entry.concepts]
            height, width = e.masks[(i, tokens[0])].shape
            rgb = np.asarray(open_rgb(project.image_path(entry)).resize((width, height), Image.BICUBIC))
            maps = np.stack([e.soft[(i, t)] for t in tokens])
            has_background = any(c.background for c in entry.concepts)
            with_crf = refine_masks(rgb, maps, threshold=threshold, use_crf=True, has_background=has_background, method=method)
            unary = refine_masks(rgb, maps, threshold=threshold, use_crf=True, has_background=has_background, crf_iterations=0, method=method)
            without = refine_masks(rgb, maps, threshold=threshold, use_crf=False, has_background=has_background, method=method)
            for k, c in enumerate(entry.concepts):
                gt = resize_mask(open_mask(project.gt_mask_path(c)), height, width)
                kept = e.masks[(i, c.token)]
                concepts.append({
                    "image": entry.stem, "token": c.token, "refused": e.refused.get((entry.stem, c.token), False),
                    "same_as_run": bool(np.array_equal(with_crf[k], kept)),
                    "iou_run": iou(kept, gt), "iou_crf": iou(with_crf[k], gt), "iou_unary": iou(unary[k], gt),
                    "iou_thr": iou(without[k], gt),
                })
        out.append({"iteration": e.iteration, "step": e.step, "concepts": concepts})
    return out


# ----------------------------------------------------------------------------- analysis


def iou_groups(records: list[dict], which: str = "final", objects_only: bool = False, shared_only: bool = False) -> list[list[float]]:
    """Per unit, its concepts' IoU at E-step 0 ('first') or at the end ('final')."""
    pick = 0 if which == "first" else -1
    return [
        [c["iou"][pick] for c in r["concepts"] if not (objects_only and c["background"]) and not (shared_only and not c["shared"])]
        for r in records
    ]


def fidelity_groups(records: list[dict], key: str) -> list[list[float]]:
    return [[f[key] for f in r.get("fidelity", [])] for r in records]


def iou_by_concept(records: list[dict], objects_only: bool = False) -> list[dict[str, float]]:
    return [{f"{c['image']} {c['token']}": c["iou"][-1] for c in r["concepts"] if not (objects_only and c["background"])} for r in records]


def fidelity_by_concept(records: list[dict], key: str) -> list[dict[str, float]]:
    return [{f["token"]: f[key] for f in r.get("fidelity", [])} for r in records]


def step_curve(records: list[dict]) -> tuple[list[int], list[float]]:
    """Pooled mean IoU at every E-step, each concept keeping its last mask between E-steps."""
    return stats.carried_curve([[(c["steps"], c["iou"]) for c in r["concepts"]] for r in records])


def crf_table(records: list[dict]) -> list[dict]:
    """Per E-step step: pooled IoU of the run's masks, of DenseCRF and of the
    threshold on the same stored maps, and the interval of CRF - threshold
    (each concept keeping its last E-step's values between E-steps)."""
    series = []
    for r in records:
        unit = {}
        for e in r.get("crf", []):
            for c in e["concepts"]:
                unit.setdefault(f"{c['image']} {c['token']}", []).append((e["step"], c))
        series.append(unit)
    steps = sorted({s for unit in series for vals in unit.values() for s, _ in vals})
    rows = []
    for s in steps:
        at = [[[c for t, c in vals if t <= s][-1] for vals in unit.values() if vals[0][0] <= s] for unit in series]
        diff = stats.pooled_mean_interval([[c["iou_crf"] - c["iou_thr"] for c in u] for u in at],
                                          above="DenseCRF better", below="threshold better")
        pairwise = stats.pooled_mean_interval([[c["iou_crf"] - c["iou_unary"] for c in u] for u in at],
                                              above="DenseCRF better", below="unary better")
        rows.append({
            "step": s,
            "run": stats.pooled_mean([[c["iou_run"] for c in u] for u in at]),
            "crf": stats.pooled_mean([[c["iou_crf"] for c in u] for u in at]),
            "unary": stats.pooled_mean([[c["iou_unary"] for c in u] for u in at]),
            "threshold": stats.pooled_mean([[c["iou_thr"] for c in u] for u in at]),
            "difference": diff.to_dict(),
            "pairwise": pairwise.to_dict(),
        })
    return rows


def crf_check(records: list[dict]) -> str:
    """How many recomputed DenseCRF masks equal the run's where it did not refuse the update."""
    pairs = [c for r in records for e in r.get("crf", []) for c in e["concepts"] if not c["refused"]]
    same = sum(c["same_as_run"] for c in pairs)
    return f"the recomputed DenseCRF mask equals the run's in {same} of {len(pairs)} concept E-steps without a refused update"


def timing_sums(records: list[dict]) -> tuple[list[float], list[float], list[float]]:
    """Per unit: EM-phase seconds with E-steps, EM-phase steps, E-step seconds."""
    t = [r["timing"] for r in records]
    return [x["em_seconds"] + x["estep_seconds"] for x in t], [x["em_steps_timed"] for x in t], [x["estep_seconds"] for x in t]


def summarise(results: dict[str, list[dict]], multi: bool) -> dict:
    modes = list(results)
    summary = {}
    for m in modes:
        rs = results[m]
        seconds, steps, estep = timing_sums(rs)
        summary[m] = {
            "concepts": sum(len(r["concepts"]) for r in rs),
            "first": stats.pooled_mean(iou_groups(rs, "first")),
            "final": stats.pooled_mean(iou_groups(rs)),
            "final_objects": stats.pooled_mean(iou_groups(rs, objects_only=True)),
            "final_shared_objects": stats.pooled_mean(iou_groups(rs, objects_only=True, shared_only=True)) if multi else None,
            "fidelity": stats.pooled_mean(fidelity_groups(rs, "fidelity")),
            "score": stats.pooled_mean(fidelity_groups(rs, "score")),
            "diversity": stats.pooled_mean(fidelity_groups(rs, "diversity")),
            "s_per_step": sum(seconds) / max(1, sum(steps)),
            "estep_share": sum(estep) / sum(seconds) if sum(seconds) else 0.0,
        }
        summary[m]["curve"] = dict(zip(("steps", "iou"), step_curve(rs)))
    fixed = summary.get("fixed", {}).get("s_per_step")
    for m in modes:
        summary[m]["ratio_to_fixed"] = summary[m]["s_per_step"] / fixed if fixed else None
    return summary


def differences(results: dict[str, list[dict]]) -> dict[str, stats.Interval]:
    """Paired em - fixed differences and em / given ratios, with their intervals."""
    out: dict[str, stats.Interval] = {}
    em, fx, gv = results.get("em"), results.get("fixed"), results.get("given")
    if em and fx:
        out["iou"] = stats.pooled_mean_interval(stats.paired_differences(iou_by_concept(em), iou_by_concept(fx)))
        out["iou_objects"] = stats.pooled_mean_interval(stats.paired_differences(iou_by_concept(em, True), iou_by_concept(fx, True)))
        out["iou_target"] = stats.pooled_mean_interval(
            stats.paired_differences(iou_by_concept(em), iou_by_concept(fx)), margin=0.05,
            above="met", below="missed", inside="not distinguishable from +0.05")
        if all("fidelity" in r for r in em + fx):
            for key in ("fidelity", "score"):
                out[key] = stats.pooled_mean_interval(stats.paired_differences(fidelity_by_concept(em, key), fidelity_by_concept(fx, key)))
        a, n, _ = timing_sums(em)
        b, d, _ = timing_sums(fx)
        out["cost"] = stats.rate_ratio_interval(a, n, b, d, margin=1.25, above="missed", below="met",
                                                inside="not distinguishable from 1.25x")
    if em and gv and all("fidelity" in r for r in em + gv):
        for key in ("fidelity", "score"):
            out[f"{key}_of_given"] = stats.ratio_interval(fidelity_groups(em, key), fidelity_groups(gv, key), 0.85,
                                                          above="met", below="missed", inside="not distinguishable from 0.85")
    return out


# ----------------------------------------------------------------------------- the report


def provenance() -> str:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "conceptforge")
    return f"commit {commit}" + (" with uncommitted changes under conceptforge/" if dirty else "")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write_report(args, command: str, scene_set: SceneSet, units: list[Unit], modes: list[str], results: dict[str, list[dict]],
                 overrides: dict, elapsed: float) -> None:
    multi = args.images_per_project > 1
    summary = summarise(results, multi)
    diffs = differences(results)
    unit_word = "project" if multi else "scene"
    seeds = [s for u in units for s in u.seeds]
    first_mode = results.get("em") or next(iter(results.values()), [])
    settings = first_mode[0]["config"] if first_mode else {}
    lines = [
        f"# Mask benchmark on the built-in world: scene set `{scene_set.name}`",
        "",
        f"Produced by `{command}` ({provenance()}, torch threads {args.threads}, {elapsed / 60:.0f} min).",
        "",
        f"**Scene set `{scene_set.name}`: {scene_set.role}.**",
    ]
    variants = [m for m in modes if m not in DEFAULT_MODES.split(",")]
    if scene_set.held_out and (overrides or variants or args.allow_tuning_on_test):
        changed = ", ".join([f"{k}={v}" for k, v in overrides.items()] + [f"mode {m}" for m in variants]) \
            or "none, but --allow-tuning-on-test was given"
        lines += ["", f"**NOT TEST FIGURES: this run changed settings on the held-out set ({changed}); "
                      "do not report it as a result or use it to choose a setting.**"]
    if multi:
        tokens = {(r["unit"], c["token"]): c["shared"] for r in results[modes[0]] for c in r["concepts"] if not c["background"]}
        lines += ["", f"{plural(len(units), 'project')} of {args.images_per_project} held-out scenes each (seeds {min(seeds)}-{max(seeds)}, "
                      f"each scene 2-3 objects of distinct shapes); objects of the same shape and colours in a project's scenes "
                      f"are one token registered on every image that shows them (likewise backgrounds of the same colours); "
                      f"every scene after a project's first shares at least one object with an earlier one "
                      f"({sum(tokens.values())} of the {len(tokens)} object tokens are on two or more images)."]
    else:
        lines += ["", f"{plural(len(units), 'scene')} (seeds {min(seeds)}-{max(seeds)}, 2-3 objects of different shapes each), "
                      "one concept per object (init: its shape word) plus one for the background (init: background)."]
    lines += [
        "",
        "Settings: the built-in model's shipped defaults" + ("" if not overrides else " except " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
        + (f" (em run: em_steps {settings.get('em_steps')}, joint_steps {settings.get('joint_steps')}, "
           f"init_mask_signal {settings.get('init_mask_signal')}, mask_timesteps {settings.get('mask_timesteps')}, "
           f"threshold {settings.get('threshold')}, crf {settings.get('crf')}, seed {settings.get('seed')}; every setting in the JSON)" if settings else "")
        + "; every mode has the same step budget.",
        "",
        f"Means: each concept of each {unit_word} counts once (the mean over all ({unit_word}, concept) pairs; "
        "for IoU a concept of an image, i.e. one mask, for fidelity a token), in the table, the per-E-step curve "
        "(its last point is the table's final IoU), objects only and the JSON. "
        f"Intervals: 95% percentile bootstrap over {unit_word}s ({stats.RESAMPLES} resamples, seed {stats.BOOTSTRAP_SEED}), "
        f"{unit_word}s resampled whole since the concepts of one {unit_word} are not independent; "
        + (f"with {len(units)} {unit_word}s such intervals tend to be a little too narrow. " if len(units) >= 10 else
           f"with only {plural(len(units), unit_word)} there are no intervals (at least {stats.MIN_UNITS} are needed). ")
        + "A difference whose interval covers zero is \"not distinguishable\".",
        "",
        "| mode | concept masks | mean IoU at E-step 0 | final mean IoU | objects only |" + (" shared objects only |" if multi else "")
        + " concept fidelity (exact) | concept score (partial) | diversity | s/step (EM phase, E-steps included) | ratio to fixed | E-step share of EM-phase time |",
        "|---|---:|---:|---:|---:|" + ("---:|" if multi else "") + "---:|---:|---:|---:|---:|---:|",
    ]
    for m in modes:
        s = summary[m]
        lines.append(
            f"| {m} | {s['concepts']} | {fmt(s['first'])} | {fmt(s['final'])} | {fmt(s['final_objects'])} |"
            + (f" {fmt(s['final_shared_objects'])} |" if multi else "")
            + f" {fmt(s['fidelity'])} | {fmt(s['score'])} | {fmt(s['diversity'])} | {s['s_per_step']:.3f} | {fmt(s['ratio_to_fixed'], 2)} | {s['estep_share']:.2f} |"
        )

    labels = {"iou": "final IoU, all concepts", "iou_objects": "final IoU, objects only",
              "fidelity": "concept fidelity (exact)", "score": "concept score (partial)"}
    if any(k in diffs for k in labels):
        lines += ["", "## Paired differences em - fixed (same concepts of the same " + unit_word + "s)", "",
                  "| measure | em - fixed [95% interval] | concepts | verdict |", "|---|---:|---:|---|"]
        for k, label in labels.items():
            if k in diffs:
                d = diffs[k]
                lines.append(f"| {label} | {d.text()} | {d.values} | {d.verdict} |")

    steps = sorted({st for m in modes for st in summary[m]["curve"]["steps"]})
    lines += ["", "## Mean IoU per E-step (each concept keeps its last mask between E-steps; fixed and given have only E-step 0)", "",
              "| step | " + " | ".join(modes) + " |", "|---:|" + "---:|" * len(modes)]
    for st in steps:
        cells = []
        for m in modes:
            c = summary[m]["curve"]
            past = [v for t, v in zip(c["steps"], c["iou"]) if t <= st]
            cells.append(fmt(past[-1]) if past else "-")
        lines.append(f"| {st} | " + " | ".join(cells) + " |")

    crf = {m: crf_table(results[m]) for m in modes if MODES[m].get("masks") == "em" and any(r.get("crf") for r in results[m])}
    for m, rows in crf.items():
        lines += ["", f"## What DenseCRF adds, per E-step of the `{m}` run, on the same soft maps", "",
                  "Each E-step's own soft maps (float, as the E-step passed them to `refine_masks`) refined three ways with the run's threshold: "
                  "DenseCRF (`refine_masks`), the threshold alone (`refine_masks(..., use_crf=False)`: a pixel where no "
                  "map reaches the threshold belongs to no concept) and DenseCRF with 0 mean-field iterations (`crf_iterations=0`: "
                  "the argmax of its unary, the labelling it starts from), so DenseCRF - unary is what the CRF's pairwise "
                  "terms add. The trajectory is the run's; only the last "
                  "refinement differs, so this separates DenseCRF from the first masks. \"run's masks\" are the masks the "
                  f"run kept (a refused update keeps the previous one); check: {crf_check(results[m])}.", "",
                  "| step | run's masks | DenseCRF | unary only | threshold only | DenseCRF - threshold [95% interval] | verdict "
                  "| DenseCRF - unary [95% interval] | verdict |",
                  "|---:|---:|---:|---:|---:|---:|---|---:|---|"]
        for row in rows:
            d, p = stats.Interval(**row["difference"]), stats.Interval(**row["pairwise"])
            lines.append(f"| {row['step']} | {fmt(row['run'])} | {fmt(row['crf'])} | {fmt(row['unary'])} | {fmt(row['threshold'])} "
                         f"| {d.text()} | {d.verdict} | {p.text()} | {p.verdict} |")

    lines += ["", "## Targets (a target is met only when the whole interval is on its side)", ""]
    if "iou_target" in diffs:
        d = diffs["iou_target"]
        lines.append(f"- EM final IoU exceeds fixed by >= 0.05: {d.text()}: {d.verdict}")
    for key, label in (("fidelity", "fidelity (exact)"), ("score", "score (partial)")):
        if key in diffs:
            d = diffs[key]
            met = {"em better": "met", "fixed better": "missed"}.get(d.verdict, "not shown")
            lines.append(f"- EM {label} >= fixed: {summary['em'][key]:.3f} vs {summary['fixed'][key]:.3f}, "
                         f"paired difference {d.text()} over {d.values} concepts: {d.verdict} ({met})")
    if "cost" in diffs:
        d = diffs["cost"]
        lines.append(f"- EM cost per EM-phase step <= 1.25x fixed: {d.text(2, '', 'x')}: {d.verdict}")
    for key, label in (("fidelity", "fidelity (exact)"), ("score", "score (partial)")):
        d = diffs.get(f"{key}_of_given")
        if d is not None and d.value is not None:
            lines.append(f"- EM {label} >= 0.85 of given: {d.text(2, '')}: {d.verdict}")
    if "em" in crf and crf["em"]:
        d, p = stats.Interval(**crf["em"][-1]["difference"]), stats.Interval(**crf["em"][-1]["pairwise"])
        lines.append(f"- DenseCRF adds IoU at the last E-step, same maps: over the threshold alone {d.text()}: {d.verdict}; "
                     f"over its unary alone (its pairwise terms) {p.text()}: {p.verdict}")
    if "em" in summary and "em-no-crf" in summary:
        lines.append(f"- em vs em-no-crf (two trajectories; em-no-crf's first masks are thresholded too, so this mixes "
                     f"DenseCRF with the first masks): {summary['em']['final']:.3f} vs {summary['em-no-crf']['final']:.3f}")

    if all(results[m] for m in modes):
        lines += ["", f"## Per {unit_word}: final mean IoU", "", f"| {unit_word} | " + " | ".join(modes) + " |",
                  "|---|" + "---:|" * len(modes)]
        for k, u in enumerate(units):
            lines.append(f"| {u.id} | " + " | ".join(fmt(stats.pooled_mean(iou_groups([results[m][k]]))) for m in modes) + " |")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    payload = {
        "command": command, "provenance": provenance(), "scene_set": scene_set.name, "role": scene_set.role,
        "held_out": scene_set.held_out, "overrides": overrides, "images_per_project": args.images_per_project,
        "weighting": f"each concept of each {unit_word} once", "units": [{"id": u.id, "seeds": u.seeds} for u in units],
        "summary": summary, "differences": {k: v.to_dict() for k, v in diffs.items()}, "crf_per_step": crf,
        "records": results,
    }
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=float))
    plot_modes(summary, crf, args.out.with_suffix(".png"))
    print("\n".join(lines))


def plot_modes(summary: dict, crf: dict, out: Path) -> None:
    from conceptforge.engine.evaluate import plot_curves

    concepts = [{"image": "mean", "token": m, "steps": s["curve"]["steps"], "iou": s["curve"]["iou"]} for m, s in summary.items()]
    for m, rows in crf.items():
        steps = [r["step"] for r in rows]
        concepts.append({"image": f"{m} maps", "token": "DenseCRF", "steps": steps, "iou": [r["crf"] for r in rows]})
        concepts.append({"image": f"{m} maps", "token": "unary only", "steps": steps, "iou": [r["unary"] for r in rows]})
        concepts.append({"image": f"{m} maps", "token": "threshold only", "steps": steps, "iou": [r["threshold"] for r in rows]})
    plot_curves({"concepts": concepts}, out, "mean mask IoU with GT per E-step")


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scene-set", choices=list(SETS), default="dev1",
                    help="dev1-dev6: used to choose settings; test, multi: held out, shipped defaults only")
    ap.add_argument("--skip", type=int, choices=(0, 12), default=None, help="former name of the dev sets: 0 is dev1, 12 is dev2")
    ap.add_argument("--scenes", type=int, default=None, help="units to run: scenes, or projects in multi (default: the set's 12)")
    ap.add_argument("--images-per-project", type=int, default=None, help="scenes per project in the multi set (default 3)")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt template for fidelity (0: skip)")
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--modes", default=DEFAULT_MODES, help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--em-steps", type=int, default=None)
    ap.add_argument("--joint-steps", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], help="extra setting for every mode, key=value (e.g. attn_weight=0.01)")
    ap.add_argument("--allow-tuning-on-test", action="store_true",
                    help="allow --set/--em-steps/--joint-steps on a held-out set; the report then says its figures are not test figures")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    ap.add_argument("--out", type=Path, default=None, help="report path (default benchmarks/results/masks_<set>.md)")
    ap.add_argument("--quick", action="store_true", help="3 units, 1 sample: a smoke run (report under --work unless --out)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.skip is not None:
        if args.scene_set != "dev1":
            ap.error("--skip names a dev set; give either --skip or --scene-set")
        args.scene_set = "dev1" if args.skip == 0 else "dev2"
    scene_set = SETS[args.scene_set]
    if args.quick:
        args.scenes, args.samples = 3, 1
    if args.scenes is None:
        args.scenes = scene_set.size
    if args.scenes < 1:
        ap.error("--scenes must be at least 1")
    if scene_set.max_units is not None and args.scenes > scene_set.max_units:
        ap.error(f"{scene_set.name} has {scene_set.max_units} scenes; more would overlap the next set")
    if args.images_per_project is None:
        args.images_per_project = 3 if scene_set.name == "multi" else 1
    if scene_set.name == "multi" and args.images_per_project < 2:
        ap.error("the multi set needs --images-per-project of at least 2")
    if scene_set.name != "multi" and args.images_per_project != 1:
        ap.error("--images-per-project applies to --scene-set multi only")
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        ap.error(f"unknown mode {', '.join(unknown) or '(none)'}; choose from {', '.join(MODES)}")
    bad = [kv for kv in args.set if "=" not in kv]
    if bad:
        ap.error(f"--set takes key=value, not {bad[0]!r}")
    tuned = bool(args.set) or args.em_steps is not None or args.joint_steps is not None
    variants = [m for m in modes if m not in DEFAULT_MODES.split(",")]
    if scene_set.held_out and (tuned or variants) and not args.allow_tuning_on_test:
        ap.error(f"{scene_set.name} is held out: it is reported only for the shipped defaults, so --set, --em-steps, "
                 f"--joint-steps and modes other than {DEFAULT_MODES} are refused there (choose settings on dev1-dev6; "
                 "--allow-tuning-on-test overrides, and the report then says its figures are not test figures)")
    if args.out is None:
        name = f"masks_{scene_set.name}" + ("_quick" if args.quick else "") + ".md"
        args.out = (args.work if args.quick else ROOT / "benchmarks" / "results") / name
    return args, scene_set, modes


def main(argv: list[str] | None = None) -> None:
    command = shlex.join(["python", *(sys.argv if argv is None else [sys.argv[0], *argv])])
    args, scene_set, modes = parse_args(argv)
    if scene_set.held_out and args.allow_tuning_on_test:
        print(f"NOTE: {scene_set.name} is held out; with --allow-tuning-on-test its report is marked as not test figures.", flush=True)
    import torch

    torch.set_num_threads(args.threads)
    if scene_set.name == "multi":
        units = multi_projects(args.scenes, args.images_per_project, scene_set.base, scene_set.end)
    else:
        units = [Unit(str(s), [s]) for s in scene_seeds(args.scenes, scene_set.skip, scene_set.base, scene_set.end)]
    overrides = {k: v for k, v in (("em_steps", args.em_steps), ("joint_steps", args.joint_steps)) if v is not None}
    overrides.update(dict(kv.split("=", 1) for kv in args.set))
    results: dict[str, list[dict]] = {m: [] for m in modes}
    t0 = time.time()
    for unit in units:
        for mode in modes:
            root = args.work / scene_set.name / f"{unit.id}-{mode}"
            r = run_mode(root, unit, {**MODES[mode], **overrides}, args.samples, args.sample_steps)
            results[mode].append(r)
            fid = stats.pooled_mean(fidelity_groups([r], "fidelity"))
            extra = f" fidelity {fid:.2f} score {stats.pooled_mean(fidelity_groups([r], 'score')):.2f}" if fid is not None else ""
            print(f"[{time.time() - t0:6.0f}s] {unit.id} {mode:10s} IoU {stats.pooled_mean(iou_groups([r], 'first')):.3f} -> "
                  f"{stats.pooled_mean(iou_groups([r])):.3f}" + extra, flush=True)
    write_report(args, command, scene_set, units, modes, results, overrides, time.time() - t0)


if __name__ == "__main__":
    main()
