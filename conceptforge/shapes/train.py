"""Train the built-in model: `python -m conceptforge.shapes.train --out DIR`.

Runs a staged recipe (default: conceptforge/shapes/tiny_shapes/recipe.json,
the one builtin:tiny-shapes came from; see stages.py) end to end: the VAE on
rendered scenes (decoding a posterior sample at first, then its mean); a cache
of the training scenes' latent means; the UNet and the text encoder on the
cached latents, stage by stage, with caption dropout (for classifier-free
guidance), colour-word dropout and a cross-attention grounding term (the
max-normalised attention map of each caption word that names a region is
pulled towards that region's mask: the world knows every mask exactly); the
decoder fine-tune with the encoder frozen; then the diffusers folder --out.
Seeded and resumable at any step: checkpoints (safetensors files, never
pickles) go to --work, and the same command continues an interrupted run to
the same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.attention import AttentionStore, capture_cross_attention, normalize_max
from ..engine.checkpoint import read_state, write_state
from ..errors import CheckpointError, ConceptforgeError
from . import MODEL_DIR
from .data import attention_targets, drop_color_words, image_tensor, render, scene_seeds
from .model import build_tokenizer, scheduler_kwargs, text_encoder_config, unet_kwargs, vae_kwargs
from .stages import RECIPE_FILE, Recipe, Stage, Trainer, load_recipe, scaled, with_flags
from .world import vocabulary

LATENT_SIZE = 16
DECODER_SCENE_BASE = 2_000_000  # the decoder fine-tune's scenes, apart from the VAE's and the UNet's
DECODER_SEED_OFFSET = 7
LOG_EVERY = 100


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


class Stopped(Exception):
    """This invocation trained the steps --max-steps allows; the checkpoints hold where it stopped."""


class Budget:
    """Training steps left to this invocation (VAE, UNet and decoder together); None: no limit."""

    def __init__(self, steps: int | None):
        self.left = steps

    def exhausted(self) -> bool:
        return self.left is not None and self.left <= 0

    def spend(self) -> None:
        if self.left is not None:
            self.left -= 1


class Streams:
    """A trainer's random streams: a torch generator (batches, noise, timesteps),
    a numpy generator (colour-word dropout) and torch's global generator.

    A stage starts them from seed + its first step, and torch's global generator
    from its state after the models were built, as a run started or resumed by
    hand at that step had them; a checkpoint saves them, so a run resumed inside
    a stage continues them exactly."""

    def __init__(self, seed: int):
        self.seed = seed
        self.global_state = torch.get_rng_state()
        self.gen = torch.Generator()
        self.rng = np.random.default_rng(seed)

    def start(self, step: int) -> None:
        self.gen = torch.Generator().manual_seed(self.seed + step)
        self.rng = np.random.default_rng(self.seed + step)
        torch.set_rng_state(self.global_state)

    def state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "rng": self.rng.bit_generator.state, "global": torch.get_rng_state()}

    def restore(self, state: dict[str, Any]) -> None:
        self.gen = torch.Generator()
        self.gen.set_state(state["gen"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["global"])


def load_tokenizer(work: Path):
    """The tokenizer of the run in `work`, made once and kept in work/tokenizer, so a
    resumed run keeps the token ids its text encoder was trained with.

    A new run takes the built-in model's tokenizer when it makes every word of the
    world one token (training a BPE afresh gives ties, and so some ids, in no fixed
    order, which a seeded run must not depend on); otherwise it trains one."""
    from transformers import CLIPTokenizer

    folder = work / "tokenizer"
    if (folder / "tokenizer_config.json").is_file():
        return CLIPTokenizer.from_pretrained(str(folder))
    builtin = MODEL_DIR / "tokenizer"
    if (builtin / "tokenizer_config.json").is_file():
        tokenizer = CLIPTokenizer.from_pretrained(str(builtin))
        if all(_one_token(tokenizer, w) for w in vocabulary()):
            tokenizer.save_pretrained(str(folder))
            return tokenizer
    _log("the built-in tokenizer does not cover the world's words: training one")
    return build_tokenizer(folder)


def _one_token(tokenizer, word: str) -> bool:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    return len(ids) == 1 and ids[0] != tokenizer.unk_token_id


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The state in the checkpoint `path`, or None when there is none.  A checkpoint
    of an older version (a pickle beside it, `.pt`) is never opened."""
    if not path.is_file():
        legacy = path.with_suffix(".pt")
        if legacy.exists():
            raise CheckpointError(
                f"{legacy} is a checkpoint of an older version of the recipe (a pickle, which is never opened); "
                f"delete it to train that part afresh, or use a new --work."
            )
        return None
    return read_state(path, way_on="delete it to train that part afresh, or use a new --work")


