"""Stable Diffusion XL end to end on a tiny SDXL-configured model: family
detection, the conditioning the UNet reads, attention capture, learning with
two concepts, and exports that stock StableDiffusionXLPipeline loads."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from cli_helpers import FAST_SETTINGS, cf
from conftest import draw_scene
from tiny_sdxl import HIDDEN_1, HIDDEN_2, POOLED, build_tiny_sdxl

TOKENS = ("v1", "v2")
KOHYA_KEY = re.compile(r"^lora_unet_[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)$")
PROMPT = "a photo of <v1> and <v2> on the beach"

# diffusers' UNet config of stabilityai/stable-diffusion-xl-base-1.0 (the layout; weights are never made)
SDXL_BASE_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")


@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny_sdxl):
    """Two concepts on one image, learned once (4 EM + 2 joint LoRA steps)."""
    root = tmp_path_factory.mktemp("sdxl-project")
    image, (m0, m1) = draw_scene(root / "first.png", 1)
    proj = root / "proj"
    r = cf("init", proj, "--model", tiny_sdxl)
    assert r.exit_code == 0, r.output
    assert "Stable Diffusion XL" in r.output
    for token, init, mask in (("<v1>", "dog", m0), ("<v2>", "cat", m1)):
        r = cf("add-concept", proj, image, "--token", token, "--init", init, "--gt-mask", mask, "-q")
        assert r.exit_code == 0, r.output
    manifest = proj / "conceptforge.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["settings"] = dict(FAST_SETTINGS)
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    r = cf("learn", proj, "--em-steps", "4", "--joint-steps", "2", "-q")
    assert r.exit_code == 0, r.output
    return proj


def _stock(model):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(pipe, prompt=PROMPT):
    return pipe(prompt, num_inference_steps=3, guidance_scale=5.0, generator=torch.Generator().manual_seed(0), output_type="np").images


def _bundle(model, **settings):
    from conceptforge.engine.backbone import load_pipeline, resolve_source
    from conceptforge.engine.bundle import bundle_from_pipeline
    from conceptforge.engine.config import resolve_config

    cfg = resolve_config(False, {}, settings)
    pipe = load_pipeline(resolve_source(str(model)))
    return bundle_from_pipeline(pipe, False, ["<v1>", "<v2>"], {"<v1>": "dog", "<v2>": "cat"}, cfg, torch.device("cpu")), pipe


# --------------------------------------------------------------------------- the model family


def test_family_is_detected(tiny_sdxl, tiny_model, tmp_path):
    from conceptforge.engine.backbone import ModelSource, resolve_source
    from ldm_checkpoint import config_folder

    assert resolve_source(str(tiny_sdxl)).family == "sdxl"
    assert resolve_source(str(tiny_model)).family == "sd"
    assert resolve_source("builtin:tiny-shapes").family == "sd"
    # a single file takes its family from its config folder (no weights read)
    configs = config_folder(tiny_sdxl, tmp_path / "configs")
    assert (configs / "text_encoder_2").is_dir() and (configs / "tokenizer_2").is_dir()
    weights = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(1)}, str(weights))
    assert resolve_source(str(weights), str(configs)).family == "sdxl"
    assert resolve_source(str(weights), str(config_folder(tiny_model, tmp_path / "sd-configs"))).family == "sd"
    # without a config folder (online), a .safetensors file holding SDXL's second text encoder is SDXL
    xl_file = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.ones(4)}, str(xl_file))
    assert ModelSource(str(xl_file), "single_file", xl_file).family == "sdxl"
    assert ModelSource(str(weights), "single_file", weights).family == "sd"
    for name, key in (("xl.ckpt", "conditioner.embedders.1.model.ln_final.weight"), ("sd.ckpt", "cond_stage_model.model.ln_final.weight")):
        torch.save({"state_dict": {key: torch.ones(4)}}, str(tmp_path / name))
    assert ModelSource("xl.ckpt", "single_file", tmp_path / "xl.ckpt").family == "sdxl"
    assert ModelSource("sd.ckpt", "single_file", tmp_path / "sd.ckpt").family == "sd"
    r = cf("init", tmp_path / "sd", "--model", tiny_model)
    assert r.exit_code == 0 and "Stable Diffusion 1.x/2.x" in r.output


# --------------------------------------------------------------------------- attention


def test_attention_factors_of_the_sdxl_base_layout():
    """SDXL-base's UNet (built on the meta device): cross-attention at factors 2
    and 4 only; the default resolution 16 takes the 32x32 maps at 1024 px."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from conceptforge.engine.attention import capture_factor, cross_attention_factors

    with init_empty_weights():
        unet = UNet2DConditionModel(**SDXL_BASE_UNET)
    factors = cross_attention_factors(unet)
    assert not any(name.startswith("down_blocks.0.") for name in factors)
    assert sorted(set(factors.values())) == [2, 4]
    counts = {f: sum(v == f for v in factors.values()) for f in (2, 4)}
    assert counts == {2: 2 * 2 + 3 * 2, 4: 2 * 10 + 10 + 3 * 10}
    assert capture_factor(unet, 128, 16) == 4  # 1024 px: 32x32 maps
    assert capture_factor(unet, 128, 64) == 2  # attention_resolution 64: the 64x64 maps
    assert capture_factor(unet, 64, 16) == 4  # 512 px: 16x16 maps


