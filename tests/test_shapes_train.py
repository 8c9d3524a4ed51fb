"""The built-in model's training recipe: its stages give the learning rates the
shipped model was trained with, it runs end to end from its recipe file, an
interrupted run ends with the same weights as an uninterrupted one, the old
flags still work, and nothing it reads from disk can run code."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from conceptforge.engine.checkpoint import read_state
from conceptforge.errors import CheckpointError
from conceptforge.shapes import MODEL_DIR
from conceptforge.shapes.data import attention_targets, drop_color_words
from conceptforge.shapes.stages import RECIPE_FILE, RecipeError, load_recipe, recipe_from_dict, scaled
from conceptforge.shapes.train import cli, main, parse_args, resolve_recipe
from conceptforge.shapes.world import COLORS, sample_scene

RECORD = json.loads((MODEL_DIR / "training.json").read_text())
WEIGHTS = ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"]


@pytest.fixture
def no_pickles(monkeypatch):
    """Training must neither write nor read a pickle."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.save / torch.load called")

    monkeypatch.setattr(torch, "save", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def _close(got: float, recorded: float) -> bool:
    """Within 2%, or within the rounding of the recorded figure (1.2e-4 stands for 1.15e-4 to 1.25e-4)."""
    exponent = math.floor(math.log10(recorded))
    digits = len(f"{recorded:e}".split("e")[0].rstrip("0").replace(".", "")) - 1  # digits after the first
    half_unit = 0.5 * 10 ** (exponent - digits)
    return abs(got - recorded) <= max(0.02 * recorded, half_unit * (1 + 1e-9))


def test_staged_learning_rates_are_the_ones_training_json_records():
    unet = load_recipe(RECIPE_FILE).unet
    s = {st.start: st for st in unet.stages}
    # training.json, unet_and_text_encoder.schedule: "8000-16000: resumed with --unet-steps 16000
    # (lr 2.7e-4 at 8100 falling to 5e-5 at 16000); 16000-18000: resumed with --unet-steps 24000
    # (lr 1.6e-4 falling to 1.2e-4); ... 21000-26000: ... (lr ... falling to 5e-5); 26000-29000:
    # resumed with --unet-steps 29000 (lr 6.2e-5 falling to 5e-5)"
    recorded = [
        (s[0], 8000, 5e-5),  # the first run's cosine over 8000 ends at the floor, 0.1 x 5e-4
        (s[8000], 8100, 2.7e-4),
        (s[8000], 16000, 5e-5),
        (s[16000], 16000, 1.6e-4),
        (s[16000], 18000, 1.2e-4),
        (s[21000], 26000, 5e-5),
        (s[26000], 26000, 6.2e-5),
        (s[26000], 29000, 5e-5),
    ]
    for stage, step, lr in recorded:
        got = unet.lr_in(stage, step)
        assert _close(got, lr), (stage.start, step, got, lr)
    # Inside the stages, lr_at picks the stage that trains the step.
    assert unet.lr_at(8100) == unet.lr_in(s[8000], 8100)
    assert unet.lr_at(16000) == unet.lr_in(s[16000], 16000) and unet.lr_at(15999) == unet.lr_in(s[8000], 15999)
    # Colour dropout changes nothing in the schedule at 18000: the same cosine over 24000 runs on.
    assert s[18000].cosine_over == s[16000].cosine_over == 24000
    assert math.isclose(unet.lr_at(18000), unet.lr_in(s[16000], 18000), rel_tol=1e-12)
    # The warm-up (500 steps) starts the first stage: (step + 1) / 500 of the cosine's value.
    assert math.isclose(unet.lr_at(0), 5e-4 / 500 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0))), rel_tol=1e-12)
    # At 21000 the recorded flags and resume steps give 6.7e-5 (end of the cosine over 24000) and
    # 9.0e-5 (start of the cosine over 26000); the record's "to 8e-5" and "8.3e-5" are not these
    # (8e-5 is that cosine at 20000, 8.3e-5 the cosine over 26000 at 21500).
    assert _close(unet.lr_in(s[18000], 21000), 6.7e-5) and _close(unet.lr_in(s[21000], 21000), 9.0e-5)