def _run_stages(
    name: str,
    settings: Trainer,
    ckpt: Path,
    streams: Streams,
    budget: Budget,
    modules_state: Callable[[], dict[str, Any]],
    load_modules: Callable[[dict[str, Any]], None],
    prepare: Callable[[], None],
    step_fn: Callable[[int, Stage], str],
    train: bool = True,
) -> int:
    """Resume `name` from its checkpoint and, with `train`, run its stages to the end.

    step_fn(step, stage) trains one step and returns its log line.  A checkpoint is
    written every settings.checkpoint_every steps, at the end of every stage and
    where --max-steps stops the run (raising Stopped).  Returns the step reached."""
    saved = _read_checkpoint(ckpt)
    step = 0
    if saved is not None:
        load_modules(saved)
        step = saved["step"]
    total = settings.steps
    if not train or step >= total:
        if saved is not None and step > total:
            _log(f"{name}: the checkpoint is at step {step}, past the recipe's {total}; it is used as it is")
        return step
    prepare()
    unsaved = False

    def save(stage: Stage) -> None:
        write_state(ckpt, {**modules_state(), "step": step, "stage": stage.key(), "rng": streams.state()})

    for i, stage in enumerate(settings.stages):
        if stage.end <= step:
            continue
        if step == stage.start:
            streams.start(stage.start)
        elif saved is not None and saved.get("stage") == stage.key():
            streams.restore(saved["rng"])
        else:  # the checkpoint was written under other settings: continue as a run resumed by hand at this step
            _log(f"{name}: the checkpoint at step {step} was written under another stage; its random streams restart here")
            streams.start(step)
        what = f", colour dropout {stage.color_dropout:g}" if name == "unet" else ""
        _log(
            f"{name} stage {i + 1}/{len(settings.stages)}: steps {stage.start}-{stage.end}, "
            f"cosine over {stage.cosine_over:g}{what}" + (f", from step {step}" if step > stage.start else "")
        )
        t0, first = time.time(), step
        while step < stage.end:
            if budget.exhausted():
                if unsaved:
                    save(stage)
                raise Stopped(f"{name} step {step}")
            line = step_fn(step, stage)
            step += 1
            unsaved = True
            budget.spend()
            if step % LOG_EVERY == 0:
                _log(f"{name} step {step}/{total} {line} ({(time.time() - t0) / (step - first):.2f}s/step)")
            if step % settings.checkpoint_every == 0 or step == stage.end:
                save(stage)
                unsaved = False
    return step


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def _reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)


def _psnr(rec: torch.Tensor, x: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / F.mse_loss(rec, x).item())


def train_vae(work: Path, settings: Trainer, seed: int, budget: Budget, train: bool = True):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_kwargs())
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.lr, weight_decay=0.0)
    streams = Streams(seed)
    data: dict[str, torch.Tensor] = {}

    def load(state: dict[str, Any]) -> None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])

    def prepare() -> None:
        data["images"] = torch.stack([image_tensor(s.image) for s in render(scene_seeds(settings.scenes))])
        vae.train()

    def step_fn(step: int, stage: Stage) -> str:
        _set_lr(opt, settings.lr_in(stage, step))
        images = data["images"]
        x = images[torch.randint(0, len(images), (settings.batch,), generator=streams.gen)]
        post = vae.encode(x).latent_dist
        if step < settings.sample_steps:  # a VAE: decode a posterior sample, light KL
            rec = vae.decode(post.sample(generator=streams.gen)).sample
            reg = post.kl().mean() / x[0].numel()
        else:  # then sharpen: decode the mean (the UNet trains on the means)
            rec = vae.decode(post.mean).sample
            reg = post.mean.pow(2).mean()
        loss = _reconstruction_loss(rec, x) + 1e-4 * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return f"loss {loss.item():.4f} psnr {_psnr(rec, x):.1f}"

    step = _run_stages(
        "vae", settings, work / "vae.safetensors", streams, budget,
        lambda: {"model": vae.state_dict(), "opt": opt.state_dict()}, load, prepare, step_fn, train,
    )
    if step == 0:
        raise CheckpointError(f"There is no VAE checkpoint in {work} to export from; train first (without --export-only).")
    return vae