def test_capture_on_sdxl_leaves_the_unet_output_unchanged(tiny_sdxl):
    from conceptforge.engine.attention import AttentionStore, capture_cross_attention, capture_factor, cross_attention_factors

    unet = _stock(tiny_sdxl).unet.eval()
    assert sorted(set(cross_attention_factors(unet).values())) == [2, 4]
    assert capture_factor(unet, 16, 16) == 2  # the tiny model's latent is 16: 8x8 maps
    gen = torch.Generator().manual_seed(0)
    z, t = torch.randn(2, 4, 16, 16, generator=gen), torch.tensor([10, 500])
    added = {"text_embeds": torch.randn(2, POOLED, generator=gen), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    ctx = torch.randn(2, 24, HIDDEN_1 + HIDDEN_2, generator=gen)
    with torch.no_grad():
        stock = unet(z, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        for factor, side in ((2, 8), (4, 4)):
            store = AttentionStore()
            store.token_index = torch.tensor([[1, 2], [3, 4]])
            with capture_cross_attention(unet, store, factor=factor):
                captured = unet(z, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
            assert torch.equal(stock, captured)
            maps = store.mean_maps(side, side)
            assert maps.shape == (2, 2, side, side) and torch.all(maps >= 0) and torch.all(maps <= 1)


# --------------------------------------------------------------------------- conditioning


def test_conditioning_is_the_stock_pipelines(tiny_sdxl):
    """Prompts.encode gives what StableDiffusionXLPipeline feeds its UNet: both
    encoders' penultimate states side by side, the pooled embedding, the size/crop ids."""
    from conceptforge.engine.data import Conditioning, Prompts

    model, pipe = _bundle(tiny_sdxl)
    assert model.family == "sdxl" and model.size == 32 and model.att == 8
    prompts = Prompts(model)
    with torch.no_grad():
        cond, positions = prompts.encode(["<v1>", "<v2>"], [False, False])
        hidden, _, pooled, _ = pipe.encode_prompt("a photo of <v1> and <v2>", device="cpu", do_classifier_free_guidance=False)
    ids = pipe.tokenizer("a photo of <v1> and <v2>").input_ids
    assert positions.tolist() == [[ids.index(model.token_ids["<v1>"]), ids.index(model.token_ids["<v2>"])]]
    assert cond.hidden.shape == (1, 24, HIDDEN_1 + HIDDEN_2) and torch.allclose(cond.hidden, hidden, atol=1e-6)
    assert torch.allclose(cond.added["text_embeds"], pooled, atol=1e-6) and pooled.shape == (1, POOLED)
    time_ids = pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), dtype=torch.float32, text_encoder_projection_dim=POOLED)
    assert torch.equal(cond.added["time_ids"], time_ids)
    # new tokens start as their init words in both encoders
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        table = encoder.get_input_embeddings().weight
        assert torch.equal(table[tokenizer.convert_tokens_to_ids("<v1>")], table[tokenizer.convert_tokens_to_ids("dog</w>")])
    both = Conditioning.cat([cond, cond.repeat(2)])
    assert both.hidden.shape[0] == 3 and both.added["time_ids"].shape == (3, 6) and both.added["text_embeds"].shape == (3, POOLED)
    kwargs = cond.expand(4).unet_kwargs()
    assert set(kwargs) == {"encoder_hidden_states", "added_cond_kwargs"} and kwargs["added_cond_kwargs"]["time_ids"].shape == (4, 6)


@pytest.mark.parametrize(
    "settings", [{"gradient_checkpointing": True}, {"mixed_precision": "bf16"}, {"mixed_precision": "fp16"}, {"gradient_checkpointing": True, "mixed_precision": "bf16"}]
)
def test_memory_options_train_both_encoders_rows(tiny_sdxl, settings, tmp_path):
    from conceptforge.engine.checkpoint import load_checkpoint, save_checkpoint
    from conceptforge.engine.trainer import Trainer

    model, _ = _bundle(tiny_sdxl, **settings)
    assert len(model.concept_parameters) == 2 and model.text_encoder_2.is_gradient_checkpointing == bool(settings.get("gradient_checkpointing"))
    images = [_image_data(model)]
    cfg = resolve(settings)
    trainer = Trainer(model, images, cfg)
    trainer.estep_result = _whole_masks(model)
    for phase in ("em", "joint"):  # tokens, then tokens + LoRA
        trainer.make_optimizer(phase)
        before = [p.detach().clone() for p in model.concept_parameters]
        losses = trainer.train_step()
        assert math.isfinite(losses["loss"])
        assert all(not torch.equal(b, p) for b, p in zip(before, model.concept_parameters))
    trainer.phase = "joint"
    save_checkpoint(tmp_path, trainer.state_dict())  # through the checkpoint file, as a resumed run reads it
    state = load_checkpoint(tmp_path)
    assert state["rows_2"].shape == (2, HIDDEN_2) and torch.equal(state["rows_2"], model.rows_2.rows.detach())
    with torch.no_grad():
        model.rows_2.rows.zero_()
    trainer.restore(state)
    assert torch.equal(model.rows_2.rows.detach(), state["rows_2"])


def resolve(settings):
    from conceptforge.engine.config import resolve_config

    return resolve_config(False, {}, dict(FAST_SETTINGS, em_steps=4, joint_steps=2, **settings))


def _image_data(model):
    from conceptforge.engine.data import ImageData, encode_image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (model.size, model.size, 3), dtype=np.uint8)
    return ImageData(
        stem="x", file="x.png", tokens=["<v1>", "<v2>"], background=[False, False], inits=["dog", "cat"], rgb=rgb,
        original_size=(model.size, model.size), latents={f: encode_image(model, rgb[:, ::-1] if f else rgb) for f in (False, True)},
        gt=[None, None],
    )


