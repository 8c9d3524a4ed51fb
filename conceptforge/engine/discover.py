"""Propose the concepts of an image without being told how many or where.

ConceptExpress's idea (group the image by the UNet's self-attention), over
colour-coherent regions rather than attention cells, ending in the per-concept
masks the learner uses:

1. Features.  The image is encoded, noised at a few timesteps (a fixed seed)
   and passed through the UNet with an empty prompt; the self-attention
   probabilities of the layers at the cross-attention capture resolution
   (16x16 for SD at 512 px and for the built-in model) are averaged over
   heads, layers and timesteps: row i of the (N, N) matrix is where position
   i looks.
2. Regions.  The image is over-segmented into superpixels (Felzenszwalb's
   graph segmentation, scikit-image; scale and smallest region relative to the
   image's area), so that every proposal's edge follows an edge of the image.
3. Grouping.  Each region's attention row is the mean of the rows of the cells
   it covers; the closest pair of touching groups (Jensen-Shannon distance of
   their rows) is merged while that distance is under `merge_distance`: the
   number of groups follows from the cut, never from the user.
4. Background.  A group owning at least `background_border` of the image's
   border pixels is background (two-tone backgrounds give two such groups;
   they are merged); when none does, the one owning most of the border is.
5. Proposals.  Object groups under `min_area` of the image are dropped, the
   rest are kept largest first, at most `max_concepts`.
6. Init words.  Each candidate word of the model's vocabulary is put in a
   prompt of the model's grammar; its cross-attention (same timesteps) is
   compared with each region: the word whose min-max normalised map is highest
   inside the region relative to outside it is suggested.

Deterministic for a seed: same image, model and settings give the same bits.
Writes nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from . import masks as mask_ops
from .attention import attention_logits as layer_attention_logits, cross_attention_factors

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
    superpixel_scale: float = 0.25  # Felzenszwalb's scale as a share of the image's pixel count (larger: larger regions)
    superpixel_sigma: float = 0.4  # Gaussian smoothing (pixels at the model's resolution) before the superpixels
    merge_boundary: float = 0.33  # touching object regions merge when their shared edge is this share of the smaller's perimeter
    merge_distance: float = 0.0  # ... or when their attention rows are closer than this (Jensen-Shannon, 0..1)
    min_area: float = 0.01  # an object proposal (and a superpixel) covers at least this share of the image
    background_border: float = 0.25  # a group owning this share of the border pixels is background
    max_concepts: int = 8
    words_per_prompt: int = 1  # candidate words named in one prompt (SD: several)


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
            self.store.record(self_attention_logits(attn, hidden_states, temb))
        return out


def self_attention_logits(attn, hidden_states: torch.Tensor, temb) -> torch.Tensor:
    """The attention logits QK^T / sqrt(d) of a self-attention layer as (B, heads, N, N)."""
    return layer_attention_logits(attn, hidden_states, None, temb)


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


# -- regions and their grouping ----------------------------------------------------------------
def js_distances(rows: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Condensed pairwise Jensen-Shannon distances (base 2, in [0, 1]) between probability rows."""
    from scipy.spatial.distance import squareform

    p = np.clip(rows.astype(np.float64), 1e-12, None)
    p /= p.sum(axis=1, keepdims=True)
    plogp = (p * np.log2(p)).sum(axis=1)
    n = len(p)
    full = np.zeros((n, n))
    for start in range(0, n, chunk):
        a = p[start : start + chunk, None, :]
        m = (a + p[None, :, :]) / 2
        cross = (m * np.log2(m)).sum(axis=2)  # -H(m)
        full[start : start + chunk] = 0.5 * (plogp[start : start + chunk, None] + plogp[None, :]) - cross
    full = np.sqrt(np.clip((full + full.T) / 2, 0.0, 1.0))
    np.fill_diagonal(full, 0.0)
    return squareform(full, checks=False)


def superpixels(rgb: np.ndarray, settings: DiscoverSettings) -> np.ndarray:
    """Felzenszwalb superpixels (H, W) labelled 0..R-1, scale and smallest size relative to the image's area."""
    from skimage.segmentation import felzenszwalb

    area = rgb.shape[0] * rgb.shape[1]
    return felzenszwalb(
        rgb, scale=settings.superpixel_scale * area, sigma=settings.superpixel_sigma,
        min_size=max(1, int(round(settings.min_area * area))), channel_axis=-1,
    ).astype(np.int64)


