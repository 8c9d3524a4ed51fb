"""The built-in model's training recipe runs end to end and writes a stock-loadable pipeline."""

from __future__ import annotations

from diffusers import StableDiffusionPipeline

from conceptforge.shapes.train import main


def test_recipe_writes_a_loadable_pipeline(tmp_path):
    out = tmp_path / "model"
    args = ["--out", str(out), "--work", str(tmp_path / "work"), "--vae-steps", "2", "--vae-sample-steps", "1",
            "--decoder-steps", "1", "--unet-steps", "2", "--scenes", "32", "--batch", "2", "--threads", "1"]
    main(args)
    pipe = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None)
    image = pipe("a red circle on a green background", num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)
    assert pipe.tokenizer("red", add_special_tokens=False).input_ids.__len__() == 1
    main(args)  # a second run resumes from the checkpoints and only exports
