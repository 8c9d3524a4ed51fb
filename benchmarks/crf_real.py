"""How much DenseCRF refinement recovers from coarse, attention-like maps.

For every scene of the Break-a-Scene examples (real photographs with one human
mask per concept), each human mask is degraded into a coarse map the way a
cross-attention map looks: area pooling to a grid (16×16 or 32×32), a Gaussian
blur, additive Gaussian noise, clipped to [0, 1] (seeded), at several
strengths.  Three refinements turn the same maps back into masks, scored by IoU
with the human masks:

- old: `refine_masks` as it was before its parameters were chosen on photos
  (a frozen copy below: softmax unary with temperature 0.3, rest score equal to
  the threshold, CutLER's pairwise widths in pixels at the image's resolution);
- reference: a plain DenseCRF with CutLER's parameters (maskcut/crf.py: 10
  iterations, Gaussian sxy 3 compat 7, bilateral sxy 50 srgb 5 compat 10) and
  a binary-stack unary (each label's probability is its upsampled map, the rest
  label a constant 0.4), run at the image's resolution;
- new: `refine_masks` as it is now.

With `--ablations`, variants of the new refinement that each undo one of its
choices (the constants of `conceptforge.engine.masks`, patched) are measured on
the same maps, to show where the gain comes from.

"Before" is the thresholded upsampled maps (`refine_masks(..., use_crf=False)`).
The photos are split into tuning photos (`TUNING`, on which the parameters of
`refine_masks` were chosen) and held-out photos.  The CRF time of each method is
the median over repeated runs on the 512 px photos with 3 concepts, one thread.
With `--shapes`, the same is measured on the built-in shapes world (64 px,
seeds 0-49, objects only, `has_background=False`, 16×16 grid).

    OMP_NUM_THREADS=1 python benchmarks/crf_real.py --shapes --ablations
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: the timings are for one core

import argparse
import contextlib
import functools
import shlex
import statistics
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing
from conceptforge.engine import masks as masks_module  # noqa: E402
from conceptforge.engine.masks import (  # noqa: E402
    iou,
    load_mask_png,
    normalise_maps,
    refine_masks,
    resize_mask,
    upsample_maps,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/break-a-scene-examples"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "crf_real.md"
FULL_COVERAGE = 0.99  # masks covering at least this share of the image need no rest label
TUNING = ("bear", "chicken", "rabbit", "toys")  # every other photo in name order; the rest are held out
STRENGTHS = ((0.5, 0.05), (1.0, 0.1), (1.5, 0.2), (2.0, 0.3))  # (blur sigma in grid cells, noise std)
GRIDS = (16, 32)
METHODS = ("old", "reference", "new")
REFERENCE_REST = 0.4
TIMING_CONCEPTS = 3

Refiner = Callable[[np.ndarray, np.ndarray, float, bool], np.ndarray]


# --------------------------------------------------------------------------- the refinements compared


def old_refine_masks(image: np.ndarray, maps: np.ndarray, threshold: float, has_background: bool) -> np.ndarray:
    """`refine_masks` before its parameters were chosen on photos (frozen copy, CRF path only)."""
    import pydensecrf.densecrf as dcrf

    height, width = image.shape[:2]
    scores = normalise_maps(upsample_maps(maps, height, width))
    alive = scores.max(axis=(1, 2), initial=0.0) > 0
    thresholded = scores >= threshold
    logits = np.where(alive[:, None, None], scores, -np.inf)
    if not has_background:
        logits = np.concatenate([logits, np.full((1, height, width), threshold, np.float32)])
    logits = logits / 0.3
    logits = logits - logits.max(axis=0, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=0, keepdims=True)
    n_labels = len(probs)
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.maximum(probs, 1e-8)).reshape(n_labels, -1), np.float32))
    crf.addPairwiseGaussian(sxy=3, compat=7)
    crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.require(image, np.uint8, ["C", "W"]), compat=10)
    labels = np.asarray(crf.inference(10)).argmax(axis=0).reshape(height, width)
    masks = labels[None] == np.arange(len(scores))[:, None, None]
    masks[~alive] = False
    for k in np.flatnonzero(alive & ~masks.any(axis=(1, 2))):  # the old non-empty fallback
        masks[k] = thresholded[k]
        for j in range(len(masks)):
            if j != k and (masks[j] & ~masks[k]).any():
                masks[j] &= ~masks[k]
    return masks


def reference_refine_masks(image: np.ndarray, maps: np.ndarray, threshold: float, has_background: bool) -> np.ndarray:
    """Plain DenseCRF with CutLER's parameters and a binary-stack unary (rest label 0.4); `threshold` unused."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    height, width = image.shape[:2]
    probs = normalise_maps(upsample_maps(maps, height, width))
    if not has_background:
        probs = np.concatenate([probs, np.full((1, height, width), REFERENCE_REST, np.float32)])
    crf = dcrf.DenseCRF2D(width, height, len(probs))
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=3, compat=7)
    crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.require(image, np.uint8, ["C", "W"]), compat=10)
    labels = np.asarray(crf.inference(10)).argmax(axis=0).reshape(height, width)
    return labels[None] == np.arange(len(maps))[:, None, None]


