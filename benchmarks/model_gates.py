"""Measure the built-in model's gates and write benchmarks/results/model_gates.md.

    python benchmarks/model_gates.py --model PATH [--guidance 5.0] [--quick]

Gates (all on held-out seeds; training scenes use seeds >= 1,000,000):
  a. cross-attention: the thresholded 16x16 attention map of each caption word
     against its region's mask, on 200 two-object scenes (seeds 600000+i);
  b. samples: 100 prompts "a {colour} {shape} on a {colour} background", read
     back by the deterministic recogniser;
  c. VAE reconstruction PSNR on 200 scenes (seeds 700000+i);
  d. the recogniser itself on 200 rendered one-object scenes (seeds 800000+i).
`--quick` runs 20 scenes / prompts per gate, for smoke tests.  The report
starts with the command that made it and is also printed.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing
from conceptforge.engine import backbone  # noqa: E402
from conceptforge.engine.attention import AttentionStore, capture_cross_attention, normalize_minmax, resize_maps  # noqa: E402
from conceptforge.engine.masks import iou  # noqa: E402
from conceptforge.errors import ConceptforgeError  # noqa: E402
from conceptforge.shapes import model_path  # noqa: E402
from conceptforge.shapes.data import drop_color_words, image_tensor  # noqa: E402
from conceptforge.shapes.recognise import background_is, contains, recognise  # noqa: E402
from conceptforge.shapes.world import COLORS, GENERIC_NOUNS, SHAPES, SIZE, Scene, sample_scene  # noqa: E402

ATTENTION_SEEDS = 600_000
VAE_SEEDS = 700_000
RECOGNISER_SEEDS = 800_000
PROMPT_SEED = 900_000
ATTENTION_TIMESTEPS = tuple(range(100, 900, 100))
GRID_SAMPLES = 32

# word kinds of the attention gate
SHAPE, GENERIC, COLOR, BG_COLOR, BACKGROUND = "shape word", "generic noun", "object colour word", "background colour word", '"background"'


@dataclass(frozen=True)
class Gate:
    """One gate: what was measured against its target (measured >= target passes)."""

    name: str
    measured: float
    target: float
    unit: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.measured >= self.target)


@dataclass(frozen=True)
class TrackedWord:
    """A caption word that names a region: its token position, kind and region mask."""

    position: int
    kind: str
    mask: np.ndarray


# --------------------------------------------------------------------------- model


def default_model() -> Path | None:
    """The built-in model's folder, when it is installed."""
    try:
        return model_path()
    except ConceptforgeError:
        return None


def load_pipeline(path: Path, device: str):
    """The model folder's StableDiffusionPipeline in float32 on `device` (the engine's loader)."""
    return backbone.load_pipeline(backbone.resolve_source(str(path))).to(device)


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def encode_images(pipe, images: list[Image.Image]) -> torch.Tensor:
    """Scaled VAE latents (posterior means) of PIL images."""
    x = torch.stack([image_tensor(im) for im in images]).to(pipe.device)
    return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor


@torch.no_grad()
def encode_captions(pipe, captions: list[str]) -> torch.Tensor:
    """Text-encoder hidden states of captions padded to the tokenizer's length."""
    tok = pipe.tokenizer
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    return pipe.text_encoder(ids.to(pipe.device))[0]


def check_one_token_per_word(tokenizer, caption: str) -> None:
    """The gate relies on caption word i being token i + 1."""
    n_tokens = len(tokenizer(caption).input_ids)
    n_words = len(caption.split())
    if n_tokens != n_words + 2:
        raise RuntimeError(f"caption {caption!r} has {n_tokens - 2} tokens for {n_words} words")


# --------------------------------------------------------------------------- a. attention


