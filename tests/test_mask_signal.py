"""The E-step's mask signals on the built-in model: a learned token lowers the
denoising error where its concept is, and the settings choose the signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conceptforge.engine.backbone import resolve_source
from conceptforge.engine.config import resolve_config
from conceptforge.engine.em import Learner
from conceptforge.engine.masks import resize_mask
from conceptforge.engine.runs import new_run
from conceptforge.errors import InputError
from conceptforge.project import Project
from conceptforge.shapes.world import sample_scene

SCENE_SEED = 800021  # held out: a two-object scene of distinct shapes


def _scene_learner(tmp_path: Path, **settings) -> Learner:
    scene = sample_scene(SCENE_SEED)
    project = Project.create(tmp_path / "proj")
    image = tmp_path / "scene.png"
    scene.image.save(image)
    masks = [obj.mask for obj in scene.objects] + [scene.background_mask]
    inits = [obj.shape for obj in scene.objects] + ["background"]
    for k, (mask, init) in enumerate(zip(masks, inits)):
        path = tmp_path / f"m{k}.png"
        Image.fromarray((mask * 255).astype(np.uint8)).save(path)
        background = k == len(masks) - 1
        project.add_concept(image, "<bg>" if background else f"<o{k}>", init=init, gt_mask=path, background=background)
    project = Project.load(project.root)
    config = resolve_config(True, {}, settings)
    learner = Learner(project, new_run(project.runs_dir, config.masks), config, resolve_source(project.model))
    learner._setup()
    return learner


def test_learned_tokens_lower_the_error_inside_their_own_concept(tmp_path):
    learner = _scene_learner(tmp_path, masks="given")  # error_reference: init, the built-in default
    learner._make_optimizer("em")
    learner._estep(0, 2)
    for _ in range(150):
        learner._train_step()
    learner.iteration = 1  # as in the second E-step, which reads the init reference
    gain, attention = learner._error_maps(0, 8, seed=0)
    gts = [resize_mask(g, *gain.shape[-2:]) for g in learner.images[0].gt]
    inside = np.array([[gain[k][gt].mean() for gt in gts] for k in range(len(gts))])
    assert gain.shape == (3, 16, 16) and attention.shape == (3, learner.att, learner.att)
    assert (gain >= 0).all()
    # what each object token learned beyond its init word lowers the error inside
    # its own object more than twice as much as anywhere else (the background
    # token, starting from the well-learned word "background", gains little)
    for k in range(len(gts) - 1):
        assert inside[k, k] > 2 * np.delete(inside[k], k).max(), inside.round(4)


@pytest.mark.parametrize("signal,reference", [("attention", "drop"), ("error", "drop"), ("both", "drop"), ("both", "init")])
def test_every_signal_gives_normalised_maps(tmp_path, signal, reference):
    learner = _scene_learner(tmp_path, masks="em", mask_signal=signal, error_reference=reference)
    learner.iteration = 1  # a later E-step: the first reads init_mask_signal
    maps = learner._mask_signal(0, 2, seed=0)
    assert maps.shape == (3, learner.att, learner.att)
    assert np.allclose(maps.max(axis=(1, 2)), 1.0) and np.allclose(maps.min(axis=(1, 2)), 0.0)


def test_unknown_signal_is_an_input_error():
    with pytest.raises(InputError, match="mask_signal"):
        resolve_config(True, {}, {"mask_signal": "colour"})
    with pytest.raises(InputError, match="error_reference"):
        resolve_config(True, {}, {"error_reference": "none"})


def test_init_reference_measures_what_learning_added(tmp_path):
    learner = _scene_learner(tmp_path, masks="em", error_reference="init")
    learner.iteration = 1  # a later E-step
    data = learner.images[0]
    with torch.no_grad():
        untrained, _ = learner._encode_prompt(data.tokens, data.background)
        assert torch.allclose(learner._reference_context(data, 0), untrained)  # a token still at its init word gains nothing
        learner.rows.rows[0] += 0.05  # as if <o0> had learned
        learned, _ = learner._encode_prompt(data.tokens, data.background)
        reference = learner._reference_context(data, 0)
    assert reference.shape == learned.shape
    assert torch.allclose(reference, untrained) and not torch.allclose(reference, learned)


def test_first_estep_error_signal_drops_each_concept(tmp_path):
    """At the first E-step the tokens still equal their init words, so the init
    reference would measure nothing: the error signal drops k instead."""
    learner = _scene_learner(tmp_path, masks="em", init_mask_signal="error", error_reference="init")
    learner.iteration = 0
    data = learner.images[0]
    with torch.no_grad():
        full, _ = learner._encode_prompt(data.tokens, data.background)
        assert not torch.allclose(learner._reference_context(data, 0), full)
    gain, _ = learner._error_maps(0, 2, seed=0)
    assert (gain.reshape(len(data.tokens), -1).max(axis=1) > 0).all()
    maps = learner._mask_signal(0, 2, seed=0)
    assert np.allclose(maps.max(axis=(1, 2)), 1.0) and np.allclose(maps.min(axis=(1, 2)), 0.0)
    with pytest.raises(InputError, match="init_mask_signal"):
        resolve_config(True, {}, {"init_mask_signal": "colour"})
