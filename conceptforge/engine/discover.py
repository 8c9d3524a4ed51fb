"""Propose the concepts of an image without being told how many or where.

1. Regions.  `regions.image_regions` cuts the image at the model's resolution
   into superpixels, takes those owning the image's border as the background
   and groups the rest into objects by the edges they share (and, with a
   positive `merge_distance`, by the UNet's self-attention, ConceptExpress's
   signal: the image is encoded, noised at a few timesteps with a fixed seed
   and passed through the UNet with an empty prompt; the self-attention
   probabilities at the cross-attention capture resolution, averaged over
   heads, layers and timesteps, give each superpixel the mean row of the cells
   it covers).  The number of objects follows from the rules, never from the
   user.
2. Proposals.  Objects under `min_area` of the image are dropped, the rest are
   kept largest first, at most `max_concepts`.
3. Init words.  Each candidate word of the model's vocabulary is put in a
   prompt of the model's grammar; per region, the word whose map is highest
   inside it relative to outside is suggested, the map being how much naming
   the word lowers the denoising error (`init_word_signal: error`, the built-in
   default) or its min-max normalised cross-attention (`attention`, SD), both
   read under the same timesteps and noise.

Deterministic for a seed: same image, model and settings give the same bits.
Writes nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from . import masks as mask_ops
from .attention import attention_logits as layer_attention_logits, cross_attention_factors
from .regions import RegionRules, cell_coverage, image_regions

# nouns tried as init words for SD-family models (those the tokenizer has as one token are kept)
SD_CANDIDATE_WORDS: tuple[str, ...] = (
    "person", "man", "woman", "child", "boy", "girl", "baby", "face", "dog", "cat", "bird", "horse", "cow", "sheep",
    "fish", "bear", "toy", "teddy", "doll", "ball", "car", "bike", "bus", "boat", "plane", "train", "chair", "table",
    "sofa", "bed", "lamp", "cup", "mug", "bottle", "bowl", "vase", "plant", "flower", "tree", "book", "bag", "hat",
    "shoe", "shirt", "dress", "phone", "computer", "clock", "house", "building", "door", "window", "sign", "food",
    "cake", "fruit", "apple", "banana", "sculpture", "statue", "robot", "box", "candle", "guitar", "backpack",
)
BACKGROUND_WORD = "background"


@dataclass
class DiscoverSettings:
    """How concepts are proposed; defaults chosen on development scenes (benchmarks/discover.py)."""

    seed: int = 0
    timesteps: int = 8  # noise levels the features are averaged over
    t_min: int = 50
    t_max: int = 400
    sharpness: float = 1.0  # self-attention temperature: logits scaled to this standard deviation before the softmax
    # how the image is cut into background and objects (regions.RegionRules)
    superpixel_scale: float = RegionRules.superpixel_scale
    superpixel_sigma: float = RegionRules.superpixel_sigma
    merge_boundary: float = RegionRules.merge_boundary
    merge_distance: float = RegionRules.merge_distance
    merge_span: float = RegionRules.merge_span
    merge_centre: float = RegionRules.merge_centre
    merge_bend: float = RegionRules.merge_bend
    superpixel_min_area: float = RegionRules.superpixel_min_area
    min_area: float = 0.01  # the smallest object proposal, as a share of the image
    background_border: float = RegionRules.background_border
    max_concepts: int = 8
    words_per_prompt: int = 1  # candidate words named in one prompt (SD: several)
    # init words by how much naming a word lowers the denoising error in the region (`error`), or by
    # its cross-attention there (`attention`); built-in, 69 objects of the development scenes: the
    # object's shape 45% of the time by error, 7% by attention (chance 17%)
    init_word_signal: Literal["error", "attention"] = "error"

    def rules(self) -> RegionRules:
        """The region rules among these settings."""
        return RegionRules(**{f.name: getattr(self, f.name) for f in fields(RegionRules)})


@dataclass
class Proposal:
    """One proposed concept: its mask at the image's resolution and a suggested init word."""

    mask: np.ndarray  # H x W bool
    area: float  # share of the image
    init: str | None
    init_score: float
    background: bool = False