def test_the_recipe_file_is_the_recorded_one():
    recipe = load_recipe(RECIPE_FILE)
    unet, record = recipe.unet, RECORD["unet_and_text_encoder"]
    assert recipe.seed == RECORD["seed"] and recipe.threads == 1  # "--threads 1" in the record
    assert unet.steps == record["steps"] == 29000
    assert (unet.batch, unet.lr, unet.attn_weight, unet.caption_dropout, unet.scenes) == (
        record["batch"], record["lr"], record["attn_weight"], record["caption_dropout"], record["scenes"])
    assert [(s.start, s.end, s.cosine_over, s.color_dropout) for s in unet.stages] == [
        (0, 8000, 8000, 0.0), (8000, 16000, 16000, 0.0), (16000, 18000, 24000, 0.0),
        (18000, 21000, 24000, 0.3), (21000, 26000, 26000, 0.3), (26000, 29000, 29000, 0.3)]
    vae, decoder = recipe.vae, recipe.decoder
    assert (vae.steps, vae.batch, vae.sample_steps, vae.scenes) == tuple(RECORD["vae"][k] for k in ("steps", "batch", "posterior_sample_steps", "scenes"))
    assert (decoder.steps, decoder.batch) == (RECORD["decoder_finetune"]["steps"], RECORD["decoder_finetune"]["batch"])
    assert recipe_from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    # --scale shrinks every stage and keeps them all.
    tiny = scaled(recipe, 0.001)
    assert [(s.start, s.end) for s in tiny.unet.stages] == [(0, 8), (8, 16), (16, 18), (18, 21), (21, 26), (26, 29)]
    assert tiny.vae.steps == 2 and tiny.decoder.steps == 7 and tiny.unet.stages[3].color_dropout == 0.3


def test_old_flags_make_a_custom_recipe():
    base = load_recipe(RECIPE_FILE)
    assert resolve_recipe(parse_args(["--out", "x"])) == base
    custom = resolve_recipe(parse_args(["--out", "x", "--unet-steps", "16000", "--scenes", "100", "--lr", "1e-4", "--threads", "2"]))
    assert [(s.start, s.end, s.cosine_over, s.color_dropout) for s in custom.unet.stages] == [(0, 16000, 16000, 0.0)]
    assert (custom.unet.scenes, custom.vae.scenes, custom.decoder.scenes, custom.unet.lr, custom.threads) == (100, 100, 100, 1e-4, 2)
    assert custom.vae.stages == base.vae.stages and custom.decoder.stages == base.decoder.stages
    dropout = resolve_recipe(parse_args(["--out", "x", "--color-dropout", "0.3", "--decoder-steps", "0", "--vae-steps", "10"]))
    assert [(s.start, s.end, s.color_dropout) for s in dropout.unet.stages] == [(0, 29000, 0.3)]
    assert dropout.decoder.stages == () and dropout.vae.steps == 10


def _write(path: Path, recipe: dict) -> Path:
    path.write_text(json.dumps(recipe))
    return path


def test_a_bad_recipe_is_one_sentence_naming_the_file(tmp_path):
    good = json.loads(RECIPE_FILE.read_text())
    gap = json.loads(json.dumps(good))
    gap["unet"]["stages"][1]["steps"] = [9000, 16000]
    short = json.loads(json.dumps(good))
    short["unet"]["stages"][2]["cosine_over"] = 17000
    unknown = json.loads(json.dumps(good))
    unknown["unet"]["stages"][0]["colour_dropout"] = 0.3
    for name, recipe, words in [("gap", gap, "starts at step 9000"), ("short", short, "past the end of its cosine"),
                                ("unknown", unknown, "unknown key unet.stages[0].colour_dropout")]:
        path = _write(tmp_path / f"{name}.json", recipe)
        with pytest.raises(RecipeError, match=re.escape(words)) as err:
            load_recipe(path)
        assert str(path) in str(err.value)
    (tmp_path / "broken.json").write_text("{")
    assert cli(["--out", str(tmp_path / "o"), "--recipe", str(tmp_path / "broken.json")]) == 2


def _tiny_recipe(path: Path, unet_stages: list | None = None) -> Path:
    """The shipped recipe with small batches and few scenes (its stages, or `unet_stages`)."""
    recipe = json.loads(RECIPE_FILE.read_text())
    for name in ("vae", "decoder", "unet"):
        recipe[name].update(batch=2, scenes=16)
    recipe["unet"]["checkpoint_every"] = 8
    if unet_stages is not None:
        recipe["unet"]["stages"] = unet_stages
    return _write(path, recipe)


def _same_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _same_weights(out_a: Path, out_b: Path) -> bool:
    for name in WEIGHTS:
        a, b = load_file(out_a / name), load_file(out_b / name)
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            return False
    return True


class _Killed(Exception):
    pass