def cell_coverage(labels: np.ndarray, side: int) -> np.ndarray:
    """(R, side*side): the share of each attention cell that each region of `labels` covers."""
    from PIL import Image

    cover = []
    for r in range(int(labels.max()) + 1):
        layer = Image.fromarray((labels == r).astype(np.float32), mode="F").resize((side, side), Image.BOX)
        cover.append(np.asarray(layer, dtype=np.float64).reshape(-1))
    return np.stack(cover)


def edge_counts(labels: np.ndarray) -> np.ndarray:
    """(R + 1, R + 1) symmetric counts of 4-neighbour pixel edges between regions 0..R-1 of
    `labels`; index R stands for outside the image (so a row sums to the region's perimeter)."""
    outside = int(labels.max()) + 1
    padded = np.pad(labels, 1, constant_values=outside)
    counts = np.zeros((outside + 1, outside + 1), dtype=np.int64)
    for a, b in ((padded[:, 1:], padded[:, :-1]), (padded[1:, :], padded[:-1, :])):
        differ = a != b
        np.add.at(counts, (a[differ], b[differ]), 1)
    return counts + counts.T


def group_regions(regions: list[int], edges: np.ndarray, settings: DiscoverSettings, rows: np.ndarray | None = None) -> dict[int, int]:
    """Group (a representative region) of each of `regions`: touching groups merge, the pair with the
    longest shared edge first, while the shared edge is at least `merge_boundary` of the smaller
    group's perimeter (a region mostly bordered by one other is a part of it, as the two halves of a
    two-tone object are) or, given the regions' attention `rows` (R, N) and a positive
    `merge_distance`, their summed rows are closer than that (Jensen-Shannon)."""
    group = {r: r for r in regions}
    shared = edges.astype(np.float64)
    np.fill_diagonal(shared, 0)
    summed = {r: rows[r].copy() for r in regions} if rows is not None and settings.merge_distance > 0 else {}
    distances: dict[tuple[int, int], float] = {}

    def close(a: int, b: int) -> bool:
        if not summed:
            return False
        if (a, b) not in distances:
            distances[a, b] = float(js_distances(np.stack([summed[a], summed[b]]))[0])
        return distances[a, b] < settings.merge_distance

    while True:
        live = np.array(sorted(set(group.values())), dtype=np.int64)
        touching = shared[np.ix_(live, live)]
        perimeter = shared[live].sum(axis=1)
        ratio = touching / np.maximum(np.minimum(perimeter[:, None], perimeter[None, :]), 1.0)
        pairs = [(float(ratio[i, j]), int(live[i]), int(live[j])) for i, j in zip(*np.nonzero(np.triu(touching, 1)))]
        chosen = [p for p in pairs if p[0] >= settings.merge_boundary or close(p[1], p[2])]
        if not chosen:
            return group
        _, a, b = max(chosen, key=lambda p: (p[0], -p[1], -p[2]))
        group = {r: (a if g == b else g) for r, g in group.items()}
        shared[a] += shared[b]
        shared[:, a] += shared[:, b]
        shared[b] = shared[:, b] = 0
        shared[a, a] = 0
        if summed:
            summed[a] = summed[a] + summed.pop(b)
            distances = {k: v for k, v in distances.items() if a not in k and b not in k}


