"""init -> add-concept -> learn -> masks -> generate, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from cli_helpers import cf, make_project


def test_full_flow(tmp_path, tiny_model, scene_files):
    proj = make_project(tmp_path, tiny_model, scene_files)
    images = sorted(p.name for p in (proj / "images").iterdir())
    assert images == ["first.png", "first.v1.gt.png", "first.v2.gt.png", "second.png"]

    r = cf("learn", proj, "--em-steps", "6", "--joint-steps", "2", "--quiet")
    assert r.exit_code == 0, r.output
    runs = [p for p in (proj / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1
    run = runs[0]
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "state.safetensors").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    esteps = [r for r in records if r["kind"] == "estep"]
    assert [s["step"] for s in steps if s["phase"] == "em"] == list(range(1, 7))
    assert [s["step"] for s in steps if s["phase"] == "joint"] == [1, 2]
    assert esteps[0]["iteration"] == 0 and len(esteps) >= 2
    first = {m["token"]: m for m in esteps[0]["masks"]}
    assert first["<v1>"]["iou_gt"] is not None and first["<v3>"]["iou_gt"] is None
    for it in range(len(esteps)):
        folder = run / "masks" / f"iter_{it:04d}"
        for name in ("first/v1.png", "first/v1_attn.png", "first/v2.png", "first/overlay.png", "second/v3.png", "second/overlay.png"):
            assert (folder / name).is_file(), folder / name
        mask = np.asarray(Image.open(folder / "first/v1.png"))
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}

    for tok in ("v1", "v2", "v3"):
        assert (proj / "concepts" / f"{tok}.safetensors").is_file()
    assert (proj / "concepts" / "pytorch_lora_weights.safetensors").is_file()

    r = cf("masks", proj, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["iteration"] == esteps[-1]["iteration"]
    assert {m["token"] for m in report["masks"]} == {"<v1>", "<v2>", "<v3>"}
    sheet = tmp_path / "sheet.png"
    r = cf("masks", proj, "--sheet", sheet, "--iteration", "0")
    assert r.exit_code == 0 and sheet.is_file(), r.output
    assert "<v1>" in r.output

    out = tmp_path / "samples"
    r = cf("generate", proj, "a photo of <v1> and <v3>", "-n", "2", "--steps", "2", "--seed", "5", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2
    info = Image.open(pngs[0]).info
    assert info["conceptforge:prompt"] == "a photo of <v1> and <v3>"
    assert info["conceptforge:seed"] in ("5", "6")


def test_exports_load_in_stock_diffusers(tmp_path, tiny_model, scene_files):
    from diffusers import StableDiffusionPipeline

    from conceptforge.engine.backbone import resolve_source
    from conceptforge.engine.generate import load_concept_pipeline

    proj = make_project(tmp_path, tiny_model, scene_files)
    assert cf("learn", proj, "--em-steps", "2", "--joint-steps", "2", "-q").exit_code == 0
    concepts = proj / "concepts"

    stock = StableDiffusionPipeline.from_pretrained(str(tiny_model), safety_checker=None)
    for tok in ("v1", "v2", "v3"):
        stock.load_textual_inversion(str(concepts / f"{tok}.safetensors"))
    stock.load_lora_weights(str(concepts), weight_name="pytorch_lora_weights.safetensors")
    ours, _ = load_concept_pipeline(resolve_source(str(tiny_model)), concepts, torch.device("cpu"))

    prompt = "a photo of <v1> and <v2> on <v3>"
    ids_stock = stock.tokenizer(prompt, return_tensors="pt").input_ids
    ids_ours = ours.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        a = stock.text_encoder(ids_stock)[0]
        b = ours.text_encoder(ids_ours)[0]
    assert torch.allclose(a, b, atol=1e-5)
    # the LoRA changed the UNet, and both pipelines carry the same change
    z, t = torch.randn(1, 4, 16, 16), torch.tensor([300])
    with torch.no_grad():
        assert torch.allclose(stock.unet(z, t, encoder_hidden_states=a).sample, ours.unet(z, t, encoder_hidden_states=b).sample, atol=1e-5)


def test_evaluate_reports_iou_per_estep(tmp_path, tiny_model, scene_files):
    proj = make_project(tmp_path, tiny_model, scene_files)
    assert cf("learn", proj, "--em-steps", "4", "--joint-steps", "0", "-q").exit_code == 0
    plot = tmp_path / "iou.png"
    r = cf("evaluate", proj, "--json", "--plot", plot, "-n", "2", "--steps", "1")
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    tokens = {c["token"] for c in result["masks"]["concepts"]}
    assert tokens == {"<v1>", "<v2>"}  # the concepts with a GT mask
    for c in result["masks"]["concepts"]:
        assert c["steps"][0] == 0 and len(c["steps"]) == len(c["iou"]) >= 2
        assert all(0.0 <= v <= 1.0 for v in c["iou"])
    assert "clip" in result["skipped"]  # no local CLIP weights for a non-built-in model
    assert "lpips" not in result["skipped"]  # diversity is the pixel measure, no LPIPS is named
    assert min(Image.open(plot).size) >= 300  # a readable plot


def test_one_token_from_several_images(tmp_path, tiny_model, scene_files):
    proj = make_project(tmp_path, tiny_model, scene_files)
    r = cf("add-concept", proj, scene_files["b"], "--token", "<v1>", "--gt-mask", scene_files["b0"])
    assert r.exit_code == 0, r.output
    again = cf("add-concept", proj, scene_files["a"], "--token", "<v4>")  # same content: stored once
    assert again.exit_code == 0
    assert sorted(p.name for p in (proj / "images").glob("*.png") if ".gt." not in p.name) == ["first.png", "second.png"]
    assert cf("learn", proj, "--em-steps", "2", "--joint-steps", "0", "-q").exit_code == 0
    run = next(p for p in (proj / "runs").iterdir() if p.is_dir())
    assert (run / "masks/iter_0000/first/v1.png").is_file() and (run / "masks/iter_0000/second/v1.png").is_file()
    assert sorted(p.name for p in (proj / "concepts").glob("*.safetensors")) == ["v1.safetensors", "v2.safetensors", "v3.safetensors", "v4.safetensors"]


def test_memory_options_run(tmp_path, tiny_model, scene_files):
    proj = make_project(tmp_path, tiny_model, scene_files)
    r = cf("learn", proj, "--em-steps", "2", "--joint-steps", "1", "--mixed-precision", "bf16", "--gradient-checkpointing", "-q")
    assert r.exit_code == 0, r.output


def test_adamw8bit_without_bitsandbytes_is_a_clear_error(tmp_path, tiny_model, scene_files, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("no bitsandbytes")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    proj = make_project(tmp_path, tiny_model, scene_files)
    r = cf("learn", proj, "--em-steps", "1", "--optimizer", "adamw8bit", "-q")
    assert r.exit_code == 2 and "bitsandbytes" in r.output


def test_learn_many_projects_continues_past_a_failure(tmp_path, tiny_model, scene_files):
    good = make_project(tmp_path, tiny_model, scene_files)
    r = cf("learn", tmp_path / "missing", good, "--em-steps", "1", "--joint-steps", "0", "--json")
    assert r.exit_code == 2
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [x["ok"] for x in lines] == [False, True]
    assert lines[0]["exit_code"] == 2 and "does not exist" in lines[0]["error"]