def new_refine_masks(image: np.ndarray, maps: np.ndarray, threshold: float, has_background: bool) -> np.ndarray:
    """`refine_masks` as it is now."""
    return refine_masks(image, maps, threshold, use_crf=True, has_background=has_background)


def thresholded_masks(image: np.ndarray, maps: np.ndarray, threshold: float, has_background: bool) -> np.ndarray:
    """The masks before refinement: `refine_masks(..., use_crf=False)`."""
    return refine_masks(image, maps, threshold, use_crf=False, has_background=has_background)


REFINERS: dict[str, Refiner] = {
    "before": thresholded_masks,
    "old": old_refine_masks,
    "reference": reference_refine_masks,
    "new": new_refine_masks,
}

# name: (constants of conceptforge.engine.masks to patch, keyword arguments of refine_masks)
ABLATIONS: dict[str, tuple[dict[str, float], dict[str, int]]] = {
    "without the colour model (COLOUR_WEIGHT 0)": ({"COLOUR_WEIGHT": 0.0}, {}),
    "probability = map, as CutLER's (UNARY_POWER 1)": ({"UNARY_POWER": 1.0}, {}),
    "rest score = threshold (REST_FACTOR 1)": ({"REST_FACTOR": 1.0}, {}),
    "rest score 0.4, CutLER reference's (REST_FACTOR 0.8)": ({"REST_FACTOR": 0.8}, {}),
    "colour histograms from unsharpened weights (COLOUR_WEIGHT_POWER 1)": ({"COLOUR_WEIGHT_POWER": 1}, {}),
    "bilateral compat 10, CutLER's (BILATERAL_COMPAT 10)": ({"BILATERAL_COMPAT": 10}, {}),
    "kernel widths in pixels of the 256 px CRF image, not scaled (REFERENCE_SIDE 256)": ({"REFERENCE_SIDE": 256}, {}),
    "bilateral width not kept at 16 px or more on small images (MIN_BILATERAL_SXY 0)": ({"MIN_BILATERAL_SXY": 0.0}, {}),
    "CRF at the photo's 512 px (CRF_SIDE 512)": ({"CRF_SIDE": 512}, {}),
    "5 iterations (crf_iterations=5)": ({}, {"crf_iterations": 5}),
    "maps not denoised before the CRF (MAP_SMOOTHING 0)": ({"MAP_SMOOTHING": 0.0}, {}),
}


