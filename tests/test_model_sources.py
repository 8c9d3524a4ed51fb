"""Model sources beyond the built-in model: single-file LDM checkpoints (SD 1.x and 2.x layouts)
loaded offline with --model-config, and an SD 2.x-like (v-prediction) diffusers folder."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from PIL import Image

from cli_helpers import FAST_SETTINGS, cf, tree_digest
from ldm_checkpoint import config_folder, write_ldm_checkpoint

PROMPT = "a photo of dog and cat on the beach"


@pytest.fixture(scope="module")
def single_files(tmp_path_factory, tiny_model, tiny_model_sd21):
    """flavor -> (diffusers folder, config-only copy of it, {suffix: LDM checkpoint})."""
    root = tmp_path_factory.mktemp("single-file")
    out = {}
    for flavor, folder in (("sd15", tiny_model), ("sd21", tiny_model_sd21)):
        cfg = config_folder(folder, root / f"{flavor}-configs")
        files = {suffix: write_ldm_checkpoint(folder, root / f"{flavor}{suffix}") for suffix in (".safetensors", ".ckpt")}
        out[flavor] = (folder, cfg, files)
    return out


@pytest.fixture
def offline(monkeypatch):
    """The hub is off, whatever the environment says."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _keys(path):
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return set(f.keys())
    return set(torch.load(str(path), weights_only=True)["state_dict"])


def test_checkpoints_have_the_ldm_layout(single_files):
    for flavor, text_prefix in (("sd15", "cond_stage_model.transformer.text_model."), ("sd21", "cond_stage_model.model.")):
        _, cfg, files = single_files[flavor]
        assert not [p for p in cfg.rglob("*") if p.suffix in (".safetensors", ".bin")]  # weights come only from the file
        for path in files.values():
            keys = _keys(path)
            prefixes = {k.split(".")[0] for k in keys}
            assert prefixes == {"model", "first_stage_model", "cond_stage_model", "betas", "alphas_cumprod"}
            assert "model.diffusion_model.input_blocks.0.0.weight" in keys
            assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
            assert any(k.startswith(text_prefix) for k in keys)
    assert "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight" in _keys(single_files["sd21"][2][".safetensors"])


@pytest.mark.parametrize("flavor,suffix", [("sd15", ".safetensors"), ("sd21", ".safetensors"), ("sd21", ".ckpt")])
def test_single_file_matches_its_folder(single_files, offline, flavor, suffix):
    from diffusers import StableDiffusionPipeline

    from conceptforge.engine.backbone import load_pipeline, load_tokenizer, resolve_source

    folder, cfg, files = single_files[flavor]
    source = resolve_source(str(files[suffix]), str(cfg))
    assert source.kind == "single_file" and source.config == cfg.resolve()
    ours = load_pipeline(source)
    ref = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)

    assert load_tokenizer(source).get_vocab() == ref.tokenizer.get_vocab() == ours.tokenizer.get_vocab()
    assert ours.scheduler.config.prediction_type == ("v_prediction" if flavor == "sd21" else "epsilon")
    assert ours.unet.config.use_linear_projection == (flavor == "sd21")
    ids = ref.tokenizer(PROMPT, padding="max_length", max_length=ref.tokenizer.model_max_length, return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor([500])
    with torch.no_grad():
        text_ref, text_ours = ref.text_encoder(ids)[0], ours.text_encoder(ids)[0]
        assert text_ours.shape[-1] == (48 if flavor == "sd21" else 32)
        assert torch.allclose(text_ours, text_ref, atol=1e-6)
        eps_ref = ref.unet(z, t, encoder_hidden_states=text_ref).sample
        assert torch.allclose(ours.unet(z, t, encoder_hidden_states=text_ref).sample, eps_ref, atol=1e-6)
        assert torch.allclose(ours.vae.decode(z).sample, ref.vae.decode(z).sample, atol=1e-6)


def _project(root, files, *init_args):
    """init with init_args, then three concepts over two images, with fast learn settings."""
    proj = root / "proj"
    r = cf("init", proj, *init_args, "-q")
    assert r.exit_code == 0, r.output
    for args in (
        (files["a"], "--token", "<v1>", "--init", "dog", "--gt-mask", files["a0"]),
        (files["a"], "--token", "<v2>", "--init", "cat"),
        (files["b"], "--token", "<v3>", "--background", "--init", "background"),
    ):
        r = cf("add-concept", proj, *args, "-q")
        assert r.exit_code == 0, r.output
    manifest = proj / "conceptforge.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["settings"] = dict(FAST_SETTINGS)
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    return proj


def _learn_and_generate(proj, out):
    r = cf("learn", proj, "--em-steps", "2", "--joint-steps", "1", "-q")
    assert r.exit_code == 0, r.output
    (run,) = [p for p in (proj / "runs").iterdir() if p.is_dir()]
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "step"]
    assert [(r["phase"], r["step"]) for r in steps] == [("em", 1), ("em", 2), ("joint", 1)]
    assert all(math.isfinite(v) for s in steps for v in s.values() if isinstance(v, float))
    index = json.loads((proj / "concepts" / "concepts.json").read_text())
    assert index["tokens"] == ["<v1>", "<v2>", "<v3>"]
    r = cf("generate", proj, "a photo of <v1> on <v3>", "-n", "1", "--steps", "2", "--out", out, "-q")
    assert r.exit_code == 0, r.output
    pngs = list(out.glob("*.png"))
    assert len(pngs) == 1 and Image.open(pngs[0]).size == (32, 32)