def finetune_decoder(vae, work: Path, settings: Trainer, seed: int, budget: Budget, train: bool = True):
    """Sharpen the decoder with the encoder frozen: the latent space (and so the
    UNet's training data) stays exactly as it is, reconstructions improve."""
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    torch.manual_seed(seed + DECODER_SEED_OFFSET)  # the same global stream whichever stages ran before
    streams = Streams(seed + DECODER_SEED_OFFSET)
    data: dict[str, torch.Tensor] = {}

    def load(state: dict[str, Any]) -> None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])

    def prepare() -> None:
        scenes = render(scene_seeds(settings.scenes, base=DECODER_SCENE_BASE))
        data["images"] = torch.stack([image_tensor(s.image) for s in scenes])
        vae.train()  # as a run of --stage decoder had it, whether or not the latents were cached before

    def step_fn(step: int, stage: Stage) -> str:
        _set_lr(opt, settings.lr_in(stage, step))
        images = data["images"]
        x = images[torch.randint(0, len(images), (settings.batch,), generator=streams.gen)]
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        loss = _reconstruction_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return f"loss {loss.item():.4f} psnr {_psnr(rec, x):.1f}"

    _run_stages(
        "decoder", settings, work / "decoder.safetensors", streams, budget,
        lambda: {"model": vae.state_dict(), "opt": opt.state_dict()}, load, prepare, step_fn, train,
    )
    return vae


@torch.no_grad()
def cache_latents(vae, work: Path, n_scenes: int, latent_size: int = LATENT_SIZE) -> dict[str, Any]:
    """The training scenes' latent means, captions and attention targets, cached in work/latents.safetensors."""
    path = work / "latents.safetensors"
    data = _read_checkpoint(path)
    if data is not None:
        if data.get("scenes") == n_scenes and data["mean"].shape[-1] == latent_size:
            data["mean"] = _encoder_layout(data["mean"])
            return data
        _log(f"the latent cache holds {data.get('scenes')} scenes, the recipe asks for {n_scenes}: caching afresh")
    vae.eval()
    scenes = render(scene_seeds(n_scenes))
    means = []
    for i in range(0, len(scenes), 256):
        x = torch.stack([image_tensor(s.image) for s in scenes[i : i + 256]])
        means.append(vae.encode(x).latent_dist.mean)
    mean = _encoder_layout(torch.cat(means))
    targets = [attention_targets(s, latent_size) for s in scenes]
    data = {
        "scenes": n_scenes,
        "mean": mean,
        "captions": [s.caption for s in scenes],
        "index": torch.from_numpy(np.stack([t[0] for t in targets])),
        "target": torch.from_numpy(np.stack([t[1] for t in targets])),
        "valid": torch.from_numpy(np.stack([t[2] for t in targets])),
        "scaling_factor": float(1.0 / mean.std()),
    }
    write_state(path, data)
    return data


def _encoder_layout(mean: torch.Tensor) -> torch.Tensor:
    """The latents in the memory layout the encoder gives them (channels last).

    The layout changes the order of the UNet's sums and so the last bits of its
    weights; a cache read back from disk (stored densely) and one just made must
    train the same, as the recipe's runs did, whose cache kept this layout."""
    return mean.contiguous(memory_format=torch.channels_last)