def ablated_refine_masks(
    constants: dict[str, float], kwargs: dict[str, int],
    image: np.ndarray, maps: np.ndarray, threshold: float, has_background: bool,
) -> np.ndarray:
    """`refine_masks` with some of its module's constants patched and extra keyword arguments."""
    with contextlib.ExitStack() as stack:
        for name, value in constants.items():
            stack.enter_context(mock.patch.object(masks_module, name, value))
        return refine_masks(image, maps, threshold, use_crf=True, has_background=has_background, **kwargs)


for _name, (_constants, _kwargs) in ABLATIONS.items():
    REFINERS[_name] = functools.partial(ablated_refine_masks, _constants, _kwargs)


# --------------------------------------------------------------------------- degradation and data


@dataclass(frozen=True)
class Degradation:
    """How a mask is turned into an attention-like coarse map."""

    grid: int = 16
    blur_sigma: float = 1.0  # in grid cells
    noise: float = 0.1

    def apply(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Area-pooled, blurred, noised and clipped (grid, grid) map of a boolean mask."""
        pooled = Image.fromarray(mask.astype(np.float32)).resize((self.grid, self.grid), Image.BOX)
        blurred = gaussian_blur(np.asarray(pooled), self.blur_sigma)
        return np.clip(blurred + rng.normal(0.0, self.noise, blurred.shape), 0.0, 1.0).astype(np.float32)

    def label(self) -> str:
        return f"{self.grid}x{self.grid}, blur {self.blur_sigma:g}, noise {self.noise:g}"


@dataclass
class Scene:
    """A photo (or shapes-world image) and its human masks."""

    name: str
    image: np.ndarray
    masks: list[np.ndarray]

    @property
    def has_background(self) -> bool:
        return float(np.logical_or.reduce(self.masks).mean()) >= FULL_COVERAGE


def gaussian_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array with edge replication."""
    if sigma <= 0:
        return values
    radius = max(1, int(round(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(values, radius, mode="edge")
    rows = np.apply_along_axis(np.convolve, 1, padded, taps, mode="valid")
    return np.apply_along_axis(np.convolve, 0, rows, taps, mode="valid")


def degraded_maps(scene: Scene, degradation: Degradation, seed: int) -> np.ndarray:
    """The scene's masks degraded with a noise stream fixed by scene, degradation and seed."""
    rng = np.random.default_rng(zlib.crc32(repr((scene.name, degradation, seed)).encode()))
    return np.stack([degradation.apply(m, rng) for m in scene.masks])


def load_scene(folder: Path, max_side: int) -> Scene:
    """A scene's RGB image (longer side at most max_side) and its human masks at the image's size."""
    with Image.open(folder / "img.jpg") as img:
        img = img.convert("RGB")
    masks = [load_mask_png(p, size=img.size) for p in sorted(folder.glob("mask[0-9]*.png"), key=_mask_number)]
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        masks = [resize_mask(m, img.height, img.width) for m in masks]
    return Scene(folder.name, np.asarray(img), masks)


def _mask_number(path: Path) -> int:
    """N of maskN.png, so that mask10 sorts after mask9."""
    return int(path.stem.removeprefix("mask"))


def load_photos(data: Path, max_side: int) -> list[Scene]:
    """Every scene folder of `data` (folders with an img.jpg), in name order."""
    if not data.is_dir():
        raise SystemExit(f"no folder {data}: pass --data with the Break-a-Scene example photos")
    scenes = sorted(p for p in data.iterdir() if (p / "img.jpg").is_file())
    if not scenes:
        raise SystemExit(f"no scenes (folders with img.jpg) in {data}")
    return [load_scene(p, max_side) for p in scenes]


def shapes_scenes(seeds: range) -> list[Scene]:
    """Shapes-world scenes, objects only."""
    from conceptforge.shapes.world import sample_scene

    out = []
    for s in seeds:
        scene = sample_scene(s)
        out.append(Scene(f"seed {s}", np.asarray(scene.image.convert("RGB")), [o.mask for o in scene.objects]))
    return out


# --------------------------------------------------------------------------- measurement


def measure(
    scenes: list[Scene], degradations: list[Degradation], seeds: list[int], threshold: float, methods: list[str]
) -> dict[tuple[Degradation, str, str], list[float]]:
    """Per (degradation, scene, method): the per-concept IoUs, concatenated over noise seeds."""
    ious: dict[tuple[Degradation, str, str], list[float]] = {}
    for degradation in degradations:
        for scene in scenes:
            for seed in seeds:
                maps = degraded_maps(scene, degradation, seed)
                for method in methods:
                    masks = REFINERS[method](scene.image, maps, threshold, scene.has_background)
                    key = (degradation, scene.name, method)
                    ious.setdefault(key, []).extend(iou(p, m) for p, m in zip(masks, scene.masks))
    return ious


def crf_seconds(scenes: list[Scene], threshold: float, repeats: int) -> dict[str, float]:
    """Median seconds of one CRF refinement per method on the photos with `TIMING_CONCEPTS` concepts."""
    chosen = [s for s in scenes if len(s.masks) == TIMING_CONCEPTS] or scenes
    degradation = Degradation()
    out = {}
    for method in METHODS:
        times = []
        for _ in range(repeats):
            for scene in chosen:
                maps = degraded_maps(scene, degradation, 0)
                start = time.perf_counter()
                REFINERS[method](scene.image, maps, threshold, scene.has_background)
                times.append(time.perf_counter() - start)
        out[method] = statistics.median(times)
    return out


def scale_agreement(scenes: list[Scene], threshold: float, sides: tuple[int, int] = (256, 1024)) -> list[str]:
    """Markdown rows: per photo, the lowest per-concept IoU between refinements of the same maps at two sizes."""
    lines = [
        f"| photo | old: min IoU {sides[0]} vs {sides[1]} px | new: min IoU {sides[0]} vs {sides[1]} px |",
        "|---|---:|---:|",
    ]
    worst = {"old": 1.0, "new": 1.0}
    for scene in scenes:
        maps = degraded_maps(scene, Degradation(), 0)
        cells = []
        for method in ("old", "new"):
            small, large = (
                REFINERS[method](_resized(scene.image, side), maps, threshold, scene.has_background) for side in sides
            )
            value = min(iou(a, resize_mask(b, *a.shape)) for a, b in zip(small, large))
            worst[method] = min(worst[method], value)
            cells.append(f"{value:.3f}")
        lines.append(f"| {scene.name} | {' | '.join(cells)} |")
    lines.append(f"| **lowest** | **{worst['old']:.3f}** | **{worst['new']:.3f}** |")
    return lines


def _resized(image: np.ndarray, side: int) -> np.ndarray:
    """A square image resized to side×side."""
    return np.asarray(Image.fromarray(image).resize((side, side), Image.LANCZOS))


# --------------------------------------------------------------------------- tables


def _mean(values: list[float]) -> float:
    """Mean of a list, NaN when it is empty."""
    return float(np.mean(values)) if values else float("nan")


def _scene_mean(ious, degradation: Degradation, names: list[str], method: str) -> float:
    """Mean over scenes of each scene's mean IoU over its concepts (and seeds)."""
    return _mean([_mean(ious[(degradation, n, method)]) for n in names])


def summary_table(ious, degradations: list[Degradation], groups: dict[str, list[str]]) -> list[str]:
    """Markdown: per degradation and photo group, mean IoU of each method and its gain over 'before'."""
    lines = [
        "| maps | photos | before | old | reference | new | gain old | gain reference | gain new | new - reference |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for degradation in degradations:
        for group, names in groups.items():
            v = {m: _scene_mean(ious, degradation, names, m) for m in ("before", *METHODS)}
            lines.append(
                f"| {degradation.label()} | {group} | {v['before']:.3f} | {v['old']:.3f} | {v['reference']:.3f} "
                f"| **{v['new']:.3f}** | {v['old'] - v['before']:+.3f} | {v['reference'] - v['before']:+.3f} "
                f"| **{v['new'] - v['before']:+.3f}** | {v['new'] - v['reference']:+.3f} |"
            )
    return lines


def mean_gain_table(ious, degradations: list[Degradation], groups: dict[str, list[str]]) -> list[str]:
    """Markdown: per grid and photo group, the gain over 'before' averaged over the strengths."""
    lines = ["| grid | photos | gain old | gain reference | gain new |", "|---|---|---:|---:|---:|"]
    for grid in sorted({d.grid for d in degradations}):
        chosen = [d for d in degradations if d.grid == grid]
        for group, names in groups.items():
            gains = {
                m: _mean([_scene_mean(ious, d, names, m) - _scene_mean(ious, d, names, "before") for d in chosen])
                for m in METHODS
            }
            lines.append(
                f"| {grid}x{grid} | {group} | {gains['old']:+.3f} | {gains['reference']:+.3f} | {gains['new']:+.3f} |"
            )
    return lines


def per_photo_table(ious, degradations: list[Degradation], scenes: list[Scene]) -> list[str]:
    """Markdown: one row per degradation and photo, mean IoU over its concepts and the seeds."""
    lines = ["| maps | photo | set | concepts | before | old | reference | new |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for degradation in degradations:
        for scene in scenes:
            group = "tuning" if scene.name in TUNING else "held out"
            v = {m: _mean(ious[(degradation, scene.name, m)]) for m in ("before", *METHODS)}
            lines.append(
                f"| {degradation.label()} | {scene.name} | {group} | {len(scene.masks)} | {v['before']:.3f} "
                f"| {v['old']:.3f} | {v['reference']:.3f} | {v['new']:.3f} |"
            )
    return lines


def ablation_table(ious, degradations: list[Degradation], groups: dict[str, list[str]]) -> list[str]:
    """Markdown: per method, mean IoU over all photos at each degradation, and the mean over degradations
    of the tuning and of the held-out photos."""
    heads = [f"{d.grid}: {d.blur_sigma:g}/{d.noise:g}" for d in degradations]
    lines = [
        f"| method | {' | '.join(heads)} | tuning, mean | held out, mean |",
        "|---|" + "---:|" * (len(heads) + 2),
    ]
    every, tuning, held = groups.values()
    for method in ("reference", "new", *ABLATIONS):
        cells = [f"{_scene_mean(ious, d, every, method):.3f}" for d in degradations]
        for names in (tuning, held):
            cells.append(f"{_mean([_scene_mean(ious, d, names, method) for d in degradations]):.3f}")
        label = f"**{method}**" if method == "new" else method
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


def shapes_table(ious, degradations: list[Degradation], scenes: list[Scene], methods: list[str]) -> list[str]:
    """Markdown: per method, mean IoU over all objects of the shapes scenes at each degradation."""
    lines = [
        f"| method | {' | '.join(d.label() for d in degradations)} |",
        "|---|" + "---:|" * len(degradations),
    ]
    for method in methods:
        cells = [f"{_mean([x for s in scenes for x in ious[(d, s.name, method)]]):.3f}" for d in degradations]
        label = f"**{method}**" if method == "new" else method
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of scene folders (img.jpg, mask*.png)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown results file")
    parser.add_argument("--shapes", action="store_true", help="also measure the shapes world, seeds 0-49")
    parser.add_argument("--ablations", action="store_true", help="also measure variants of the new refinement")
    parser.add_argument("--max-side", type=int, default=512, help="resize photos whose longer side exceeds this")
    parser.add_argument("--seeds", type=int, default=3, help="noise seeds per photo and degradation")
    parser.add_argument("--repeats", type=int, default=5, help="timing runs per photo and method")
    parser.add_argument("--threshold", type=float, default=0.5)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    degradations = [Degradation(g, b, n) for g in GRIDS for b, n in STRENGTHS]
    seeds = list(range(args.seeds))
    photos = load_photos(args.data, args.max_side)
    names = [s.name for s in photos]
    groups = {
        f"all {len(names)}": names,
        "tuning": [n for n in names if n in TUNING],
        "held out": [n for n in names if n not in TUNING],
    }
    methods = ["before", *METHODS, *(ABLATIONS if args.ablations else [])]
    ious = measure(photos, degradations, seeds, args.threshold, methods)
    seconds = crf_seconds(photos, args.threshold, args.repeats)
    scale = scale_agreement(photos, args.threshold)
    command = "python " + " ".join(shlex.quote(a) for a in [_display_path(sys.argv[0]), *sys.argv[1:]])
    if os.environ.get("OMP_NUM_THREADS"):
        command = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} {command}"
    parts = [
        "# DenseCRF refinement of degraded masks",
        "",
        f"Produced by `{command}`.",
        "",
        f"Degradation of each human mask: area pooling to the grid, Gaussian blur (sigma in grid cells), "
        f"additive Gaussian noise, clip to [0, 1]; {len(seeds)} noise seeds per photo and degradation. "
        f"Threshold {args.threshold}. Photos resized so the longer side is at most {args.max_side} px (the "
        "examples are 512x512). IoU: per photo the mean over its concepts and seeds, then the mean over photos. "
        "'before' = thresholded upsampled maps; 'old' = the refinement before this tuning (frozen copy in the "
        "script); 'reference' = plain DenseCRF with CutLER's parameters and a binary-stack unary (rest 0.4) at "
        "the image's resolution; 'new' = `refine_masks` now. "
        f"Tuning photos (parameters chosen on these): {', '.join(groups['tuning'])}; held out: "
        f"{', '.join(groups['held out'])}. A scene gets has_background=True only if its masks cover >= "
        f"{FULL_COVERAGE:.0%} of the image (none of the photos does).",
        "",
        "## Mean IoU per degradation",
        "",
        *summary_table(ious, degradations, groups),
        "",
        "## Gain over 'before', averaged over the four strengths",
        "",
        *mean_gain_table(ious, degradations, groups),
        "",
        f"## CRF time per {args.max_side} px photo with {TIMING_CONCEPTS} concepts (one thread)",
        "",
        f"Median of {args.repeats} runs on each photo with {TIMING_CONCEPTS} concepts "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); the machine is shared, so single runs vary.",
        "",
        "| method | median seconds |",
        "|---|---:|",
        *[f"| {m} | {s:.3f} |" for m, s in seconds.items()],
        "",
        "## Scale: the same maps refined on the photo resized to 256 and to 1024 px",
        "",
        "Maps of the 16x16, blur 1, noise 0.1 degradation (seed 0); the 1024 px masks are resized to 256 px.",
        "",
        *scale,
    ]
    if args.ablations:
        parts += [
            "",
            "## Ablations: the new refinement with one of its choices undone",
            "",
            f"Mean IoU over the {len(names)} photos per degradation (grid: blur/noise), and the mean over the "
            f"{len(degradations)} degradations of the tuning and of the held-out photos.",
            "",
            *ablation_table(ious, degradations, groups),
        ]
    if args.shapes:
        shapes = shapes_scenes(range(50))
        shape_degradations = [Degradation(16, b, n) for b, n in STRENGTHS]
        shape_ious = measure(shapes, shape_degradations, seeds, args.threshold, methods)
        title = "## Shapes world (64 px), seeds 0-49, objects only (has_background=False), mean IoU over objects"
        parts += ["", title, "", *shapes_table(shape_ious, shape_degradations, shapes, methods)]
    parts += ["", "## Per photo", "", *per_photo_table(ious, degradations, photos)]
    text = "\n".join(parts) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


def _display_path(script: str) -> str:
    """The script's path relative to the working directory when it lies below it."""
    path = Path(script).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return script


if __name__ == "__main__":
    main()