def border_shares(masks: np.ndarray) -> np.ndarray:
    """Share of the image's border pixels each mask (K, H, W) owns."""
    border = np.zeros(masks.shape[1:], dtype=bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return masks[:, border].sum(axis=1) / border.sum()


def split_background(masks: np.ndarray, share: float) -> tuple[list[int], list[int]]:
    """(background indices, object indices): masks owning at least `share` of the border, else the one owning most."""
    shares = border_shares(masks)
    back = [k for k in range(len(masks)) if shares[k] >= share and masks[k].any()]
    if not back and len(masks):
        back = [int(np.argmax(shares))]
    return back, [k for k in range(len(masks)) if k not in back]


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


@torch.no_grad()
def attention_logits(model, latents: torch.Tensor, draws, factor: int) -> np.ndarray:
    """Mean self-attention logits (N, N) at one factor over heads, layers and the draws, with the empty prompt."""
    cond = encode_prompt(model, "")
    t = torch.cat([d[0] for d in draws]).to(model.device)
    noise = torch.cat([d[1] for d in draws]).to(model.device)
    zt = model.scheduler.add_noise(latents.expand(len(draws), -1, -1, -1), noise, t)
    with capture_self_attention(model.unet, factor) as store, model.autocast():
        model.unet(zt, t, **cond.expand(len(draws)).unet_kwargs())
    return store.mean().cpu().numpy().astype(np.float64)


@torch.no_grad()
def word_attention(model, latents: torch.Tensor, draws, prompts: list[tuple[str, list[str]]]) -> dict[str, np.ndarray]:
    """Each named word's mean cross-attention map (att, att), min-max normalised, over the draws (averaged over prompts)."""
    t = torch.cat([d[0] for d in draws]).to(model.device)
    noise = torch.cat([d[1] for d in draws]).to(model.device)
    zt = model.scheduler.add_noise(latents.expand(len(draws), -1, -1, -1), noise, t)
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


def segment(rgb: np.ndarray, logits: np.ndarray | None, settings: DiscoverSettings) -> Segmentation:
    """Superpixels of the image, the background by the border, the rest grouped into objects
    (no model needed; the self-attention `logits` only when `merge_distance` is positive)."""
    regions = superpixels(rgb, settings)
    count = int(regions.max()) + 1
    region_masks = regions[None] == np.arange(count)[:, None, None]
    back, objects = split_background(region_masks, settings.background_border)
    rows = None
    if logits is not None:
        side = int(round(np.sqrt(len(logits))))
        rows = cell_coverage(regions, side) @ affinity_from_logits(logits, settings.sharpness)
    group = group_regions(objects, edge_counts(regions), settings, rows)
    group.update({r: back[0] for r in back})
    _, numbered = np.unique([group[r] for r in range(count)], return_inverse=True)
    labels = numbered.reshape(-1)[regions]
    masks = labels[None] == np.arange(int(labels.max()) + 1)[:, None, None]
    background = sorted({int(numbered[r]) for r in back})
    candidates = [k for k in range(len(masks)) if k not in background]
    small = [k for k in candidates if masks[k].mean() < settings.min_area]
    objects = sorted((k for k in candidates if k not in small), key=lambda k: (-int(masks[k].sum()), k))
    cap = settings.max_concepts
    return Segmentation(masks, background, objects[:cap], small, objects[cap:], labels)


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
    maps = word_attention(model, latents, draws, word_prompts(words, settings.words_per_prompt, model.is_builtin))
    full_maps = dict(zip(maps, mask_ops.upsample_maps(np.stack(list(maps.values())), rgb.shape[0], rgb.shape[1])))
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
def settings_for(cfg, is_builtin: bool, **overrides) -> DiscoverSettings:
    """Discovery settings following a project's resolved learn settings (its seed) and model family."""
    base = dict(seed=cfg.seed, words_per_prompt=1 if is_builtin else 8)
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
    """The image beside the same image with every proposal tinted and numbered (background grey)."""
    from PIL import Image, ImageDraw

    from .pictures import PALETTE, fit, overlay

    shown = fit(image.convert("RGB"), side)
    masks = [p.mask for p in discovery.objects]
    tinted = overlay(shown, masks, alpha=0.55)
    if discovery.background is not None:
        back = np.asarray(Image.fromarray(discovery.background.mask.astype(np.uint8) * 255).resize(shown.size, Image.NEAREST)) > 127
        arr = np.asarray(tinted).copy()
        arr[back] = (0.5 * arr[back] + 0.5 * 128).astype(np.uint8)
        tinted = Image.fromarray(arr)
    draw = ImageDraw.Draw(tinted)
    for k, p in enumerate(discovery.objects):
        mask = np.asarray(Image.fromarray(p.mask.astype(np.uint8) * 255).resize(shown.size, Image.NEAREST)) > 127
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
    from .masks import _save_atomic, save_mask_png

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
    _save_atomic(proposal_picture(image, discovery), picture)
    written.append(picture)
    index = folder / "proposals.json"
    summary = {"proposals": records, "clusters": discovery.clusters, "dropped_small": discovery.dropped_small,
               "dropped_over_max": discovery.dropped_cap}
    write_text_atomic(index, json.dumps(summary, indent=2) + "\n")
    written.append(index)
    return written