def tracked_words(scene: Scene) -> list[TrackedWord]:
    """The caption words that name a region, with their kind and region mask."""
    words = scene.caption.split()
    tracked = []
    for i, (word, owner) in enumerate(zip(words, scene.word_owners)):
        if owner is None:
            continue
        if owner == -1:
            kind, mask = (BACKGROUND if word == "background" else BG_COLOR), scene.background_mask
        else:
            noun = i + 1 == len(words) or scene.word_owners[i + 1] != owner
            kind = (GENERIC if word in GENERIC_NOUNS else SHAPE) if noun else COLOR
            mask = scene.objects[owner].mask
        tracked.append(TrackedWord(i + 1, kind, mask))  # +1 for the start token
    return tracked


def scene_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """(len(ATTENTION_TIMESTEPS), B, *shape) noise, drawn per scene from its seed (independent of batching)."""
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    return torch.stack([torch.stack([torch.randn(shape, generator=g) for g in gens]) for _ in ATTENTION_TIMESTEPS])


@torch.no_grad()
def mean_attention(pipe, latents: torch.Tensor, context: torch.Tensor, token_index: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(B, K, 16, 16) attention of the tracked tokens at the 16x16 layers, averaged over ATTENTION_TIMESTEPS."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    store = AttentionStore()
    store.token_index = token_index
    size = latents.shape[-1]
    total = torch.zeros(latents.shape[0], token_index.shape[1], size, size)
    with capture_cross_attention(pipe.unet, store, factor=1):
        for step, eps in zip(ATTENTION_TIMESTEPS, noise):
            t = torch.full((latents.shape[0],), step, dtype=torch.long, device=latents.device)
            store.reset()
            pipe.unet(scheduler.add_noise(latents, eps.to(latents.device), t), t, encoder_hidden_states=context)
            total += store.mean_maps(size, size).float().cpu()
    return total / len(ATTENTION_TIMESTEPS)


def bare_caption(scene: Scene) -> tuple[str, list[TrackedWord]]:
    """The scene's caption without colour words ("a star and a cross on a
    background", as a new concept's init words read) and its tracked nouns."""
    words = tracked_words(scene)
    index = np.array([w.position for w in words])
    caption, moved, valid = drop_color_words(scene.caption, index, np.ones(len(words), np.float32), 1.0, np.random.default_rng(0))
    return caption, [TrackedWord(int(p), w.kind, w.mask) for w, p, v in zip(words, moved, valid) if v]


def attention_ious(pipe, scenes: list[Scene], seeds: list[int], bare: bool = False) -> dict[str, list[float]]:
    """IoU of each tracked word's thresholded (0.5 after min-max) attention map with its region, by kind
    (`bare`: in the captions without colour words)."""
    captions, tracked = zip(*[bare_caption(s) for s in scenes]) if bare else ([s.caption for s in scenes], [tracked_words(s) for s in scenes])
    k = max(len(t) for t in tracked)
    index = torch.tensor([[w.position for w in t] + [0] * (k - len(t)) for t in tracked])
    latents = encode_images(pipe, [s.image for s in scenes])
    context = encode_captions(pipe, list(captions))
    maps = mean_attention(pipe, latents, context, index, scene_noise(seeds, tuple(latents.shape[1:])))
    binary = (resize_maps(normalize_minmax(maps), SIZE, SIZE) > 0.5).numpy()
    ious: dict[str, list[float]] = {}
    for b, words in enumerate(tracked):
        for j, word in enumerate(words):
            ious.setdefault(word.kind, []).append(iou(binary[b, j], word.mask))
    return ious


def attention_gate(pipe, n: int, batch: int) -> tuple[list[Gate], dict[str, float]]:
    """Gate a: mean IoU by word kind on n two-object scenes."""
    seeds = [ATTENTION_SEEDS + i for i in range(n)]
    scenes = [sample_scene(seed, n_objects=2) for seed in seeds]
    check_one_token_per_word(pipe.tokenizer, scenes[0].caption)
    ious: dict[str, list[float]] = {}
    bare: dict[str, list[float]] = {}
    for chunk, chunk_seeds in zip(batches(scenes, batch), batches(seeds, batch)):
        for kind, values in attention_ious(pipe, chunk, chunk_seeds).items():
            ious.setdefault(kind, []).extend(values)
        for kind, values in attention_ious(pipe, chunk, chunk_seeds, bare=True).items():
            bare.setdefault(kind, []).extend(values)
    means = {kind: float(np.mean(v)) for kind, v in ious.items()}
    gates = [
        Gate("attention IoU, shape words", means.get(SHAPE, 0.0), 0.55),
        Gate('attention IoU, "background"', means.get(BACKGROUND, 0.0), 0.80),
    ]
    details = {f"{kind} (n={len(ious[kind])})": means[kind] for kind in (SHAPE, GENERIC, COLOR, BG_COLOR, BACKGROUND) if kind in ious}
    details.update({f"{kind}, caption without colour words (n={len(v)})": float(np.mean(v)) for kind, v in bare.items()})
    return gates, details


# --------------------------------------------------------------------------- b. samples


@dataclass(frozen=True)
class Prompt:
    color: str
    shape: str
    background: str

    @property
    def text(self) -> str:
        return f"a {self.color} {self.shape} on a {self.background} background"


def held_out_prompts(n: int, seed: int = PROMPT_SEED) -> list[Prompt]:
    """n seeded prompts with an object colour different from the background colour."""
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(n):
        color, background = (str(c) for c in rng.choice(list(COLORS), size=2, replace=False))
        prompts.append(Prompt(color, str(rng.choice(SHAPES)), background))
    return prompts


def generate(pipe, prompts: list[Prompt], guidance: float, batch: int) -> list[Image.Image]:
    """One 64x64 sample per prompt, 30 steps; batch i uses generator seed PROMPT_SEED + i (so the
    samples depend on the batch size)."""
    images: list[Image.Image] = []
    for i, chunk in enumerate(batches(prompts, batch)):
        out = pipe(
            [p.text for p in chunk],
            num_inference_steps=30,
            guidance_scale=guidance,
            generator=torch.Generator().manual_seed(PROMPT_SEED + i),
            height=SIZE,
            width=SIZE,
            output_type="pil",
        )
        images.extend(out.images)
    return images


def grid(images: list[Image.Image], columns: int = 8) -> Image.Image:
    """Images tiled in rows of `columns`."""
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    canvas = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for i, im in enumerate(images):
        canvas.paste(im, ((i % columns) * w, (i // columns) * h))
    return canvas


def sample_gate(pipe, n: int, guidance: float, batch: int, grid_path: Path) -> tuple[list[Gate], dict[str, float]]:
    """Gate b: the share of samples the recogniser reads as their prompt; saves a grid of the first ones."""
    prompts = held_out_prompts(n)
    images = generate(pipe, prompts, guidance, batch)
    grid(images[:GRID_SAMPLES]).save(grid_path)
    readings = [recognise(im) for im in images]
    background = [background_is(r, [p.background]) for r, p in zip(readings, prompts)]
    right = [ok and contains(r, [p.color], p.shape) for ok, r, p in zip(background, readings, prompts)]
    details = {
        "background colour right": float(np.mean(background)),
        "object colour present (any shape)": float(np.mean([contains(r, [p.color]) for r, p in zip(readings, prompts)])),
        "exactly one object read": float(np.mean([len(r.objects) == 1 for r in readings])),
    }
    return [Gate(f"samples right (guidance {guidance:g})", float(np.mean(right)), 0.80)], details


# --------------------------------------------------------------------------- c. VAE, d. recogniser


@torch.no_grad()
def reconstruction_psnr(pipe, scenes: list[Scene]) -> list[float]:
    """Per-image PSNR (dB, peak-to-peak 2 on [-1, 1]) of decode(encode(image)) with the posterior mean."""
    x = torch.stack([image_tensor(s.image) for s in scenes]).to(pipe.device)
    rec = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((rec - x) ** 2).flatten(1).mean(dim=1).clamp(min=1e-10)
    return (10 * torch.log10(4.0 / mse)).cpu().tolist()


def vae_gate(pipe, n: int, batch: int) -> tuple[list[Gate], dict[str, float]]:
    """Gate c: mean reconstruction PSNR on n held-out scenes."""
    scenes = [sample_scene(VAE_SEEDS + i) for i in range(n)]
    psnr = [p for chunk in batches(scenes, batch) for p in reconstruction_psnr(pipe, chunk)]
    return [Gate("VAE reconstruction PSNR", float(np.mean(psnr)), 28.0, " dB")], {"worst image PSNR (dB)": float(np.min(psnr))}


def recogniser_gate(n: int) -> tuple[list[Gate], dict[str, float]]:
    """Gate d: the recogniser reads rendered one-object scenes exactly (shape, colours, background)."""
    right = []
    for i in range(n):
        scene = sample_scene(RECOGNISER_SEEDS + i, n_objects=1)
        reading = recognise(scene.image)
        obj = scene.objects[0]
        right.append(
            len(reading.objects) == 1 and contains(reading, obj.colors, obj.shape) and background_is(reading, scene.background_colors)
        )
    return [Gate("recogniser, 1-object scenes", float(np.mean(right)), 0.98)], {}


# --------------------------------------------------------------------------- report


def _number(value: float, unit: str = "") -> str:
    return f"{value:.2f}{unit}" if unit else f"{value:.3f}"


def report(command: str, model: Path, gates: list[Gate], details: dict[str, dict[str, float]], seconds: float) -> str:
    """The markdown report: command, gate table, then the other measurements per gate."""
    lines = ["# Built-in model gates", "", f"Produced by `{command}`.", "", f"Model: `{model}`; {seconds:.0f} s.", ""]
    lines += ["| gate | measured | target | result |", "|---|---|---|---|"]
    lines += [
        f"| {g.name} | {_number(g.measured, g.unit)} | >= {_number(g.target, g.unit)} | {'pass' if g.passed else 'FAIL'} |" for g in gates
    ]
    for section, values in details.items():
        if values:
            lines += ["", f"**{section}**", ""] + [f"- {name}: {value:.3f}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", type=Path, default=default_model(), help="diffusers StableDiffusionPipeline folder (default: the built-in model)"
    )
    ap.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale of the samples")
    ap.add_argument("--quick", action="store_true", help="20 scenes / prompts per gate (smoke test)")
    ap.add_argument("--batch", type=int, default=50, help="scenes or prompts per model call")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results", help="folder for model_gates.md and model_samples.png"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.model is None:
        ap.error("no built-in model yet: pass --model PATH")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/model_gates.py"] + (sys.argv[1:] if argv is None else argv))
    n_attention, n_prompts, n_vae, n_recogniser = (20, 20, 20, 20) if args.quick else (200, 100, 200, 200)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pipe = load_pipeline(args.model, args.device)
    gates: list[Gate] = []
    details: dict[str, dict[str, float]] = {}
    steps = {
        f"a. attention, mean IoU by word kind ({n_attention} two-object scenes)": lambda: attention_gate(pipe, n_attention, args.batch),
        f"b. samples ({n_prompts} prompts; grid: model_samples.png)": lambda: sample_gate(
            pipe, n_prompts, args.guidance, args.batch, args.out / "model_samples.png"
        ),
        f"c. VAE ({n_vae} scenes)": lambda: vae_gate(pipe, n_vae, args.batch),
        f"d. recogniser ({n_recogniser} rendered one-object scenes)": lambda: recogniser_gate(n_recogniser),
    }
    for section, run in steps.items():
        start = time.time()
        section_gates, details[section] = run()
        gates += section_gates
        print(
            f"[{time.time() - start:.0f} s] {section}: " + ", ".join(f"{g.name} {_number(g.measured, g.unit)}" for g in section_gates),
            file=sys.stderr,
        )
    text = report(command, args.model, gates, details, time.time() - t0)
    (args.out / "model_gates.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