@dataclass
class Discovery:
    """What `discover_concepts` found in one image."""

    objects: list[Proposal]
    background: Proposal | None
    clusters: int  # groups before background/size rules
    dropped_small: int = 0
    dropped_cap: int = 0
    labels: np.ndarray | None = None  # S x S group label of every pixel
    rgb: np.ndarray | None = None  # the image at the model's resolution
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def proposals(self) -> list[Proposal]:
        """Objects, then the background (when there is one)."""
        return self.objects + ([self.background] if self.background is not None else [])


# -- self-attention capture ------------------------------------------------------------
class SelfAttentionStore:
    """Sum of the heads-averaged self-attention probabilities of the captured layers."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None  # (N, N)
        self.count = 0

    def record(self, probs: torch.Tensor) -> None:
        """probs: (B, heads, N, N); every row of the batch counts once."""
        summed = probs.float().mean(dim=1).sum(dim=0)
        self.total = summed if self.total is None else self.total + summed
        self.count += probs.shape[0]

    def mean(self) -> torch.Tensor:
        if self.total is None:
            raise RuntimeError("no self-attention was captured")
        return self.total / self.count


class SelfAttnCapture:
    """Stock SDPA attention plus a record of the self-attention probabilities."""

    def __init__(self, store: SelfAttentionStore) -> None:
        self.store = store
        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if encoder_hidden_states is None:
            self.store.record(layer_attention_logits(attn, hidden_states, None, temb))  # None: self-attention
        return out


def self_attention_layers(unet, factor: int) -> list[str]:
    """Processor names of the self-attention layers beside the cross-attention layers of one factor."""
    names = set(unet.attn_processors)
    paired = [n.replace("attn2.processor", "attn1.processor") for n, f in cross_attention_factors(unet).items() if f == factor]
    return [n for n in paired if n in names]


@contextmanager
def capture_self_attention(unet, factor: int) -> Iterator[SelfAttentionStore]:
    """Self-attention capture at one factor for the duration of a block."""
    original = dict(unet.attn_processors)
    chosen = set(self_attention_layers(unet, factor))
    if not chosen:
        raise ValueError("the UNet has no self-attention layers at the capture resolution")
    store = SelfAttentionStore()
    processor = SelfAttnCapture(store)
    unet.set_attn_processor({n: (processor if n in chosen else p) for n, p in original.items()})
    try:
        yield store
    finally:
        unet.set_attn_processor(original)


# -- the model passes ---------------------------------------------------------------------
def candidate_words(tokenizer, is_builtin: bool) -> list[str]:
    """Init-word candidates the tokenizer has as one token: the built-in world's object nouns, or common nouns (SD)."""
    if is_builtin:
        from ..shapes.world import GENERIC_NOUNS, SHAPES

        words = list(SHAPES) + list(GENERIC_NOUNS)
    else:
        words = list(SD_CANDIDATE_WORDS)
    return [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) == 1]


def word_prompts(words: list[str], per_prompt: int, is_builtin: bool) -> list[tuple[str, list[str]]]:
    """Prompts naming the candidate words (and "background"), in the model's grammar."""
    from .prompts import training_prompt

    out = []
    for start in range(0, len(words), per_prompt):
        group = words[start : start + per_prompt]
        named = group + [BACKGROUND_WORD]
        out.append((training_prompt(named, [False] * len(group) + [True], is_builtin), named))
    return out


def word_positions(tokenizer, prompt: str, words: list[str]) -> list[int]:
    """Position of each word's (first) token in the padded prompt."""
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    out, start = [], 0
    for w in words:
        wid = tokenizer(w, add_special_tokens=False).input_ids[0]
        pos = ids.index(wid, start)
        out.append(pos)
        start = pos + 1
    return out


def encode_prompt(model, prompt: str):
    """The UNet conditioning of one plain prompt (batch 1), for either family."""
    from .data import Conditioning, Prompts

    prompts = Prompts(model)
    if model.text_encoder_2 is not None:
        return prompts._encode_xl(prompts.ids(prompt), prompts.ids(prompt, model.tokenizer_2))
    return Conditioning(model.text_encoder(prompts.ids(prompt).to(model.device))[0])