def train_unet(work: Path, tokenizer, data: dict, settings: Trainer, seed: int, budget: Budget, train: bool = True):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_kwargs())
    text_encoder = CLIPTextModel(text_encoder_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=1e-2)
    ema = [p.detach().clone() for p in params]
    streams = Streams(seed)
    ckpt = work / "unet.safetensors"

    def load(state: dict[str, Any]) -> None:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        if len(state["ema"]) != len(ema):
            raise CheckpointError(f"The checkpoint {ckpt} holds another model; delete it to train the UNet afresh.")
        for e, saved in zip(ema, state["ema"]):
            e.copy_(saved)

    if not train:
        if _run_stages("unet", settings, ckpt, streams, budget, dict, load, lambda: None, lambda s, st: "", False) == 0:
            raise CheckpointError(f"There is no UNet checkpoint in {work} to export from; train first (without --export-only).")
        return unet, text_encoder, ema

    noise_sched = DDPMScheduler(**{k: v for k, v in scheduler_kwargs().items() if k != "set_alpha_to_one"})
    ids_all = _caption_ids(tokenizer, data["captions"])
    empty_ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    sf = data["scaling_factor"]
    size = data["mean"].shape[-1]
    n = data["mean"].shape[0]
    batch = settings.batch
    store = AttentionStore()

    def step_fn(step: int, stage: Stage) -> str:
        lr = settings.lr_in(stage, step)
        _set_lr(opt, lr)
        gen = streams.gen
        idx = torch.randint(0, n, (batch,), generator=gen)
        z = data["mean"][idx] * sf
        drop = torch.rand(batch, generator=gen) < settings.caption_dropout
        index, valid_words = data["index"][idx], data["valid"][idx]
        if stage.color_dropout > 0:
            caption_ids, index, valid_words = _color_dropout(tokenizer, data, idx, stage.color_dropout, streams.rng)
        else:
            caption_ids = ids_all[idx]
        ids = torch.where(drop[:, None], empty_ids.expand(batch, -1), caption_ids)
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        zt = noise_sched.add_noise(z, noise, t)
        store.reset()
        store.token_index = index
        ctx = text_encoder(ids)[0]
        pred = unet(zt, t, encoder_hidden_states=ctx).sample
        diff_loss = F.mse_loss(pred, noise)
        maps = normalize_max(store.mean_maps(size, size))
        valid = valid_words * (~drop)[:, None].float()
        per_token = ((maps - data["target"][idx]) ** 2).mean(dim=(-1, -2))
        attn_loss = (per_token * valid).sum() / valid.sum().clamp(min=1)
        loss = diff_loss + settings.attn_weight * attn_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        return f"diff {diff_loss.item():.4f} attn {attn_loss.item():.4f} lr {lr:.2e}"

    def modules_state() -> dict[str, Any]:
        return {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "opt": opt.state_dict(), "ema": ema}

    def prepare() -> None:
        unet.train()
        text_encoder.train()

    with capture_cross_attention(unet, store, factor=1):
        _run_stages("unet", settings, ckpt, streams, budget, modules_state, load, prepare, step_fn)
    return unet, text_encoder, ema


def _caption_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids of captions, padded (and truncated) to the tokenizer's length."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


def _color_dropout(tokenizer, data: dict, idx: torch.Tensor, p: float, rng: np.random.Generator):
    """Token ids, tracked positions and validity of a batch's captions after `drop_color_words`."""
    captions, index, valid = [], [], []
    for i in idx.tolist():
        caption, ix, va = drop_color_words(data["captions"][i], data["index"][i].numpy(), data["valid"][i].numpy(), p, rng)
        captions.append(caption)
        index.append(ix)
        valid.append(va)
    return _caption_ids(tokenizer, captions), torch.from_numpy(np.stack(index)), torch.from_numpy(np.stack(valid))


