"""How much DenseCRF refinement recovers from coarse, attention-like maps.

For every scene of the Break-a-Scene examples (real photographs with one human
mask per concept), each human mask is degraded into a coarse map the way a
cross-attention map looks: area pooling to 16×16, a Gaussian blur, additive
Gaussian noise, clipped to [0, 1] (seeded).  `refine_masks` turns the maps back
into masks; the IoU with the human masks is reported before refinement (the
thresholded upsampled maps, `use_crf=False`) and after (DenseCRF).  Photos whose
longer side exceeds 512 px are resized to 512 first.  Pixels in no human mask
are background; a scene gets `has_background=True` only when its masks cover
the whole image.

With `--shapes`, the same is measured on the built-in shapes world (seeds
0-49, objects only, `has_background=False`).

    python benchmarks/crf_real.py --shapes
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing
from conceptforge.engine.masks import iou, load_mask_png, refine_masks, resize_mask  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/break-a-scene-examples"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "crf_real.md"
FULL_COVERAGE = 0.99  # masks covering at least this share of the image need no rest label


@dataclass
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


@dataclass
class Result:
    """Per-concept IoUs of one image, before and after refinement."""

    name: str
    before: list[float]
    after: list[float]
    has_background: bool
    coverage: float
    seconds: float
    group: str = ""


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


def measure(
    name: str, image: np.ndarray, masks: list[np.ndarray], degradation: Degradation, threshold: float,
    rng: np.random.Generator, group: str = "",
) -> Result:
    """Degrade the masks, refine them without and with DenseCRF, and score both against the masks."""
    coverage = float(np.logical_or.reduce(masks).mean())
    has_background = coverage >= FULL_COVERAGE
    maps = np.stack([degradation.apply(m, rng) for m in masks])
    start = time.perf_counter()
    before = refine_masks(image, maps, threshold, use_crf=False, has_background=has_background)
    after = refine_masks(image, maps, threshold, use_crf=True, has_background=has_background)
    seconds = time.perf_counter() - start
    return Result(
        name,
        [iou(p, m) for p, m in zip(before, masks)],
        [iou(p, m) for p, m in zip(after, masks)],
        has_background,
        coverage,
        seconds,
        group,
    )


def load_scene(folder: Path, max_side: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A scene's RGB image (longer side at most max_side) and its human masks at the image's size."""
    with Image.open(folder / "img.jpg") as img:
        img = img.convert("RGB")
    masks = [load_mask_png(p, size=img.size) for p in sorted(folder.glob("mask[0-9]*.png"), key=_mask_number)]
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        masks = [resize_mask(m, img.height, img.width) for m in masks]
    return np.asarray(img), masks


def _mask_number(path: Path) -> int:
    """N of maskN.png, so that mask10 sorts after mask9."""
    return int(path.stem.removeprefix("mask"))


def real_results(data: Path, max_side: int, degradation: Degradation, threshold: float, seed: int) -> list[Result]:
    """One result per scene folder of `data` (folders with an img.jpg)."""
    rng = np.random.default_rng(seed)
    scenes = sorted(p for p in data.iterdir() if (p / "img.jpg").is_file())
    if not scenes:
        raise SystemExit(f"no scenes (folders with img.jpg) in {data}")
    return [measure(p.name, *load_scene(p, max_side), degradation, threshold, rng) for p in scenes]


def shapes_results(seeds: range, degradation: Degradation, threshold: float, seed: int) -> list[Result]:
    """One result per shapes-world scene, objects only (has_background=False)."""
    from conceptforge.shapes.world import sample_scene

    rng = np.random.default_rng(seed)
    results = []
    for s in seeds:
        scene = sample_scene(s)
        image = np.asarray(scene.image.convert("RGB"))
        flat = scene.background_second is None and all(o.second_color is None for o in scene.objects)
        masks = [o.mask for o in scene.objects]
        results.append(measure(f"seed {s}", image, masks, degradation, threshold, rng, "flat" if flat else "two-tone"))
    return results


