"""Train the built-in model: `python -m conceptforge.shapes.train --out DIR`.

Stage 1 trains the VAE on rendered scenes (1500 steps sampling the
posterior, then decoding its mean); stage 2 trains the UNet and the
text encoder on cached latents, with caption dropout (for classifier-free
guidance) and a cross-attention grounding term: the max-normalised attention
map of each caption word that names a region is pulled towards that region's
mask (the world knows every mask exactly).  Seeded and resumable; checkpoints
go to --work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..engine.attention import AttentionStore, capture_cross_attention, normalize_max
from .data import attention_targets, drop_color_words, image_tensor, render, scene_seeds
from .model import build_tokenizer, scheduler_kwargs, text_encoder_config, unet_kwargs, vae_kwargs


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _set_cosine_lr(opt: torch.optim.Optimizer, peak: float, step: int, steps: int) -> None:
    for g in opt.param_groups:
        g["lr"] = peak * 0.5 * (1 + math.cos(math.pi * step / steps))


def _resume(ckpt: Path, module: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """Load an autoencoder checkpoint if there is one; return its step."""
    if not ckpt.exists():
        return 0
    state = torch.load(ckpt, weights_only=False)
    module.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    return state["step"]


def _reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)


def _psnr(rec: torch.Tensor, x: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / F.mse_loss(rec, x).item())


def train_vae(work: Path, steps: int, batch: int, n_scenes: int, seed: int, sample_steps: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_kwargs())
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    ckpt = work / "vae.pt"
    start = _resume(ckpt, vae, opt)
    if start >= steps:
        return vae
    images = torch.stack([image_tensor(s.image) for s in render(scene_seeds(n_scenes))])
    gen = torch.Generator().manual_seed(seed + start)
    t0 = time.time()
    for step in range(start, steps):
        _set_cosine_lr(opt, 2e-3, step, steps)
        x = images[torch.randint(0, len(images), (batch,), generator=gen)]
        post = vae.encode(x).latent_dist
        if step < sample_steps:  # a VAE: decode a posterior sample, light KL
            rec = vae.decode(post.sample(generator=gen)).sample
            reg = post.kl().mean() / x[0].numel()
        else:  # then sharpen: decode the mean (the UNet trains on the means)
            rec = vae.decode(post.mean).sample
            reg = post.mean.pow(2).mean()
        loss = _reconstruction_loss(rec, x) + 1e-4 * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            _log(f"vae step {step+1}/{steps} loss {loss.item():.4f} psnr {_psnr(rec, x):.1f} ({(time.time()-t0)/(step+1-start):.2f}s/step)")
        if (step + 1) % 500 == 0 or step + 1 == steps:
            _save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}, ckpt)
    return vae


def finetune_decoder(vae, work: Path, steps: int, batch: int, n_scenes: int, seed: int):
    """Sharpen the decoder with the encoder frozen: the latent space (and so the
    UNet's training data) stays exactly as it is, reconstructions improve."""
    ckpt = work / "decoder.pt"
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    start = _resume(ckpt, vae, opt)
    if start >= steps:
        return vae
    images = torch.stack([image_tensor(s.image) for s in render(scene_seeds(n_scenes, base=2_000_000))])
    gen = torch.Generator().manual_seed(seed + 7 + start)
    t0 = time.time()
    for step in range(start, steps):
        _set_cosine_lr(opt, 1e-3, step, steps)
        x = images[torch.randint(0, len(images), (batch,), generator=gen)]
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        loss = _reconstruction_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            _log(f"decoder step {step+1}/{steps} loss {loss.item():.4f} psnr {_psnr(rec, x):.1f} ({(time.time()-t0)/(step+1-start):.2f}s/step)")
        if (step + 1) % 250 == 0 or step + 1 == steps:
            _save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}, ckpt)
    return vae


@torch.no_grad()
def cache_latents(vae, work: Path, n_scenes: int, latent_size: int):
    path = work / "latents.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    vae.eval()
    scenes = render(scene_seeds(n_scenes))
    means = []
    for i in range(0, len(scenes), 256):
        x = torch.stack([image_tensor(s.image) for s in scenes[i : i + 256]])
        dist = vae.encode(x).latent_dist
        means.append(dist.mean)
    mean = torch.cat(means)
    targets = [attention_targets(s, latent_size) for s in scenes]
    data = {
        "mean": mean,
        "captions": [s.caption for s in scenes],
        "index": torch.from_numpy(np.stack([t[0] for t in targets])),
        "target": torch.from_numpy(np.stack([t[1] for t in targets])),
        "valid": torch.from_numpy(np.stack([t[2] for t in targets])),
        "scaling_factor": float(1.0 / mean.std()),
    }
    _save_atomic(data, path)
    return data


