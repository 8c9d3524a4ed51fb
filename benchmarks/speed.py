"""Speed and memory of the method, timed on the product's own code path.

1. Built-in model, example project: seconds per EM-phase step, joint step,
   first E-step and later E-step (UNet passes and DenseCRF).
2. Cost of EM on built-in projects of several images (scenes of two objects
   and a background): `learn --masks em` against `--masks fixed` in one
   process; later E-steps as a share of the EM phase's training time, the
   first E-step per image in training steps, the whole learn as a ratio.
3. A Stable-Diffusion-1.5-configured pipeline with random weights (UNet,
   CLIP ViT-L text encoder, VAE) at 512 px: one `Trainer.train_step` per
   memory option, one E-step with the SD defaults, and the E-step share of
   the EM phase at the SD schedule.
4. `conceptforge learn` on the example project beside a competing busy
   process: the chosen thread count against torch's default, as ratios to the
   same learn without the competing process.

Each configuration runs in its own process, so that its peak memory (max RSS
on CPU, max allocated on CUDA) is its own.

    python benchmarks/speed.py [--device cpu] [--skip-sd] [--skip-threads] [--images 3,10]

Writes benchmarks/results/speed.md (and speed.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
PHOTO = ROOT.parent / "shared" / "data" / "break-a-scene-examples" / "bear" / "img.jpg"


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --------------------------------------------------------------------------- 1. example project


def builtin_worker(device: str, steps: int) -> dict:
    """Time the phases of the method on the example project (public API)."""
    from conceptforge.engine.config import resolve_config
    from conceptforge.engine.learn import build_trainer
    from conceptforge.project import Project

    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(ROOT / "examples" / "shapes-duo", tmp / "p")
    project = Project.load(tmp / "p")
    cfg = resolve_config(True, {}, {"device": device})
    trainer = build_trainer(project, cfg)
    out = {"steps": steps, "init_mask_signal": cfg.init_mask_signal, "init_mask_timesteps": cfg.init_mask_timesteps, "mask_signal": cfg.mask_signal}
    out["first_estep_s"] = _timed(trainer.start)  # the initial masks: signal and DenseCRF for every image
    out["em_step_s"] = _timed(lambda: [trainer.train_step() for _ in range(steps)]) / steps
    estimator = trainer.estimator
    out["estep_unet_s"] = _timed(lambda: [estimator.signal(i, 1, cfg.mask_timesteps, 1) for i in range(len(trainer.images))])
    out["estep_s"] = _timed(trainer.run_estep)  # as `learn` runs it: budgeted error passes, DenseCRF, guards
    trainer.make_optimizer("joint")
    out["joint_step_s"] = _timed(lambda: [trainer.train_step() for _ in range(steps)]) / steps
    out["peak_mb"] = peak_memory_mb(device)
    return out


# --------------------------------------------------------------------------- 2. several images


def two_object_seeds(n: int, start: int = 700_000) -> list[int]:
    """Scenes of two objects of different shapes (seeds apart from the mask benchmark's)."""
    from conceptforge.shapes.world import sample_scene

    seeds, s = [], start
    while len(seeds) < n:
        shapes = [o.shape for o in sample_scene(s).objects]
        if len(shapes) == 2 and len(set(shapes)) == 2:
            seeds.append(s)
        s += 1
    return seeds


def multi_worker(device: str, images: int, settings: dict, repeats: int = 5) -> dict:
    """learn --masks em and --masks fixed on one project of `images` scenes, `repeats` times each,
    alternating which goes first (the machine's drift falls on both alike)."""
    from scene_projects import scene_project

    from conceptforge.engine.evaluate import iou_curves
    from conceptforge.engine.learn import learn_project
    from conceptforge.engine.runs import find_run

    seeds = two_object_seeds(images)
    out: dict = {"images": images, "concepts": 3 * images, "settings": settings, "em": [], "fixed": []}
    tmp = Path(tempfile.mkdtemp())
    # a short run on the same images first loads the model and the libraries and grows the
    # allocator to this project's sizes, so that no timed run pays for that (the first timed
    # run, em's, had paid about a second on 10 images)
    learn_project(scene_project(tmp / "warm-up", seeds), {"masks": "fixed", "em_steps": 2, "joint_steps": 0, "device": device}, resume=False)
    for r in range(repeats):
        for mode in ("em", "fixed") if r % 2 == 0 else ("fixed", "em"):
            root = scene_project(tmp / f"{mode}-{r}", seeds)
            t = time.perf_counter()
            result = learn_project(root, {"masks": mode, "joint_steps": 0, "device": device, **settings}, resume=False)
            wall = time.perf_counter() - t
            curves = iou_curves(find_run(root / "runs", result["run"]))
            out[mode].append({"wall_s": wall, **result["timing"], "e_steps": result["iterations"], "final_iou": curves["mean_final"]})
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def median_run(runs: list[dict]) -> dict:
    """The median of every figure over repeated runs."""
    return {k: float(np.median([r[k] for r in runs])) for k in runs[0]}


# --------------------------------------------------------------------------- 3. SD-1.5-configured


def sd_pipeline(device: str):
    """A StableDiffusionPipeline with SD 1.5's configuration and random weights (built in memory)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from conceptforge.shapes import model_path

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(str(model_path()), subfolder="tokenizer", model_max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **SD15_TEXT))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**SD15_VAE), text_encoder=text, tokenizer=tokenizer, unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def sd_project(root: Path) -> Path:
    """A 512 px photo with two concepts (the bear photo when it is there, else a drawn scene)."""
    import numpy as np
    from PIL import Image

    from conceptforge.project import Project

    project = Project.create(root, model=str(root / "model"))  # the model is given in memory
    image = root.parent / "photo.png"
    if PHOTO.is_file():
        with Image.open(PHOTO) as im:
            im.convert("RGB").resize((512, 512)).save(image)
    else:
        arr = np.full((512, 512, 3), 90, np.uint8)
        arr[100:300, 80:260] = (200, 40, 40)
        Image.fromarray(arr).save(image)
    project.add_concept(image, "<a>", init="shape")
    project.add_concept(image, "<b>", init="background", background=True)
    return root


def sd_worker(device: str, phase: str, checkpointing: bool, precision: str, optimizer: str = "adamw", estep: bool = False) -> dict:
    """One Trainer.train_step (and optionally one E-step) with SD 1.5's configuration at 512 px."""
    import torch

    from conceptforge.engine.config import resolve_config
    from conceptforge.engine.learn import build_trainer
    from conceptforge.project import Project

    tmp = Path(tempfile.mkdtemp())
    (tmp / "p" / "model").mkdir(parents=True)
    (tmp / "p" / "model" / "model_index.json").write_text("{}")  # the model is passed in memory
    project = Project.load(sd_project(tmp / "p"))
    settings = {"device": device, "gradient_checkpointing": checkpointing, "mixed_precision": precision, "optimizer": optimizer}
    cfg = resolve_config(False, {}, settings)
    trainer = build_trainer(project, cfg, pipeline=sd_pipeline(device))
    att = trainer.model.att
    import numpy as np

    from conceptforge.engine.estep import EStepResult

    size = trainer.model.size
    half = np.zeros((size, size), bool)
    half[:, : size // 2] = True
    trainer.estep_result = EStepResult(0, {(0, "<a>"): half, (0, "<b>"): ~half}, {(0, "<a>"): np.ones((att, att), np.float32), (0, "<b>"): np.ones((att, att), np.float32)})
    trainer.make_optimizer(phase)
    times = [_timed(trainer.train_step) for _ in range(2)]
    out = {"step_s": min(times), "peak_mb": peak_memory_mb(device)}
    if estep:
        # the same E-step two ways: a dedicated attention pass, and the maps harvested from a training step
        trainer.estimator.cfg = cfg.model_copy(update={"attention_source": "pass", "estep_skip_settled": False})
        out["estep_pass_s"] = _timed(trainer.run_estep)
        trainer.estimator.cfg = cfg.model_copy(update={"attention_source": "harvest", "estep_skip_settled": False})
        for token in ("<a>", "<b>"):  # what training steps leave behind (their cost is in the step time)
            trainer.estimator.record(0, [token], torch.rand(1, att, att), False, 500)
        out["estep_harvest_s"] = _timed(trainer.run_estep)
        out["default_source"] = cfg.attention_source
        out["later_esteps"] = len(cfg.estep_steps())
        out["em_steps"] = cfg.em_steps
    return out


# --------------------------------------------------------------------------- SDXL-configured (--sdxl)


def sdxl_worker(device: str, phase: str, checkpointing: bool, precision: str, size: int = 1024) -> dict:
    """One Trainer.train_step with SDXL-base's configuration (random weights: UNet,
    CLIP ViT-L and OpenCLIP ViT-bigG text encoders, VAE) at `size` px."""
    SDXL_UNET = dict(  # noqa: N806 - stabilityai/stable-diffusion-xl-base-1.0's unet/config.json
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    SDXL_TEXT_2 = dict(  # noqa: N806 - OpenCLIP ViT-bigG, text_encoder_2/config.json
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, max_position_embeddings=77,
        projection_dim=1280, hidden_act="gelu",
    )
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from conceptforge.engine.config import resolve_config
    from conceptforge.engine.estep import EStepResult
    from conceptforge.engine.learn import build_trainer
    from conceptforge.project import Project
    from conceptforge.shapes import model_path

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(str(model_path()), subfolder="tokenizer", model_max_length=77)
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(model_path()), subfolder="tokenizer", model_max_length=77)
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**SD15_VAE, scaling_factor=0.13025), text_encoder=CLIPTextModel(CLIPTextConfig(**ids, **SD15_TEXT)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**ids, **SDXL_TEXT_2)), tokenizer=tokenizer, tokenizer_2=tokenizer_2,
        unet=UNet2DConditionModel(**SDXL_UNET), scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    )
    tmp = Path(tempfile.mkdtemp())
    (tmp / "p" / "model").mkdir(parents=True)
    (tmp / "p" / "model" / "model_index.json").write_text("{}")  # the model is passed in memory
    project = Project.load(sd_project(tmp / "p"))
    settings = {"device": device, "gradient_checkpointing": checkpointing, "mixed_precision": precision, "image_size": size}
    trainer = build_trainer(project, resolve_config(False, {}, settings), pipeline=pipe)
    half = np.zeros((size, size), bool)
    half[:, : size // 2] = True
    trainer.estep_result = EStepResult(0, {(0, "<a>"): half, (0, "<b>"): ~half}, {})
    trainer.make_optimizer(phase)
    return {"step_s": _timed(trainer.train_step), "peak_mb": peak_memory_mb(device), "att": trainer.model.att}


# --------------------------------------------------------------------------- 4. threads beside a busy process


def threads_worker() -> dict:
    """`conceptforge learn` on the example: idle, and beside a busy process with
    the chosen threads and with torch's default (every core, spinning waits)."""
    exe = Path(sys.executable).with_name("conceptforge")
    out = {}
    for name, busy, env in (
        ("alone, chosen threads", False, {}),
        ("beside a busy process, chosen threads", True, {}),
        ("beside a busy process, torch's default threads", True, {"CONCEPTFORGE_THREADS": str(os.cpu_count()), "OMP_WAIT_POLICY": "ACTIVE"}),
    ):
        work = Path(tempfile.mkdtemp()) / "p"
        shutil.copytree(ROOT / "examples" / "shapes-duo", work)
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            time.sleep(1.0 if busy else 0.0)
            full_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "CONCEPTFORGE_THREADS", "OMP_WAIT_POLICY")}
            t = time.perf_counter()
            subprocess.run([str(exe), "learn", str(work), "-q"], check=True, env={**full_env, **env}, capture_output=True)
            out[name] = time.perf_counter() - t
        finally:
            if spinner is not None:
                spinner.kill()
    return out