def _mean(values: list[float]) -> float:
    """Mean of a list, NaN when it is empty."""
    return float(np.mean(values)) if values else float("nan")


def real_table(results: list[Result]) -> list[str]:
    """Markdown table: per scene mean IoU over its concepts, then the mean over scenes."""
    lines = [
        "| scene | concepts | mask coverage | has_background | IoU before | IoU after | change | seconds |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        b, a = _mean(r.before), _mean(r.after)
        lines.append(
            f"| {r.name} | {len(r.before)} | {r.coverage:.2f} | {r.has_background} | {b:.3f} | {a:.3f} "
            f"| {a - b:+.3f} | {r.seconds:.1f} |"
        )
    b = _mean([_mean(r.before) for r in results])
    a = _mean([_mean(r.after) for r in results])
    concepts = sum(len(r.before) for r in results)
    lines.append(f"| **mean over scenes** | {concepts} | | | **{b:.3f}** | **{a:.3f}** | {a - b:+.3f} | |")
    return lines


def shapes_table(results: list[Result]) -> list[str]:
    """Markdown table: mean IoU over objects, all scenes and split by flat / two-tone scenes."""
    groups = {
        "all scenes": results,
        "flat scenes (single-colour objects and background)": [r for r in results if r.group == "flat"],
        "two-tone scenes (a two-tone object or background)": [r for r in results if r.group == "two-tone"],
    }
    lines = ["| subset | scenes | objects | IoU before | IoU after | change |", "|---|---:|---:|---:|---:|---:|"]
    for label, group in groups.items():
        before = [v for r in group for v in r.before]
        after = [v for r in group for v in r.after]
        lines.append(
            f"| {label} | {len(group)} | {len(before)} | {_mean(before):.3f} | {_mean(after):.3f} "
            f"| {_mean(after) - _mean(before):+.3f} |"
        )
    return lines


def report(command: str, settings: str, real: list[str], shapes: list[str] | None) -> str:
    """The results file's Markdown."""
    parts = [
        "# DenseCRF refinement of degraded masks",
        "",
        f"Produced by `{command}`.",
        "",
        settings,
        "",
        "## Real photos (Break-a-Scene examples), mean IoU per scene over its concepts",
        "",
        *real,
    ]
    if shapes is not None:
        title = "## Shapes world, seeds 0-49, objects only (has_background=False), mean IoU over objects"
        parts += ["", title, "", *shapes]
    return "\n".join(parts) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of scene folders (img.jpg, mask*.png)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown results file")
    parser.add_argument("--shapes", action="store_true", help="also measure the shapes world, seeds 0-49")
    parser.add_argument("--max-side", type=int, default=512, help="resize photos whose longer side exceeds this")
    parser.add_argument("--grid", type=int, default=16, help="coarse map resolution")
    parser.add_argument("--blur", type=float, default=1.0, help="Gaussian blur sigma, in grid cells")
    parser.add_argument("--noise", type=float, default=0.1, help="std of the additive Gaussian noise")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    degradation = Degradation(args.grid, args.blur, args.noise)
    settings = (
        f"Degradation: area pooling to {args.grid}x{args.grid}, Gaussian blur sigma {args.blur} cells, "
        f"additive noise std {args.noise}, clip to [0, 1], seed {args.seed}. Threshold {args.threshold}. "
        f"Photos resized so the longer side is at most {args.max_side} px (the examples are 512x512 already). "
        "'Before' is `refine_masks(..., use_crf=False)`, 'after' is `refine_masks(..., use_crf=True)` "
        f"(seconds: both calls). A scene gets has_background=True only if its masks cover >= {FULL_COVERAGE:.0%} "
        "of the image."
    )
    real = real_table(real_results(args.data, args.max_side, degradation, args.threshold, args.seed))
    shapes = shapes_table(shapes_results(range(50), degradation, args.threshold, args.seed)) if args.shapes else None
    command = "python " + " ".join(shlex.quote(a) for a in [_display_path(sys.argv[0]), *sys.argv[1:]])
    text = report(command, settings, real, shapes)
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