def _draws(settings: DiscoverSettings, latent_shape: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (timestep, noise) pairs every pass uses: evenly spaced timesteps, seeded noise."""
    gen = torch.Generator().manual_seed(settings.seed)
    ts = np.linspace(settings.t_min, settings.t_max, settings.timesteps).round().astype(np.int64)
    return [(torch.tensor([int(t)]), torch.randn(latent_shape, generator=gen)) for t in ts]


def noised(model, latents: torch.Tensor, draws) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(timesteps, noise, noised latents) of the draws, one batch row per draw."""
    t = torch.cat([d[0] for d in draws]).to(model.device)
    noise = torch.cat([d[1] for d in draws]).to(model.device)
    return t, noise, model.scheduler.add_noise(latents.expand(len(draws), -1, -1, -1), noise, t)


@torch.no_grad()
def attention_logits(model, latents: torch.Tensor, draws, factor: int) -> np.ndarray:
    """Mean self-attention logits (N, N) at one factor over heads, layers and the draws, with the empty prompt."""
    cond = encode_prompt(model, "")
    t, _, zt = noised(model, latents, draws)
    with capture_self_attention(model.unet, factor) as store, model.autocast():
        model.unet(zt, t, **cond.expand(len(draws)).unet_kwargs())
    return store.mean().cpu().numpy().astype(np.float64)


@torch.no_grad()
def word_attention(model, latents: torch.Tensor, draws, prompts: list[tuple[str, list[str]]]) -> dict[str, np.ndarray]:
    """Each named word's mean cross-attention map (att, att), min-max normalised, over the draws (averaged over prompts)."""
    t, _, zt = noised(model, latents, draws)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for prompt, words in prompts:
        cond = encode_prompt(model, prompt)
        positions = torch.tensor([word_positions(model.tokenizer, prompt, words)])
        model.store.reset()
        model.store.token_index = positions.expand(len(draws), -1)
        try:
            with model.autocast():
                model.unet(zt, t, **cond.expand(len(draws)).unet_kwargs())
            maps = model.store.mean_maps(model.att, model.att).float().mean(dim=0).cpu().numpy()
        finally:
            model.store.token_index = None
        for w, m in zip(words, maps):
            sums[w] = sums.get(w, 0) + m
            counts[w] = counts.get(w, 0) + 1
    out = {}
    for w, total in sums.items():
        m = total / counts[w]
        out[w] = (m - m.min()) / max(float(m.max() - m.min()), 1e-12)
    return out


@torch.no_grad()
def word_error_gain(model, latents: torch.Tensor, draws, words: list[str]) -> dict[str, np.ndarray]:
    """How much naming each word lowers the denoising error per latent pixel (latent, latent), over
    the draws: a candidate in the prompt naming it and the background against the prompt naming only
    the background; "background" against the empty prompt."""
    from .prompts import training_prompt

    t, noise, zt = noised(model, latents, draws)
    target = model.target(latents.expand(len(draws), -1, -1, -1), noise, t).float()

    def error(prompt: str) -> torch.Tensor:
        with model.autocast():
            pred = model.unet(zt, t, **encode_prompt(model, prompt).expand(len(draws)).unet_kwargs()).sample
        return ((pred.float() - target) ** 2).sum(dim=1).mean(dim=0)

    background_only = error(training_prompt([BACKGROUND_WORD], [True], model.is_builtin))
    gains = {BACKGROUND_WORD: error("") - background_only}
    for prompt, named in word_prompts(words, 1, model.is_builtin):
        gains[named[0]] = background_only - error(prompt)
    return {w: g.cpu().numpy() for w, g in gains.items()}


def suggest_word(region: np.ndarray, maps: dict[str, np.ndarray], words: list[str]) -> tuple[str | None, float]:
    """The word whose map is highest inside a region (bool, the maps' size) relative to outside it."""
    best, score = None, -np.inf
    if not region.any() or region.all():
        return None, 0.0
    for w in words:
        m = maps.get(w)
        if m is None:
            continue
        s = float(m[region].mean() - m[~region].mean())
        if s > score:
            best, score = w, s
    return best, (score if best is not None else 0.0)


def affinity_from_logits(logits: np.ndarray, sharpness: float) -> np.ndarray:
    """Row-stochastic attention (N, N) from mean logits, at a temperature that gives the
    logits a standard deviation of `sharpness` (a model's raw logits can be nearly flat)."""
    centred = logits - logits.mean(axis=1, keepdims=True)
    scale = sharpness / max(float(centred.std()), 1e-12)
    z = centred * scale
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Segmentation:
    """The model-free half of a discovery: grouped regions sorted into background and objects."""

    masks: np.ndarray  # (G, S, S) bool, one per group, tiling the image
    background: list[int]
    objects: list[int]  # kept, largest first
    small: list[int]
    capped: list[int]
    labels: np.ndarray  # (S, S) group of every pixel


def attention_rows(logits: np.ndarray, sharpness: float) -> Callable[[np.ndarray], np.ndarray]:
    """A function from pixel labels to each label's attention row: the rows of the cells it
    covers, weighted by how much of each it covers."""
    side = int(round(np.sqrt(len(logits))))
    affinity = affinity_from_logits(logits, sharpness)
    return lambda pixels: cell_coverage(pixels, side) @ affinity


def segment(rgb: np.ndarray, logits: np.ndarray | None, settings: DiscoverSettings) -> Segmentation:
    """The image cut into background and object groups (`regions.image_regions`), objects under
    `min_area` dropped, the rest largest first (no model needed; the self-attention `logits`
    only when `merge_distance` is positive)."""
    attention = attention_rows(logits, settings.sharpness) if logits is not None else None
    cut = image_regions(rgb, settings.rules(), attention)
    masks = cut.masks()
    small = [k for k in cut.objects if masks[k].mean() < settings.min_area]
    objects = sorted((k for k in cut.objects if k not in small), key=lambda k: (-int(masks[k].sum()), k))
    cap = settings.max_concepts
    return Segmentation(masks, cut.background, objects[:cap], small, objects[cap:], cut.labels)


# -- the whole proposal ----------------------------------------------------------------------------
def image_features(model, rgb: np.ndarray, settings: DiscoverSettings) -> tuple[torch.Tensor, list, np.ndarray | None]:
    """The image's latents, the seeded (timestep, noise) draws and, when grouping uses them
    (`merge_distance` > 0), the mean self-attention logits."""
    from .attention import capture_factor
    from .data import encode_image

    latents = encode_image(model, rgb)
    draws = _draws(settings, tuple(latents.shape))
    if settings.merge_distance <= 0:
        return latents, draws, None
    factor = capture_factor(model.unet, model.latent, model.att)
    return latents, draws, attention_logits(model, latents, draws, factor)


def discover_concepts(model, rgb: np.ndarray, settings: DiscoverSettings, original_size: tuple[int, int] | None = None) -> Discovery:
    """Propose the concepts of one image (S x S x 3 uint8 at the model's resolution).

    `model` is a ModelBundle (bundle_from_pipeline, no concept tokens needed).
    Masks come back at `original_size` (width, height) when given, else S x S."""
    import time

    started = time.perf_counter()
    latents, draws, logits = image_features(model, rgb, settings)
    features_s = time.perf_counter() - started
    seg = segment(rgb, logits, settings)
    cluster_s = time.perf_counter() - started - features_s
    words = candidate_words(model.tokenizer, model.is_builtin)
    if settings.init_word_signal == "error":
        maps = word_error_gain(model, latents, draws, words)
    else:
        maps = word_attention(model, latents, draws, word_prompts(words, settings.words_per_prompt, model.is_builtin))
    full_maps = dict(zip(maps, mask_ops.upsample_maps(np.stack(list(maps.values())), rgb.shape[0], rgb.shape[1]))) if maps else {}
    size = (rgb.shape[1], rgb.shape[0]) if original_size is None else original_size

    def proposal(mask: np.ndarray, background: bool) -> Proposal:
        word, score = suggest_word(mask, full_maps, [BACKGROUND_WORD] if background else words)
        full = mask_ops.resize_mask(mask, size[1], size[0]) if mask.shape != (size[1], size[0]) else mask
        return Proposal(mask=full, area=float(full.mean()), init=word, init_score=score, background=background)

    background = proposal(seg.masks[seg.background].any(axis=0), True) if seg.background else None
    found = [proposal(seg.masks[k], False) for k in seg.objects]
    timings = {"features_s": features_s, "cluster_s": cluster_s, "total_s": time.perf_counter() - started}
    clusters = len(seg.masks)
    return Discovery(found, background, clusters, len(seg.small), len(seg.capped), seg.labels, rgb, timings)


# -- a project's model, settings and outputs ---------------------------------------------------------
# SD-family models: photos need superpixels far finer than the built-in world's flat shapes,
# grouped by the model's self-attention first (ConceptExpress's signal; 0.5 is the cut the
# self-attention clustering of cells used); init words by cross-attention, 8 candidates per
# prompt (an error pass per candidate noun would cost 70 UNet batches at 512 px).  Not
# measured: there are no SD weights offline.
SD_SETTINGS = dict(
    superpixel_scale=0.0005, superpixel_sigma=0.8, superpixel_min_area=0.0025, merge_distance=0.5,
    merge_boundary=0.33, merge_span=0.0,
    words_per_prompt=8, init_word_signal="attention",
)


def settings_for(cfg, is_builtin: bool, **overrides) -> DiscoverSettings:
    """Discovery settings following a project's resolved learn settings (its seed) and model family."""
    base = dict(seed=cfg.seed, words_per_prompt=1) if is_builtin else dict(seed=cfg.seed, **SD_SETTINGS)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return DiscoverSettings(**base)


def load_project_model(project, device: str = "auto", pipeline=None):
    """(ModelBundle without concept tokens, resolved LearnConfig) of a project's model, loaded as `learn` loads it."""
    from .backbone import load_pipeline, pick_device, resolve_source
    from .bundle import bundle_from_pipeline
    from .config import resolve_config

    source = resolve_source(project.model, project.model_config, base=project.root)
    cfg = resolve_config(source.is_builtin, project.settings, {})
    torch_device = pick_device(device)
    pipe = pipeline if pipeline is not None else load_pipeline(source)
    return bundle_from_pipeline(pipe, source.is_builtin, [], {}, cfg, torch_device), cfg


def model_rgb(image, size: int) -> np.ndarray:
    """A PIL image at the model's resolution as S x S x 3 uint8 (as the learner prepares it)."""
    from PIL import Image

    return np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC))


