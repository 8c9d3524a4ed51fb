"""Bad input: exit code 2, one sentence, and the project byte-for-byte unchanged."""

from __future__ import annotations

import pytest
from PIL import Image

from cli_helpers import cf, make_project, tree_digest


@pytest.fixture
def project(tmp_path, tiny_model, scene_files):
    return make_project(tmp_path, tiny_model, scene_files)


def _refused(proj, *args, needle: str):
    before = tree_digest(proj)
    r = cf(*args)
    assert r.exit_code == 2, r.output
    assert needle.lower() in r.output.lower(), r.output
    assert "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) <= 3  # one sentence (rich may wrap it)
    assert tree_digest(proj) == before


def test_missing_image(project, tmp_path):
    _refused(project, "add-concept", project, tmp_path / "nope.png", "--token", "<x>", needle="does not exist")


def test_not_an_image(project, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    _refused(project, "add-concept", project, bad, "--token", "<x>", needle="not a readable image")


def test_token_without_brackets(project, scene_files):
    _refused(project, "add-concept", project, scene_files["a"], "--token", "x", needle="angle brackets")


def test_token_already_in_the_image(project, scene_files):
    _refused(project, "add-concept", project, scene_files["a"], "--token", "<v1>", needle="already a concept")


def test_token_that_is_a_model_word(tmp_path, scene_files):
    from diffusers import StableDiffusionPipeline

    from tiny_models import build_tiny_pipeline

    model = build_tiny_pipeline(tmp_path / "m")
    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None)
    pipe.tokenizer.add_tokens(["<sks>"])
    pipe.tokenizer.save_pretrained(str(model / "tokenizer"))
    proj = tmp_path / "p"
    assert cf("init", proj, "--model", model).exit_code == 0
    _refused(proj, "add-concept", proj, scene_files["a"], "--token", "<sks>", needle="already a word")


def test_mask_size_differs(project, scene_files, tmp_path):
    small = tmp_path / "small.png"
    Image.new("L", (8, 8)).save(small)
    _refused(project, "add-concept", project, scene_files["b"], "--token", "<x>", "--gt-mask", small, needle="8x8")


def test_unknown_token_in_prompt(project):
    assert cf("learn", project, "--em-steps", "1", "--joint-steps", "0", "-q").exit_code == 0
    _refused(project, "generate", project, "a photo of <nobody>", needle="<nobody>")


def test_generate_before_learn(project):
    _refused(project, "generate", project, "a photo of <v1>", needle="learn")


def test_missing_project_folder(tmp_path, scene_files):
    r = cf("add-concept", tmp_path / "nowhere", scene_files["a"], "--token", "<x>")
    assert r.exit_code == 2 and "does not exist" in r.output
    r = cf("learn", tmp_path / "nowhere")
    assert r.exit_code == 2 and "does not exist" in r.output


@pytest.mark.parametrize(
    "text, needle",
    [
        ("version: 1\nmodel: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "broken"),
        ("model: x\n", "no version"),
        ("version: 99\nmodel: x\n", "not supported"),
        ("version: 1\nmodel: x\nimages:\n  - file: 3\n", "needs file"),
    ],
)
def test_broken_manifest(project, scene_files, text, needle):
    (project / "conceptforge.yaml").write_text(text)
    for args in (("add-concept", project, scene_files["a"], "--token", "<x>"), ("learn", project), ("masks", project), ("concepts", project)):
        _refused(project, *args, needle=needle)


def test_init_refuses_existing_project_without_force(project, tiny_model):
    _refused(project, "init", project, needle="--force")
    before = {p for p in project.rglob("*")}
    assert cf("init", project, "--force", "--model", tiny_model).exit_code == 0
    assert before <= {p for p in project.rglob("*")}  # nothing deleted


def test_given_masks_need_every_gt_mask(project):
    r = cf("learn", project, "--masks", "given", "--em-steps", "1", "-q")
    assert r.exit_code == 2 and "gt-mask" in r.output


def test_bad_option_value(project):
    r = cf("learn", project, "--masks", "sometimes")
    assert r.exit_code == 2 and "masks" in r.output


def test_debug_shows_traceback(project, monkeypatch):
    monkeypatch.setenv("CONCEPTFORGE_DEBUG", "1")
    r = cf("masks", project)
    assert r.exit_code != 0 and r.exception is not None