# --------------------------------------------------------------------------- driver


def spawn(kind: str, **kwargs) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps({"kind": kind, **kwargs})]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


WORKERS = {"builtin": builtin_worker, "multi": multi_worker, "sd": sd_worker, "threads": threads_worker, "sdxl": sdxl_worker}


def example_rows(b: dict) -> list[str]:
    return [
        "| measure | value |", "|---|---:|",
        f"| EM-phase step (token + Eq. 3 + Eq. 4) | {b['em_step_s']:.3f} s |",
        f"| joint step (tokens + LoRA) | {b['joint_step_s']:.3f} s |",
        f"| first E-step (all images, {b['init_mask_timesteps']} timesteps each; signal {b['init_mask_signal']}; DenseCRF included) | {b['first_estep_s']:.3f} s |",
        f"| later E-step: signal with a full error pass of every image ({b['mask_signal']}) | {b['estep_unet_s']:.3f} s |",
        f"| later E-step as `learn` runs it after {b['steps']} steps (budgeted error passes, DenseCRF, guards) | {b['estep_s']:.3f} s |",
        f"| peak memory | {b['peak_mb']:.0f} MB |",
    ]


def multi_rows(rows: list[dict]) -> list[str]:
    lines = [
        "| project | settings | EM-phase training | later E-steps | share of training time | first E-step per image | learn em / fixed (wall; median, range) | final IoU em / fixed |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| | failed: {r['error']} | | | | | | |")
            continue
        em, fx = median_run(r["em"]), median_run(r["fixed"])
        ratios = [e["wall_s"] / f["wall_s"] for e, f in zip(r["em"], r["fixed"])]
        step = em["em_seconds"] / max(1, em["em_steps_timed"])
        share = em["estep_seconds"] / em["em_seconds"]
        first = em["first_estep_seconds"] / r["images"] / step
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "defaults"
        lines.append(
            f"| {r['images']} images, {r['concepts']} concepts | {settings} | {em['em_seconds']:.1f} s | {em['estep_seconds']:.1f} s ({em['e_steps'] - 1:.0f} E-steps) "
            f"| +{share:.0%} | {first:.0f} training steps | {np.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"| {em['final_iou']:.3f} / {fx['final_iou']:.3f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--images", default="3,10", help="image counts of the several-image projects")
    ap.add_argument("--repeats", type=int, default=5, help="em and fixed runs per several-image project (medians reported)")
    ap.add_argument("--set", action="append", default=[], help="a setting for the several-image rows (KEY=VALUE; repeatable); the defaults row is always run")
    ap.add_argument("--skip-builtin", action="store_true", help="leave out the built-in model's blocks (example and several images)")
    ap.add_argument("--skip-sd", action="store_true")
    ap.add_argument("--sd-rows", default="all", help="'em' times only the tokens-only step and the E-step")
    ap.add_argument("--skip-threads", action="store_true")
    ap.add_argument("--worker", default=None)
    ap.add_argument("--sdxl", default=None, help="only the SDXL-configured rows: MODE[,MODE...] of em, lora, lora+ckpt, lora+bf16, lora+ckpt+bf16, or all")
    ap.add_argument("--sdxl-size", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.md")
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec.pop("kind")](**spec)))
        return
    if args.sdxl:  # SDXL-configured rows only (random weights), written to speed_sdxl.md
        modes = {"em": ("em", False, "no"), "lora": ("joint", False, "no"), "lora+ckpt": ("joint", True, "no"),
                 "lora+bf16": ("joint", False, "bf16"), "lora+ckpt+bf16": ("joint", True, "bf16")}
        chosen = list(modes) if args.sdxl == "all" else args.sdxl.split(",")
        lines = [f"# SDXL-configured pipeline (random weights), {args.sdxl_size} px, batch 1, one `Trainer.train_step`", "",
                 f"Produced by `python benchmarks/speed.py {' '.join(sys.argv[1:])}` on {args.device}.", "",
                 "| mode | s/step | peak memory | attention maps |", "|---|---:|---:|---:|"]
        for mode in chosen:
            phase, ckpt, prec = modes[mode]
            r = spawn("sdxl", device=args.device, phase=phase, checkpointing=ckpt, precision=prec, size=args.sdxl_size)
            lines.append(f"| {mode} | failed: {r['error']} | | |" if "error" in r else f"| {mode} | {r['step_s']:.1f} | {r['peak_mb']:.0f} MB | {r['att']}x{r['att']} |")
            print(lines[-1], flush=True)
        args.out.with_name("speed_sdxl.md").write_text("\n".join(lines) + "\n")
        return
    import torch

    from conceptforge.engine.config import parse_set_option

    record: dict = {"command": " ".join(["python", "benchmarks/speed.py", *sys.argv[1:]])}
    lines = [
        "# Speed and memory",
        "",
        f"Produced by `{record['command']}` on {args.device} ({torch.get_num_threads()} threads"
        f" in this process, workers with their defaults); each block in its own process.",
        "",
    ]
    if not args.skip_builtin:
        lines += ["## Built-in model, example project (shapes-duo)", ""]
        b = spawn("builtin", device=args.device, steps=args.steps)
        record["example"] = b
        lines += [f"failed: {b['error']}"] if "error" in b else example_rows(b)
        print("\n".join(lines), flush=True)

        lines += ["", "## EM on projects of several images (built-in model, 200 EM steps, no joint phase; em and fixed alternating in one process after a warm-up run, medians of the repeats; wall: the whole `learn`, live report included)", ""]
        variants = [{}] + ([parse_set_option(args.set)] if args.set else [])
        multi = [spawn("multi", device=args.device, images=int(n), settings=v, repeats=args.repeats)
                 for v in variants for n in args.images.split(",") if n]
        record["multi"] = multi
        lines += multi_rows(multi)
        print("\n".join(lines[-len(multi) - 2 :]), flush=True)

    if not args.skip_sd:
        lines += ["", "## SD-1.5-configured pipeline (random weights), 512 px, batch 1: `Trainer.train_step` and the E-step", "",
                  "| phase | gradient checkpointing | mixed precision | optimizer | s/step | peak memory |", "|---|---|---|---|---:|---:|"]
        configs = [
            ("em", False, "no", "adamw", True), ("joint", False, "no", "adamw", False), ("joint", True, "no", "adamw", False),
            ("joint", False, "bf16", "adamw", False), ("joint", True, "bf16", "adamw", False), ("joint", True, "bf16", "adamw8bit", False),
        ]
        if args.device == "cuda":  # CPUs have no fast fp16 kernels
            configs.append(("joint", True, "fp16", "adamw", False))
        if args.sd_rows == "em":
            configs = configs[:1]
        record["sd"] = []
        estep_row = None
        for phase, ckpt, prec, optimizer, estep in configs:
            r = spawn("sd", device=args.device, phase=phase, checkpointing=ckpt, precision=prec, optimizer=optimizer, estep=estep)
            record["sd"].append({"phase": phase, "checkpointing": ckpt, "precision": prec, "optimizer": optimizer, **r})
            name = "tokens only" if phase == "em" else "tokens + LoRA"
            head = f"| {name} | {'yes' if ckpt else 'no'} | {prec} | {optimizer} |"
            lines.append(f"{head} failed: {r['error']} | |" if "error" in r else f"{head} {r['step_s']:.2f} | {r['peak_mb']:.0f} MB |")
            if estep and "error" not in r:
                estep_row = r
            print(lines[-1], flush=True)
        if estep_row:
            r = estep_row
            em_time = r["em_steps"] * r["step_s"]
            for label, key in (("a dedicated attention pass", "estep_pass_s"), ("harvested attention (the default)", "estep_harvest_s")):
                total = r["later_esteps"] * r[key]
                lines.append(
                    f"\nE-step with {label}: {r[key]:.2f} s; at the SD schedule ({r['later_esteps']} later E-steps in {r['em_steps']} steps"
                    f" of {r['step_s']:.1f} s) {total:.0f} s, {total / (em_time + total):.1%} of the EM phase."
                )
    if not args.skip_threads:
        t = spawn("threads")
        record["threads"] = t
        lines += ["", "## `conceptforge learn` on the example project beside a busy process", ""]
        if "error" in t:
            lines.append(f"failed: {t['error']}")
        else:
            alone = t["alone, chosen threads"]
            lines += ["| run | wall | ratio to alone |", "|---|---:|---:|"]
            lines += [f"| {k} | {v:.1f} s | {v / alone:.2f}x |" for k, v in t.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