def train_unet(
    work: Path, tokenizer, data: dict, steps: int, batch: int, seed: int, attn_weight: float, lr: float,
    export_only: bool = False, color_dropout: float = 0.0,
):
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_kwargs())
    text_encoder = CLIPTextModel(text_encoder_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema = [p.detach().clone() for p in params]
    ckpt = work / "unet.pt"
    start = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        ema = state["ema"]
        start = state["step"]
    if start >= steps or export_only:
        return unet, text_encoder, ema
    noise_sched = DDPMScheduler(**{k: v for k, v in scheduler_kwargs().items() if k != "set_alpha_to_one"})
    ids_all = _caption_ids(tokenizer, data["captions"])
    empty_ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    sf = data["scaling_factor"]
    size = data["mean"].shape[-1]
    store = AttentionStore()
    gen = torch.Generator().manual_seed(seed + start)
    colour_rng = np.random.default_rng(seed + start)
    n = data["mean"].shape[0]
    t0 = time.time()
    unet.train()
    text_encoder.train()
    with capture_cross_attention(unet, store, factor=1):
        for step in range(start, steps):
            warm = min(1.0, (step + 1) / 500)
            cur_lr = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
            for g in opt.param_groups:
                g["lr"] = cur_lr
            idx = torch.randint(0, n, (batch,), generator=gen)
            z = data["mean"][idx] * sf
            drop = torch.rand(batch, generator=gen) < 0.1
            index, valid_words = data["index"][idx], data["valid"][idx]
            if color_dropout > 0:
                caption_ids, index, valid_words = _color_dropout(tokenizer, data, idx, color_dropout, colour_rng)
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
            loss = diff_loss + attn_weight * attn_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(0.999, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema, params):
                    e.mul_(decay).add_(p.detach(), alpha=1 - decay)
            if (step + 1) % 100 == 0:
                rate = (time.time() - t0) / (step + 1 - start)
                _log(f"unet step {step+1}/{steps} diff {diff_loss.item():.4f} attn {attn_loss.item():.4f} lr {cur_lr:.2e} ({rate:.2f}s/step)")
            if (step + 1) % 500 == 0 or step + 1 == steps:
                _save_atomic({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "opt": opt.state_dict(), "ema": ema, "step": step + 1}, ckpt)
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="diffusers folder to write")
    ap.add_argument("--work", type=Path, default=Path(".train"), help="checkpoints and caches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=2300)
    ap.add_argument("--vae-sample-steps", type=int, default=1500, help="VAE steps that decode a posterior sample before decoding the mean")
    ap.add_argument("--decoder-steps", type=int, default=7000, help="decoder-only steps (encoder frozen) after the VAE")
    ap.add_argument("--stage", choices=["all", "decoder"], default="all", help="decoder: only the decoder fine-tune, which can run beside the UNet stage")
    ap.add_argument("--unet-steps", type=int, default=8000)
    ap.add_argument("--export-only", action="store_true", help="write the model from the checkpoints as they are (no training)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--scenes", type=int, default=40000)
    ap.add_argument("--attn-weight", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument(
        "--color-dropout", type=float, default=0.0,
        help="probability of dropping each run of colour words from a training caption, so bare nouns localise too",
    )
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tokenizer = build_tokenizer(args.work / "tokenizer")
    vae = train_vae(args.work, args.vae_steps, 16, min(args.scenes, 8000), args.seed, args.vae_sample_steps)
    t_vae = time.time() - t0
    if args.stage == "decoder":  # runs beside the UNet stage: it does not change the latents
        finetune_decoder(vae, args.work, args.decoder_steps, 16, min(args.scenes, 8000), args.seed)
        return
    data = cache_latents(vae, args.work, args.scenes, latent_size=16)  # the encoder only
    _log(f"latents cached, scaling factor {data['scaling_factor']:.4f}")
    unet, text_encoder, ema = train_unet(
        args.work, tokenizer, data, args.unet_steps, args.batch, args.seed, args.attn_weight, args.lr, args.export_only, args.color_dropout
    )
    if not args.export_only or (args.work / "decoder.pt").exists():
        vae = finetune_decoder(vae, args.work, 0 if args.export_only else args.decoder_steps, 16, min(args.scenes, 8000), args.seed)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta["seconds_this_invocation"] = round(time.time() - t0, 1)
    meta["seconds_vae_this_invocation"] = round(t_vae, 1)
    export(args.out, vae, unet, text_encoder, ema, tokenizer, data["scaling_factor"], meta)
    _log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