def test_cli_flow_on_a_single_file(tmp_path, single_files, scene_files, offline):
    _, cfg, files = single_files["sd15"]
    proj = _project(tmp_path, scene_files, "--model", files[".safetensors"], "--model-config", cfg)
    data = yaml.safe_load((proj / "conceptforge.yaml").read_text())
    assert data["model"] == str(files[".safetensors"].resolve()) and data["model_config"] == str(cfg.resolve())
    _learn_and_generate(proj, tmp_path / "samples")


def test_learn_and_generate_on_an_sd21_folder(tmp_path, tiny_model_sd21, scene_files):
    proj = _project(tmp_path, scene_files, "--model", tiny_model_sd21)
    _learn_and_generate(proj, tmp_path / "samples")


def test_single_file_without_config_offline(tmp_path, single_files, scene_files, offline):
    folder, _, files = single_files["sd15"]
    ckpt = files[".safetensors"]

    def refused(*args):
        r = cf(*args)
        assert r.exit_code == 2, r.output
        assert "--model-config" in r.output and ckpt.name in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) <= 3  # one sentence, however rich wraps it
        return r

    # init refuses before writing anything
    refused("init", tmp_path / "new", "--model", ckpt)
    assert not (tmp_path / "new").exists()
    # a project made with the file elsewhere (online): learn and add-concept refuse, the project stays as it was
    proj = _project(tmp_path, scene_files, "--model", folder)
    manifest = proj / "conceptforge.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["model"], data["model_config"] = str(ckpt), None
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    before = tree_digest(proj)
    refused("learn", proj, "--em-steps", "1", "--joint-steps", "0", "-q")
    refused("add-concept", proj, scene_files["b"], "--token", "<v4>")
    refused("init", proj, "--force", "--model", ckpt)
    assert tree_digest(proj) == before


def test_bad_single_files(tmp_path, single_files, offline):
    from safetensors.torch import load_file, save_file

    from conceptforge.engine.backbone import load_pipeline, resolve_source
    from conceptforge.errors import InputError

    _, cfg15, files15 = single_files["sd15"]
    _, cfg21, files21 = single_files["sd21"]
    r = cf("init", tmp_path / "p", "--model", tmp_path / "missing.safetensors", "--model-config", cfg15)
    assert r.exit_code == 2 and "does not exist" in r.output and not (tmp_path / "p").exists()
    r = cf("init", tmp_path / "p", "--model", files15[".ckpt"], "--model-config", tmp_path)
    assert r.exit_code == 2 and "model_index.json" in r.output and not (tmp_path / "p").exists()

    # configs of another architecture, and a checkpoint without text-encoder weights: one-sentence input errors
    with pytest.raises(InputError, match="with the configs of .*shape"):
        load_pipeline(resolve_source(str(files21[".safetensors"]), str(cfg15)))
    unet_only = tmp_path / "unet-only.safetensors"
    save_file({k: v for k, v in load_file(str(files15[".safetensors"])).items() if not k.startswith("cond_stage_model.")}, str(unet_only))
    with pytest.raises(InputError, match="CLIPTextModel"):
        load_pipeline(resolve_source(str(unet_only), str(cfg15)))