def test_the_staged_recipe_resumed_anywhere_ends_with_the_same_weights(tmp_path, monkeypatch, no_pickles):
    recipe = _tiny_recipe(tmp_path / "tiny.json")
    # Every stage of the shipped recipe at 1/1000 of its steps: VAE 2, UNet 29 in six stages, decoder 7.
    args = ["--recipe", str(recipe), "--scale", "0.001", "--threads", "1"]
    a, b = tmp_path / "a", tmp_path / "b"
    main(["--out", str(a / "out"), "--work", str(a / "work"), *args])

    run_b = ["--out", str(b / "out"), "--work", str(b / "work"), *args]
    main([*run_b, "--max-steps", "1"])  # stops inside the VAE
    assert read_state(b / "work" / "vae.safetensors")["step"] == 1
    main([*run_b, "--max-steps", "12"])  # the VAE's last step, then 11 UNet steps: inside the second stage
    assert read_state(b / "work" / "unet.safetensors")["step"] == 11

    clip, calls = torch.nn.utils.clip_grad_norm_, []

    def killed_at_step_25(*args, **kwargs):  # UNet steps 11..25: killed inside step 25, one step after the checkpoint at 24
        calls.append(1)
        if len(calls) == 15:
            raise _Killed
        return clip(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", killed_at_step_25)
    with pytest.raises(_Killed):
        main(run_b)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    state = read_state(b / "work" / "unet.safetensors")
    assert state["step"] == 24 and state["stage"]["start"] == 21  # inside the fifth stage
    main([*run_b, "--max-steps", "8"])  # UNet 24..29, then 3 decoder steps
    assert read_state(b / "work" / "decoder.safetensors")["step"] == 3 and not (b / "out").exists()
    main(run_b)

    assert _same_weights(a / "out", b / "out")
    for name in ("vae", "unet", "decoder", "latents"):
        assert _same_state(read_state(a / "work" / f"{name}.safetensors"), read_state(b / "work" / f"{name}.safetensors")), name

    meta = json.loads((a / "out" / "training.json").read_text())
    assert [s["steps"] for s in meta["recipe"]["unet"]["stages"]] == [[0, 8], [8, 16], [16, 18], [18, 21], [21, 26], [26, 29]]
    pipe = StableDiffusionPipeline.from_pretrained(str(a / "out"), safety_checker=None)
    image = pipe("a red circle on a green background", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)
    assert len(pipe.tokenizer("red", add_special_tokens=False).input_ids) == 1


def test_old_flags_resumed_by_hand_train_what_the_staged_recipe_does(tmp_path, no_pickles):
    """`--unet-steps 4`, resumed with `--unet-steps 8`, resumed with `--unet-steps 12
    --color-dropout 0.3` (how the shipped model was trained) gives the weights of the
    recipe listing those three stages."""
    recipe = _tiny_recipe(tmp_path / "tiny.json")
    old = ["--out", str(tmp_path / "old"), "--work", str(tmp_path / "old_work"), "--recipe", str(recipe),
           "--vae-steps", "2", "--vae-sample-steps", "1", "--decoder-steps", "2", "--threads", "1"]
    main([*old, "--unet-steps", "4"])
    main([*old, "--unet-steps", "8"])
    last = [*old, "--unet-steps", "12", "--color-dropout", "0.3"]
    main(last)

    staged = _tiny_recipe(tmp_path / "staged.json", [
        {"steps": [0, 4], "cosine_over": 4, "color_dropout": 0.0},
        {"steps": [4, 8], "cosine_over": 8, "color_dropout": 0.0},
        {"steps": [8, 12], "cosine_over": 12, "color_dropout": 0.3},
    ])
    new = ["--out", str(tmp_path / "new"), "--work", str(tmp_path / "new_work"), "--recipe", str(staged),
           "--vae-steps", "2", "--vae-sample-steps", "1", "--decoder-steps", "2", "--threads", "1"]
    main(new)
    assert _same_weights(tmp_path / "old", tmp_path / "new")

    main(last)  # finished: a second run only exports, the same weights
    main([*new, "--export-only", "--out", str(tmp_path / "exported")])
    assert _same_weights(tmp_path / "old", tmp_path / "new") and _same_weights(tmp_path / "new", tmp_path / "exported")


def test_a_checkpoint_of_the_older_recipe_is_never_opened(tmp_path, no_pickles):
    work = tmp_path / "work"
    work.mkdir()
    (work / "vae.pt").write_bytes(b"\x80\x04not opened")
    args = ["--out", str(tmp_path / "o"), "--work", str(work), "--threads", "1"]
    with pytest.raises(CheckpointError, match="older version"):
        main(args)
    assert cli(args) == 2
    with pytest.raises(CheckpointError, match="no VAE checkpoint"):
        main([*args, "--work", str(tmp_path / "empty"), "--export-only"])


def _tracked(caption: str, index: np.ndarray, valid: np.ndarray) -> list[str]:
    words = caption.split()
    return [words[i - 1] for i, v in zip(index, valid) if v]


def test_colour_dropout_keeps_nouns_pointing_at_their_words():
    scene = next(s for s in map(sample_scene, range(1_000_000, 1_000_100)) if len(s.objects) == 3)
    index, _, valid = attention_targets(scene, 16)
    before = _tracked(scene.caption, index, valid)
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(20):
        caption, new_index, new_valid = drop_color_words(scene.caption, index, valid, 0.5, rng)
        after = _tracked(caption, new_index, new_valid)
        assert [w for w in before if w not in COLORS] == [w for w in after if w not in COLORS]
        assert [w for w in after if w in COLORS] == [w for w in caption.split() if w in COLORS]
        lengths.add(len(caption.split()))
    assert len(lengths) > 2  # some runs dropped, some kept
    bare = drop_color_words(scene.caption, index, valid, 1.0, rng)[0]
    assert not any(w in COLORS for w in bare.split()) and bare.endswith("on a background")
    assert drop_color_words(scene.caption, index, valid, 0.0, rng)[0] == scene.caption
