"""`conceptforge export`: diffusers, a1111 and kohya layouts of a learned project."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cli_helpers import cf, learned_project, make_project, tree_digest

KOHYA_KEY = re.compile(r"^lora_unet_[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")
TOKENS = ("v1", "v2", "v3")


@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny_model):
    """One project learned once (2 EM + 2 joint steps) for every test of this module."""
    return learned_project(tmp_path_factory.mktemp("export"), tiny_model)


def _export(proj, fmt, out):
    r = cf("export", proj, "--format", fmt, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _stock(model):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None)


def _unet_out(pipe, states):
    gen = torch.Generator().manual_seed(0)
    z, t = torch.randn(1, 4, 16, 16, generator=gen), torch.tensor([300])
    with torch.no_grad():
        return pipe.unet(z, t, encoder_hidden_states=states).sample


def _lora_modules(keys, down_suffix):
    return {k[: -len(down_suffix)] for k in keys if k.endswith(down_suffix)}


def test_diffusers_export_loads_in_stock_diffusers(learned, tiny_model, tmp_path):
    from conceptforge.engine.backbone import resolve_source
    from conceptforge.engine.generate import load_concept_pipeline

    out = tmp_path / "diffusers"
    report = _export(learned, "diffusers", out)
    names = sorted(p.rsplit("/", 1)[-1] for p in report["files"])
    assert names == sorted([f"{t}.safetensors" for t in TOKENS] + ["pytorch_lora_weights.safetensors"])
    for name in names:  # byte copies of the project's concept files
        assert (out / name).read_bytes() == (learned / "concepts" / name).read_bytes()

    stock = _stock(tiny_model)
    for tok in TOKENS:
        stock.load_textual_inversion(str(out / f"{tok}.safetensors"))
    stock.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    ours, _ = load_concept_pipeline(resolve_source(str(tiny_model)), learned / "concepts", torch.device("cpu"))

    prompt = "a photo of <v1> and <v2> on <v3>"
    with torch.no_grad():
        a = stock.text_encoder(stock.tokenizer(prompt, return_tensors="pt").input_ids)[0]
        b = ours.text_encoder(ours.tokenizer(prompt, return_tensors="pt").input_ids)[0]
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(_unet_out(stock, a), _unet_out(ours, b), atol=1e-5)


def _check_embeddings(out, concepts):
    for tok in TOKENS:
        data = load_file(str(out / f"{tok}.safetensors"))
        assert list(data) == ["emb_params"]
        ours = load_file(str(concepts / f"{tok}.safetensors"))[f"<{tok}>"]
        assert data["emb_params"].shape == ours.shape == (1, ours.shape[-1])
        assert torch.equal(data["emb_params"], ours.float())


def _check_kohya_lora(path, diffusers_lora):
    kohya = load_file(str(path))
    assert all(KOHYA_KEY.match(k) for k in kohya), [k for k in kohya if not KOHYA_KEY.match(k)][:3]
    source = load_file(str(diffusers_lora))
    downs = _lora_modules(kohya, ".lora_down.weight")
    ups = _lora_modules(kohya, ".lora_up.weight")
    alphas = _lora_modules(kohya, ".alpha")
    assert downs == ups == alphas
    assert len(kohya) == 3 * len(downs)
    assert len(downs) == len(_lora_modules(source, ".lora.down.weight")) > 0
    for key, tensor in source.items():  # same matrices under the converted names
        module, kind = re.match(r"^unet\.(.+)\.lora\.(down|up)\.weight$", key).groups()
        name = "lora_unet_" + module.replace(".", "_")
        assert torch.equal(kohya[f"{name}.lora_{kind}.weight"], tensor)
    for name in downs:
        down, up, alpha = kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"], kohya[f"{name}.alpha"]
        assert down.dim() == 2 and up.dim() == 2 and up.shape[1] == down.shape[0]
        assert alpha.shape == () and alpha.item() == down.shape[0]  # alpha = rank: scale 1, as trained
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in kohya
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_up.weight" in kohya


def test_a1111_layout_and_stock_loading(learned, tiny_model, tmp_path):
    out = tmp_path / "a1111"
    report = _export(learned, "a1111", out)
    concepts = learned / "concepts"
    assert sorted(p.rsplit("/", 1)[-1] for p in report["files"]) == sorted([f"{t}.safetensors" for t in TOKENS] + ["proj_lora.safetensors"])
    _check_embeddings(out, concepts)
    _check_kohya_lora(out / "proj_lora.safetensors", concepts / "pytorch_lora_weights.safetensors")

    # stock diffusers reads both files too (kohya LoRA keys are converted on load)
    reference = _stock(tiny_model)
    reference.load_lora_weights(str(concepts), weight_name="pytorch_lora_weights.safetensors")
    converted = _stock(tiny_model)
    converted.load_lora_weights(str(out), weight_name="proj_lora.safetensors")
    converted.load_textual_inversion(str(out / "v1.safetensors"), token="<v1>")
    states = torch.randn(1, 24, 32, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(_unet_out(reference, states), _unet_out(converted, states), atol=1e-6)
    emb = converted.text_encoder.get_input_embeddings().weight[converted.tokenizer.convert_tokens_to_ids("<v1>")]
    assert torch.allclose(emb, load_file(str(concepts / "v1.safetensors"))["<v1>"][0])


def test_kohya_layout_with_images_and_masks(learned, tmp_path):
    from conceptforge.engine.runs import find_run
    from conceptforge.project import Project

    out = tmp_path / "kohya"
    report = _export(learned, "kohya", out)
    assert report["notes"] == []
    concepts = learned / "concepts"
    _check_embeddings(out, concepts)
    _check_kohya_lora(out / "proj_lora.safetensors", concepts / "pytorch_lora_weights.safetensors")

    project = Project.load(learned)
    run = find_run(project.runs_dir, None)
    last = run.iteration_dir(run.iterations()[-1])
    images = sorted(p.name for p in (out / "images").iterdir())
    # the images only (no GT masks), each with its caption
    assert images == sorted([im.file for im in project.images] + [f"{im.stem}.txt" for im in project.images])
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted([im.stem for im in project.images] + [f"{im.stem}.png" for im in project.images])
    captions = {im.stem: (out / "images" / f"{im.stem}.txt").read_text() for im in project.images}
    assert captions == {"first": "a photo of <v1> and <v2>\n", "second": "a photo of <v3>\n"}  # training prompts
    for im in project.images:
        assert (out / "images" / im.file).read_bytes() == (project.images_dir / im.file).read_bytes()
        with Image.open(out / "masks" / f"{im.stem}.png") as mask, Image.open(project.images_dir / im.file) as picture:
            assert mask.mode == "L" and mask.size == picture.size
            pixels = np.asarray(mask)
        assert set(np.unique(pixels)) <= {0, 255} and pixels.any()
        union = np.zeros_like(pixels, dtype=bool)
        assert sorted(p.name for p in (out / "masks" / im.stem).iterdir()) == sorted(f"{c.name}.png" for c in im.concepts)
        for c in im.concepts:
            own = np.asarray(Image.open(last / im.stem / f"{c.name}.png").convert("L")) > 127
            with Image.open(out / "masks" / im.stem / f"{c.name}.png") as exported:
                assert exported.mode == "L" and np.array_equal(np.asarray(exported) == 255, own)  # one mask per concept
            union |= own
        assert np.array_equal(pixels == 255, union)


def test_default_out_folder_and_plain_output(learned):
    r = cf("export", learned, "--format", "diffusers", "--quiet")
    assert r.exit_code == 0, r.output
    out = learned / "export" / "diffusers"
    listed = r.output.split()
    assert str(out / "v1.safetensors") in listed
    assert all((learned / "export" / "diffusers" / f"{t}.safetensors").is_file() for t in TOKENS)


def _refused(proj, *args, needle):
    before = tree_digest(proj)
    r = cf(*args)
    assert r.exit_code == 2, r.output
    assert needle.lower() in r.output.lower(), r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) <= 3
    assert tree_digest(proj) == before


def test_no_learned_concepts_is_refused(tmp_path, tiny_model, scene_files):
    proj = make_project(tmp_path, tiny_model, scene_files)
    for fmt in ("diffusers", "a1111", "kohya"):
        _refused(proj, "export", proj, "--format", fmt, needle="no learned concepts")
    assert not (proj / "export").exists()


def test_out_that_is_a_file_and_unknown_format_are_refused(learned, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    _refused(learned, "export", learned, "--format", "kohya", "--out", blocker, needle="not a folder")
    _refused(learned, "export", learned, "--format", "kohya", "--out", blocker / "sub", needle="not a folder")
    assert blocker.read_text() == "not a folder"
    _refused(learned, "export", learned, "--format", "onnx", "--out", tmp_path / "x", needle="not one of")
    assert not (tmp_path / "x").exists()


def test_peft_keys_convert_too():
    from conceptforge.engine.interop import lora_to_kohya

    down, up = torch.randn(8, 16), torch.randn(16, 8)
    out = lora_to_kohya({"unet.mid_block.attentions.0.proj.lora_A.weight": down, "unet.mid_block.attentions.0.proj.lora_B.weight": up}, scale=0.5)
    name = "lora_unet_mid_block_attentions_0_proj"
    assert set(out) == {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"}
    assert torch.equal(out[f"{name}.lora_down.weight"], down) and out[f"{name}.alpha"].item() == 4.0
