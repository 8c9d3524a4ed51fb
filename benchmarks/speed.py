"""Speed and memory of the method's steps.

Built-in model (the example project): seconds per EM-phase step, per joint
step (LoRA), and per E-step split into UNet passes and DenseCRF.  A full-size
SD-1.5-configured UNet with random weights: one training step of the token
phase and of the joint phase (LoRA), with and without gradient checkpointing
and mixed precision.  Each configuration runs in its own process so that its
peak memory (max RSS on CPU, max allocated on CUDA) is its own.

    python benchmarks/speed.py [--skip-sd] [--device cpu]

Writes benchmarks/results/speed.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def builtin_worker(device: str, steps: int) -> dict:
    """Time the phases of the method on the example project."""
    import shutil

    import torch

    from conceptforge.engine import masks as mask_ops
    from conceptforge.engine.backbone import resolve_source
    from conceptforge.engine.config import resolve_config
    from conceptforge.engine.em import Learner
    from conceptforge.engine.runs import new_run
    from conceptforge.project import Project

    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(ROOT / "examples" / "shapes-duo", tmp / "p")
    project = Project.load(tmp / "p")
    cfg = resolve_config(True, {}, {"device": device})
    learner = Learner(project, new_run(project.runs_dir, "speed"), cfg, resolve_source(project.model))
    learner._setup()
    learner._make_optimizer("em")
    out = {"init_mask_signal": cfg.init_mask_signal, "init_mask_timesteps": cfg.init_mask_timesteps}
    t = time.perf_counter()
    learner._estep(0, cfg.init_mask_timesteps)  # the first E-step: initial masks, DenseCRF and mask PNGs included
    out["first_estep_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(steps):
        learner._train_step()
    out["em_step_s"] = (time.perf_counter() - t) / steps
    # one later E-step (the configured mask signal), split: UNet passes and DenseCRF
    learner.iteration = 1
    t = time.perf_counter()
    maps = [learner._mask_signal(i, cfg.mask_timesteps, 1) for i in range(len(learner.images))]
    out["estep_unet_s"] = time.perf_counter() - t
    out["mask_signal"] = cfg.mask_signal
    t = time.perf_counter()
    for data, m in zip(learner.images, maps):
        mask_ops.refine_masks(data.rgb, m, has_background=any(data.background))
    out["estep_crf_s"] = time.perf_counter() - t
    learner._make_optimizer("joint")
    t = time.perf_counter()
    for _ in range(steps):
        learner._train_step()
    out["joint_step_s"] = (time.perf_counter() - t) / steps
    out["peak_mb"] = peak_memory_mb(device)
    torch.cuda.empty_cache() if device == "cuda" else None
    return out


def sd_worker(device: str, phase: str, checkpointing: bool, precision: str, optimizer: str = "adamw") -> dict:
    """One training step of a random SD-1.5-configured UNet with capture at 16x16."""
    import torch
    from diffusers import UNet2DConditionModel

    from conceptforge.engine.attention import AttentionStore, capture_cross_attention
    from conceptforge.engine.losses import attention_loss, masked_diffusion_loss

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).to(device)
    unet.requires_grad_(False)
    params = []
    if phase == "joint":
        from peft import LoraConfig

        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        params = [p for n, p in unet.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
    if checkpointing:
        unet.train()
        unet.enable_gradient_checkpointing()
    ctx = torch.randn(1, 77, 768, device=device, requires_grad=True)  # the token rows' gradient path
    if optimizer == "adamw8bit":
        import bitsandbytes as bnb  # the row reports the error where it is missing

        opt = bnb.optim.AdamW8bit(params + [ctx], lr=1e-4)
    else:
        opt = torch.optim.AdamW(params + [ctx], lr=1e-4)
    store = AttentionStore()
    store.token_index = torch.tensor([[5, 7]])
    z = torch.randn(1, 4, 64, 64, device=device)
    mask = torch.ones(1, 1, 64, 64, device=device)
    dtype = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    times = []
    for _ in range(2):
        t = time.perf_counter()
        store.reset()
        with capture_cross_attention(unet, store, factor=4), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = unet(z, torch.tensor([500], device=device), encoder_hidden_states=ctx).sample
        loss = masked_diffusion_loss(pred, z, mask) + 0.01 * attention_loss(store.mean_maps(16, 16), torch.ones(1, 2, 16, 16, device=device))
        with capture_cross_attention(unet, store, factor=4):  # checkpointing recomputes with capture, as in learn
            loss.backward()
        opt.step()
        opt.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"step_s": min(times), "peak_mb": peak_memory_mb(device)}


def spawn(kind: str, **kwargs) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps({"kind": kind, **kwargs})]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip-sd", action="store_true")
    ap.add_argument("--worker", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.md")
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        kind = spec.pop("kind")
        result = builtin_worker(**spec) if kind == "builtin" else sd_worker(**spec)
        print(json.dumps(result))
        return
    import torch

    lines = [
        "# Speed and memory",
        "",
        f"Produced by `python benchmarks/speed.py --device {args.device}{' --skip-sd' if args.skip_sd else ''}` "
        f"on {args.device} ({torch.get_num_threads()} threads); each row in its own process.",
        "",
        "## Built-in model, example project (shapes-duo)",
        "",
    ]
    b = spawn("builtin", device=args.device, steps=args.steps)
    if "error" in b:
        lines.append(f"failed: {b['error']}")
    else:
        lines += [
            "| measure | value |", "|---|---:|",
            f"| EM-phase step (token + Eq. 3 + Eq. 4) | {b['em_step_s']:.3f} s |",
            f"| joint step (tokens + LoRA) | {b['joint_step_s']:.3f} s |",
            f"| first E-step, all of it (all images, {b['init_mask_timesteps']} timesteps each; signal {b['init_mask_signal']}) | {b['first_estep_s']:.3f} s |",
            f"| E-step after the first: UNet passes (all images, mask_timesteps each; signal {b.get('mask_signal', 'attention')}) | {b['estep_unet_s']:.3f} s |",
            f"| E-step: DenseCRF (all images) | {b['estep_crf_s']:.3f} s |",
            f"| peak memory | {b['peak_mb']:.0f} MB |",
        ]
    if not args.skip_sd:
        lines += ["", "## SD-1.5-configured UNet (random weights), 512 px (64x64 latents), batch 1, one step", "",
                  "| phase | gradient checkpointing | mixed precision | optimizer | s/step | peak memory |", "|---|---|---|---|---:|---:|"]
        configs = [
            ("em", False, "no", "adamw"), ("joint", False, "no", "adamw"), ("joint", True, "no", "adamw"),
            ("joint", False, "bf16", "adamw"), ("joint", True, "bf16", "adamw"), ("joint", True, "bf16", "adamw8bit"),
        ]
        if args.device == "cuda":  # CPUs have no fast fp16 kernels: one step ran for over 8 minutes
            configs.append(("joint", True, "fp16", "adamw"))
        for phase, ckpt, prec, optimizer in configs:
            r = spawn("sd", device=args.device, phase=phase, checkpointing=ckpt, precision=prec, optimizer=optimizer)
            name = "tokens only" if phase == "em" else "tokens + LoRA"
            head = f"| {name} | {'yes' if ckpt else 'no'} | {prec} | {optimizer} |"
            lines.append(f"{head} failed: {r['error']} | |" if "error" in r else f"{head} {r['step_s']:.2f} | {r['peak_mb']:.0f} MB |")
            print(lines[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