def _whole_masks(model):
    from conceptforge.engine.estep import EStepResult

    half = np.zeros((model.size, model.size), dtype=bool)
    half[:, : model.size // 2] = True
    return EStepResult(0, {(0, "<v1>"): half, (0, "<v2>"): ~half}, {})


def test_estep_signals_at_sdxl_resolution(tiny_sdxl):
    from conceptforge.engine.estep import MaskEstimator

    model, _ = _bundle(tiny_sdxl)
    estimator = MaskEstimator(model, [_image_data(model)], resolve({}))
    attention = estimator.attention_maps(0, 3, seed=0)
    assert attention.shape == (2, 8, 8) and np.isfinite(attention).all()
    gain, att = estimator.error_maps(0, 3, seed=0, use_init=True)
    assert gain.shape == (2, 16, 16) and att.shape == (2, 8, 8) and np.isfinite(gain).all() and np.isfinite(att).all()
    result = estimator.estimate(0)
    assert {k: m.shape for k, m in result.masks.items()} == {(0, "<v1>"): (32, 32), (0, "<v2>"): (32, 32)}


# --------------------------------------------------------------------------- learning and exports


def test_learn_writes_masks_and_sdxl_concept_files(learned):
    (run,) = [p for p in (learned / "runs").iterdir() if p.is_dir()]
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert [(r["phase"], r["step"]) for r in steps] == [("em", 1), ("em", 2), ("em", 3), ("em", 4), ("joint", 1), ("joint", 2)]
    assert all(math.isfinite(v) for s in steps for v in s.values() if isinstance(v, float))
    iterations = sorted(p.name for p in (run / "masks").iterdir())
    assert len(iterations) >= 2
    for it in iterations:
        for tok in TOKENS:
            with Image.open(run / "masks" / it / "first" / f"{tok}.png") as mask:
                assert mask.size == (32, 32)
    concepts = learned / "concepts"
    assert json.loads((concepts / "concepts.json").read_text())["tokens"] == ["<v1>", "<v2>"]
    for tok in TOKENS:
        data = load_file(str(concepts / f"{tok}.safetensors"))
        assert {k: tuple(v.shape) for k, v in data.items()} == {"clip_l": (1, HIDDEN_1), "clip_g": (1, HIDDEN_2)}
    lora = load_file(str(concepts / "pytorch_lora_weights.safetensors"))
    assert lora and all(k.startswith("unet.") for k in lora)
    for args in (("masks", learned, "--json"), ("evaluate", learned, "--json", "-n", "2", "--steps", "2"), ("report", learned, "-q")):
        r = cf(*args)
        assert r.exit_code == 0, r.output


def test_generate_uses_the_sdxl_pipeline(learned, tmp_path):
    r = cf("generate", learned, "a photo of <v1> and <v2>", "-n", "1", "--steps", "2", "--out", tmp_path, "-q")
    assert r.exit_code == 0, r.output
    (png,) = tmp_path.glob("*.png")
    assert Image.open(png).size == (32, 32)


def _export(proj, fmt, out):
    r = cf("export", proj, "--format", fmt, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_diffusers_export_loads_in_stock_sdxl_pipeline(learned, tiny_sdxl, tmp_path):
    from conceptforge.engine.backbone import resolve_source
    from conceptforge.engine.generate import load_concept_pipeline

    out = tmp_path / "diffusers"
    report = _export(learned, "diffusers", out)
    assert sorted(p.rsplit("/", 1)[-1] for p in report["files"]) == ["pytorch_lora_weights.safetensors", "v1.safetensors", "v2.safetensors"]
    stock = _stock(tiny_sdxl)
    for tok in TOKENS:  # the stock way for SDXL embeddings: one call per text encoder
        state = load_file(str(out / f"{tok}.safetensors"))
        stock.load_textual_inversion(state["clip_l"], token=f"<{tok}>", text_encoder=stock.text_encoder, tokenizer=stock.tokenizer)
        stock.load_textual_inversion(state["clip_g"], token=f"<{tok}>", text_encoder=stock.text_encoder_2, tokenizer=stock.tokenizer_2)
    stock.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    ours, _ = load_concept_pipeline(resolve_source(str(tiny_sdxl)), learned / "concepts", torch.device("cpu"))
    ours.set_progress_bar_config(disable=True)
    assert type(ours).__name__ == "StableDiffusionXLPipeline"
    a, b = _images(stock), _images(ours)
    assert np.allclose(a, b, atol=1e-5)
    plain = _stock(tiny_sdxl)  # the learned concepts and LoRA change the output
    plain.load_textual_inversion(load_file(str(out / "v1.safetensors"))["clip_l"], token="<v1>", text_encoder=plain.text_encoder, tokenizer=plain.tokenizer)
    plain.load_textual_inversion(load_file(str(out / "v1.safetensors"))["clip_g"], token="<v1>", text_encoder=plain.text_encoder_2, tokenizer=plain.tokenizer_2)
    assert not np.allclose(_images(plain, "a photo of <v1>"), _images(ours, "a photo of <v1>"), atol=1e-5)


def _check_kohya_lora(path, diffusers_lora):
    """kohya-ss's SDXL names: the original UNet's (input_blocks, middle_block, output_blocks)."""
    from conceptforge.engine.interop import sgm_module_name

    kohya = load_file(str(path))
    assert kohya and all(KOHYA_KEY.match(k) for k in kohya), [k for k in kohya if not KOHYA_KEY.match(k)][:3]
    source = load_file(str(diffusers_lora))
    assert len(kohya) == 3 * len(source) // 2
    for key, tensor in source.items():
        module, kind = re.match(r"^unet\.(.+)\.lora\.(down|up)\.weight$", key).groups()
        assert torch.equal(kohya[f"lora_unet_{sgm_module_name(module, 1).replace('.', '_')}.lora_{kind}.weight"], tensor)
    # the tiny UNet has one layer per block: its level 1 starts at input block 3
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k.lora_down.weight" in kohya
    assert "lora_unet_middle_block_1_transformer_blocks_1_attn1_to_out_0.lora_up.weight" in kohya
    assert "lora_unet_output_blocks_0_1_transformer_blocks_1_attn2_to_v.alpha" in kohya
    assert not any(part in k for k in kohya for part in ("down_blocks", "mid_block", "up_blocks"))


def test_sgm_names_of_the_sdxl_base_layout():
    from conceptforge.engine.interop import sgm_module_name

    rest = "transformer_blocks.0.attn1.to_q"
    names = {m: sgm_module_name(f"{m}.{rest}", 2).removesuffix("." + rest) for m in (
        "down_blocks.1.attentions.0", "down_blocks.1.attentions.1", "down_blocks.2.attentions.0", "down_blocks.2.attentions.1",
        "mid_block.attentions.0", "up_blocks.0.attentions.0", "up_blocks.0.attentions.2", "up_blocks.1.attentions.0", "up_blocks.1.attentions.2",
    )}
    assert list(names.values()) == [
        "input_blocks.4.1", "input_blocks.5.1", "input_blocks.7.1", "input_blocks.8.1", "middle_block.1",
        "output_blocks.0.1", "output_blocks.2.1", "output_blocks.3.1", "output_blocks.5.1",
    ]


@pytest.mark.parametrize("fmt", ["a1111", "kohya"])
def test_a1111_and_kohya_exports(learned, tiny_sdxl, tmp_path, fmt):
    out = tmp_path / fmt
    report = _export(learned, fmt, out)
    concepts = learned / "concepts"
    names = {p.rsplit("/", 1)[-1] for p in report["files"]}
    assert {"v1.safetensors", "v2.safetensors", "proj_lora.safetensors"} <= names
    for tok in TOKENS:  # the SDXL embedding layout A1111 and ComfyUI read
        data, ours = load_file(str(out / f"{tok}.safetensors")), load_file(str(concepts / f"{tok}.safetensors"))
        assert sorted(data) == ["clip_g", "clip_l"] and all(torch.equal(data[k], ours[k]) for k in data)
    _check_kohya_lora(out / "proj_lora.safetensors", concepts / "pytorch_lora_weights.safetensors")
    if fmt == "kohya":
        assert (out / "images" / "first.txt").read_text() == "a photo of <v1> and <v2>\n"
        assert sorted(p.name for p in (out / "masks" / "first").iterdir()) == ["v1.png", "v2.png"]
        return
    # stock diffusers reads the kohya-named (SGM) LoRA into the same UNet
    reference, converted = _stock(tiny_sdxl), _stock(tiny_sdxl)
    reference.load_lora_weights(str(concepts), weight_name="pytorch_lora_weights.safetensors")
    converted.load_lora_weights(str(out), weight_name="proj_lora.safetensors")
    gen = torch.Generator().manual_seed(1)
    z, ctx = torch.randn(1, 4, 16, 16, generator=gen), torch.randn(1, 24, HIDDEN_1 + HIDDEN_2, generator=gen)
    added = {"text_embeds": torch.randn(1, POOLED, generator=gen), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]])}
    with torch.no_grad():
        a = reference.unet(z, torch.tensor([300]), encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        b = converted.unet(z, torch.tensor([300]), encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        plain = _stock(tiny_sdxl).unet(z, torch.tensor([300]), encoder_hidden_states=ctx, added_cond_kwargs=added).sample
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, plain, atol=1e-6)


def test_concepts_of_the_other_family_are_refused(learned, tiny_sdxl, tiny_model, tmp_path):
    from conceptforge.engine.backbone import load_pipeline, resolve_source
    from conceptforge.engine.tokens import install_pipeline_concepts, load_concept_files
    from conceptforge.errors import InputError

    files = {f"<{t}>": learned / "concepts" / f"{t}.safetensors" for t in TOKENS}
    xl = load_concept_files(files)
    with pytest.raises(InputError, match="learned on an SDXL model"):
        install_pipeline_concepts(load_pipeline(resolve_source(str(tiny_model))), xl, files)
    sd_file = tmp_path / "v1.safetensors"
    save_file({"<v1>": torch.zeros(1, HIDDEN_1)}, str(sd_file))
    with pytest.raises(InputError, match="learned on an SD 1.x/2.x model"):
        install_pipeline_concepts(_stock(tiny_sdxl), load_concept_files({"<v1>": sd_file}), {"<v1>": sd_file})
    sd_file_2 = tmp_path / "v2.safetensors"
    save_file({"<v2>": torch.zeros(1, HIDDEN_1)}, str(sd_file_2))
    with pytest.raises(InputError, match="not learned on one model"):
        load_concept_files({"<v1>": files["<v1>"], "<v2>": sd_file_2})


def test_single_file_sdxl_with_a_config_folder(tiny_sdxl, tmp_path, monkeypatch):
    """An SDXL single-file checkpoint loads offline with --model-config: same
    weights as its folder, reported as SDXL by init, learned and sampled from."""
    from huggingface_hub import constants

    from conceptforge.engine.backbone import load_pipeline, resolve_source
    from ldm_checkpoint import config_folder
    from tiny_sdxl import write_sdxl_checkpoint

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    configs = config_folder(tiny_sdxl, tmp_path / "configs")
    weights = write_sdxl_checkpoint(tiny_sdxl, tmp_path / "tiny-sdxl.safetensors")
    source = resolve_source(str(weights), str(configs))
    assert source.family == "sdxl"
    ours, ref = load_pipeline(source), _stock(tiny_sdxl)
    assert type(ours).__name__ == "StableDiffusionXLPipeline"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(ours, name).state_dict(), getattr(ref, name).state_dict()
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in b), name

    image, _ = draw_scene(tmp_path / "first.png", 3)
    proj = tmp_path / "proj"
    r = cf("init", proj, "--model", weights, "--model-config", configs)
    assert r.exit_code == 0 and "Stable Diffusion XL" in r.output, r.output
    for token, init in (("<v1>", "dog"), ("<v2>", "cat")):
        assert cf("add-concept", proj, image, "--token", token, "--init", init, "-q").exit_code == 0
    manifest = proj / "conceptforge.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["settings"] = dict(FAST_SETTINGS)
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    r = cf("learn", proj, "--em-steps", "2", "--joint-steps", "1", "-q")
    assert r.exit_code == 0, r.output
    assert sorted(load_file(str(proj / "concepts" / "v1.safetensors"))) == ["clip_g", "clip_l"]
    r = cf("generate", proj, "a photo of <v1> and <v2>", "-n", "1", "--steps", "2", "--out", tmp_path / "samples", "-q")
    assert r.exit_code == 0, r.output
