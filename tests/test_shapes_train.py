"""The built-in model's training recipe runs end to end and writes a stock-loadable pipeline."""

from __future__ import annotations

import numpy as np
from diffusers import StableDiffusionPipeline

from conceptforge.shapes.data import attention_targets, drop_color_words
from conceptforge.shapes.train import main
from conceptforge.shapes.world import COLORS, sample_scene


def test_recipe_writes_a_loadable_pipeline(tmp_path):
    out = tmp_path / "model"
    args = ["--out", str(out), "--work", str(tmp_path / "work"), "--vae-steps", "2", "--vae-sample-steps", "1",
            "--decoder-steps", "1", "--unet-steps", "2", "--scenes", "32", "--batch", "2", "--threads", "1",
            "--color-dropout", "0.5"]
    main(args)
    pipe = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None)
    image = pipe("a red circle on a green background", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)
    assert pipe.tokenizer("red", add_special_tokens=False).input_ids.__len__() == 1
    main(args)  # a second run resumes from the checkpoints and only exports


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
