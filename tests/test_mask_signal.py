"""The E-step's mask signals on the built-in model: a learned token lowers the
denoising error where its concept is, and the settings choose the signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conceptforge.engine.config import resolve_config
from conceptforge.engine.learn import build_trainer
from conceptforge.engine.trainer import Trainer
from conceptforge.engine.attention import normalize_minmax
from conceptforge.engine.masks import resize_mask
from conceptforge.errors import InputError
from conceptforge.project import Project
from conceptforge.shapes.world import sample_scene

SCENE_SEED = 800021  # held out: a two-object scene of distinct shapes


def _scene_learner(tmp_path: Path, **settings) -> Trainer:
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
    return build_trainer(project, config)


def test_learned_tokens_lower_the_error_inside_their_own_concept(tmp_path):
    learner = _scene_learner(tmp_path, masks="given")
    learner.start()
    for _ in range(150):
        learner.train_step()
    # as a later E-step reads it with error_reference: init
    gain, attention = learner.estimator.error_maps(0, 8, seed=0, use_init=True)
    gts = [resize_mask(g, *gain.shape[-2:]) for g in learner.images[0].gt]
    inside = np.array([[gain[k][gt].mean() for gt in gts] for k in range(len(gts))])
    assert gain.shape == (3, 16, 16) and attention.shape == (3, learner.model.att, learner.model.att)
    assert (gain >= 0).all()
    # what each object token learned beyond its init word lowers the error inside
    # its own object more than twice as much as anywhere else (the background
    # token, starting from the well-learned word "background", gains little)
    for k in range(len(gts) - 1):
        assert inside[k, k] > 2 * np.delete(inside[k], k).max(), inside.round(4)


@pytest.mark.parametrize("reference", ["drop", "init"])
def test_signals_read_what_their_settings_say(tmp_path, reference):
    """attention: the attention pass; error: the normalised error gain; both:
    the normalised mean of the two, from the same passes."""
    estimator = _scene_learner(tmp_path, masks="em", error_reference=reference).estimator
    gain, attention = estimator.error_maps(0, 2, seed=5, use_init=reference == "init")
    err = normalize_minmax(torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(gain), attention.shape[-1]))
    both = normalize_minmax((err + normalize_minmax(torch.from_numpy(attention))) / 2).numpy()
    for signal, expected in (("error", err.numpy()), ("both", both)):
        estimator.cfg = estimator.cfg.model_copy(update={"mask_signal": signal})
        assert np.allclose(estimator.signal(0, 1, 2, seed=5), expected, atol=1e-6)
    estimator.cfg = estimator.cfg.model_copy(update={"mask_signal": "attention"})
    plain = normalize_minmax(torch.from_numpy(estimator.attention_maps(0, 2, seed=5))).numpy()
    assert np.allclose(estimator.signal(0, 1, 2, seed=5), plain, atol=1e-6)
    assert not np.allclose(plain, both, atol=1e-3)  # the two signals differ


def test_unknown_signal_is_an_input_error():
    with pytest.raises(InputError, match="mask_signal"):
        resolve_config(True, {}, {"mask_signal": "colour"})
    with pytest.raises(InputError, match="error_reference"):
        resolve_config(True, {}, {"error_reference": "none"})


def test_init_reference_measures_what_learning_added(tmp_path):
    learner = _scene_learner(tmp_path, masks="em", error_reference="init")
    data, prompts = learner.images[0], learner.prompts
    with torch.no_grad():
        untrained, _ = prompts.encode(data.tokens, data.background)
        assert torch.allclose(prompts.reference(data, 0, use_init=True).hidden, untrained.hidden)  # a token still at its init word gains nothing
        learner.model.rows.rows[0] += 0.05  # as if <o0> had learned
        learned, _ = prompts.encode(data.tokens, data.background)
        reference = prompts.reference(data, 0, use_init=True).hidden
    assert reference.shape == learned.hidden.shape
    assert torch.allclose(reference, untrained.hidden) and not torch.allclose(reference, learned.hidden)


def test_first_estep_error_signal_drops_each_concept(tmp_path):
    """At the first E-step the tokens still equal their init words, so the init
    reference would measure nothing: the error signal drops k instead."""
    learner = _scene_learner(tmp_path, masks="em", init_mask_signal="error", error_reference="init")
    data, estimator = learner.images[0], learner.estimator
    with torch.no_grad():
        full, _ = learner.prompts.encode(data.tokens, data.background)
        assert not torch.allclose(learner.prompts.reference(data, 0, use_init=False).hidden, full.hidden)
    dropped, _ = estimator.error_maps(0, 2, seed=0, use_init=False)
    assert (dropped.reshape(len(data.tokens), -1).max(axis=1) > 0).all()
    # iteration 0 reads the drop reference although error_reference is init
    err = normalize_minmax(torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(dropped), learner.model.att)).numpy()
    assert np.allclose(estimator.signal(0, 0, 2, seed=0), err, atol=1e-6)
    with pytest.raises(InputError, match="init_mask_signal"):
        resolve_config(True, {}, {"init_mask_signal": "colour"})