def proposal_picture(image, discovery: Discovery, side: int = 384):
    """The image beside the same image with every proposal tinted, outlined in its own colour and
    numbered (background grey)."""
    from PIL import Image, ImageDraw

    from .pictures import PALETTE, contour, fit, overlay

    shown = fit(image.convert("RGB"), side)

    def at_shown_size(mask: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(shown.size, Image.NEAREST)) > 127

    masks = [at_shown_size(p.mask) for p in discovery.objects]
    arr = np.asarray(overlay(shown, masks, alpha=0.55)).copy()
    if discovery.background is not None:
        back = at_shown_size(discovery.background.mask)
        arr[back] = (0.5 * arr[back] + 0.5 * 128).astype(np.uint8)
    for k, mask in enumerate(masks):
        arr[contour(mask)] = PALETTE[k % len(PALETTE)]
    tinted = Image.fromarray(arr)
    draw = ImageDraw.Draw(tinted)
    for k, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs):
            x, y = int(np.median(xs)), int(np.median(ys))
            draw.rectangle([x - 7, y - 8, x + 9, y + 8], fill=(255, 255, 255), outline=PALETTE[k % len(PALETTE)])
            draw.text((x - 3, y - 6), str(k + 1), fill=(0, 0, 0))
    sheet = Image.new("RGB", (shown.width * 2 + 8, shown.height), (255, 255, 255))
    sheet.paste(shown, (0, 0))
    sheet.paste(tinted, (shown.width + 8, 0))
    return sheet


def write_discovery(folder, image, discovery: Discovery, tokens: list[str], background_token: str | None) -> list:
    """Write proposals.png, one mask PNG per proposal (<token name>.png) and proposals.json; return the paths."""
    import json
    from pathlib import Path

    from ..fsutil import write_text_atomic
    from .masks import save_mask_png, save_png_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    records = []
    pairs = list(zip(tokens, discovery.objects))
    if discovery.background is not None and background_token:
        pairs.append((background_token, discovery.background))
    for token, p in pairs:
        path = folder / f"{token.strip('<>')}.png"
        save_mask_png(p.mask, path)
        written.append(path)
        records.append({"token": token, "mask": path.name, "area": round(p.area, 5), "init": p.init,
                        "init_score": round(p.init_score, 5), "background": p.background})
    picture = folder / "proposals.png"
    save_png_atomic(proposal_picture(image, discovery), picture)
    written.append(picture)
    index = folder / "proposals.json"
    summary = {"proposals": records, "clusters": discovery.clusters, "dropped_small": discovery.dropped_small,
               "dropped_over_max": discovery.dropped_cap}
    write_text_atomic(index, json.dumps(summary, indent=2) + "\n")
    written.append(index)
    return written