def export(out: Path, vae, unet, text_encoder, ema, tokenizer, scaling_factor: float, meta: dict) -> None:
    """Write the EMA weights as a diffusers StableDiffusionPipeline folder."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    params = list(unet.parameters()) + list(text_encoder.parameters())
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    vae.register_to_config(scaling_factor=scaling_factor)
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DDIMScheduler(**scheduler_kwargs()),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(out), safe_serialization=True)
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="diffusers folder to write")
    ap.add_argument("--work", type=Path, default=Path(".train"), help="checkpoints and caches (default .train)")
    ap.add_argument("--recipe", type=Path, default=RECIPE_FILE, help="the staged recipe, a JSON file (default: the built-in model's)")
    ap.add_argument(
        "--scale", type=float, default=None, metavar="F",
        help="every step count of the recipe's schedule times F (stage bounds, cosine lengths, warm-up, VAE sample steps); "
        "0.001 runs every stage in a few dozen steps",
    )
    ap.add_argument(
        "--max-steps", type=int, default=None, metavar="N",
        help="train at most N steps in this invocation (VAE, UNet and decoder together), checkpoint and stop without "
        "exporting; the same command continues",
    )
    ap.add_argument(
        "--stage", choices=["all", "decoder"], default="all",
        help="decoder: only the VAE (when unfinished) and the decoder fine-tune; once the VAE is trained, this can run "
        "in a second process on the same --work beside the UNet stages, and the main run then finds the decoder done",
    )
    ap.add_argument("--export-only", action="store_true", help="write the model from the checkpoints as they are (no training)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the recipe's)")
    ap.add_argument("--seed", type=int, default=None, help="default: the recipe's")
    custom = ap.add_argument_group("custom runs (each replaces the recipe's setting)")
    custom.add_argument("--vae-steps", type=int, default=None, help="one VAE stage of N steps, cosine over N")
    custom.add_argument("--vae-sample-steps", type=int, default=None, help="VAE steps that decode a posterior sample before decoding the mean")
    custom.add_argument("--decoder-steps", type=int, default=None, help="one decoder-only stage (encoder frozen) of N steps, cosine over N; 0: none")
    custom.add_argument(
        "--unet-steps", type=int, default=None,
        help="one UNet stage of N steps, cosine over N, in place of the recipe's stages (default N: the recipe's total)",
    )
    custom.add_argument(
        "--color-dropout", type=float, default=None, metavar="P",
        help="one UNet stage with colour dropout P throughout (each run of colour words dropped from a training caption "
        "with probability P, so bare nouns localise too); with --unet-steps or alone",
    )
    custom.add_argument("--batch", type=int, default=None, help="UNet batch")
    custom.add_argument("--scenes", type=int, default=None, help="UNet training scenes (caps the VAE's and the decoder's)")
    custom.add_argument("--attn-weight", type=float, default=None)
    custom.add_argument("--lr", type=float, default=None, help="UNet peak learning rate")
    args = ap.parse_args(argv)
    if args.max_steps is not None and args.max_steps < 0:
        ap.error("--max-steps is at least 0")
    return args


def resolve_recipe(args: argparse.Namespace) -> Recipe:
    """The recipe file with the command line's settings in place, scaled by --scale."""
    recipe = with_flags(
        load_recipe(args.recipe),
        seed=args.seed, threads=args.threads, vae_steps=args.vae_steps, vae_sample_steps=args.vae_sample_steps,
        decoder_steps=args.decoder_steps, unet_steps=args.unet_steps, color_dropout=args.color_dropout,
        lr=args.lr, batch=args.batch, scenes=args.scenes, attn_weight=args.attn_weight,
    )
    return scaled(recipe, args.scale) if args.scale is not None else recipe


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    recipe = resolve_recipe(args)
    torch.set_num_threads(recipe.threads)
    random.seed(recipe.seed)
    np.random.seed(recipe.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    budget = Budget(args.max_steps)
    train = not args.export_only
    tokenizer = load_tokenizer(args.work)
    try:
        vae = train_vae(args.work, recipe.vae, recipe.seed, budget, train)
        t_vae = time.time() - t0
        if args.stage == "decoder":  # runs beside the UNet stages: it does not change the latents
            finetune_decoder(vae, args.work, recipe.decoder, recipe.seed, budget, train)
            return
        data = cache_latents(vae, args.work, recipe.unet.scenes)  # the encoder only
        _log(f"latents cached, scaling factor {data['scaling_factor']:.4f}")
        unet, text_encoder, ema = train_unet(args.work, tokenizer, data, recipe.unet, recipe.seed, budget, train)
        vae = finetune_decoder(vae, args.work, recipe.decoder, recipe.seed, budget, train)
    except Stopped as stop:
        _log(f"stopped at {stop} (--max-steps {args.max_steps}); run the same command to continue")
        return
    meta = {
        "command": shlex.join(["python", "-m", "conceptforge.shapes.train", *argv]),
        "recipe_file": str(args.recipe),
        "recipe": recipe.to_dict(),
        "seconds_this_invocation": round(time.time() - t0, 1),
        "seconds_vae_this_invocation": round(t_vae, 1),
    }
    export(args.out, vae, unet, text_encoder, ema, tokenizer, data["scaling_factor"], meta)
    _log(f"wrote {args.out}")


def cli(argv: list[str] | None = None) -> int:
    """main() with every ConceptforgeError as one sentence and its exit code."""
    try:
        main(argv)
    except ConceptforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(cli())
