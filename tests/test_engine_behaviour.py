"""What the trainer and the E-step promise: masks fixed when they must be,
guards and convergence, union sampling, augmentation, batches, fine-tuning
modes, precision and seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cli_helpers import make_project
from conceptforge.engine.bundle import check_model_settings
from conceptforge.engine.config import resolve_config
from conceptforge.engine.data import encode_image
from conceptforge.engine.learn import build_trainer
from conceptforge.errors import InputError
from conceptforge.project import Project


@pytest.fixture
def project(tmp_path, tiny_model, scene_files) -> Project:
    return Project.load(make_project(tmp_path, tiny_model, scene_files))


def _trainer(project: Project, **settings):
    return build_trainer(project, resolve_config(False, project.settings, settings))


def _masks_copy(trainer):
    return {k: v.copy() for k, v in trainer.masks.items()}


def _set_signal(trainer, maps_by_image):
    """Make the E-step read prescribed soft maps (per image: K x att x att)."""
    trainer.estimator.signal_and_error = lambda image, iteration, n, seed, older=None: (maps_by_image[image], None)


def _blob(att: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((att, att), np.float32)
    m[top : top + side, left : left + side] = 1.0
    return m


def test_fixed_never_changes_a_mask_and_joint_keeps_masks(project):
    trainer = _trainer(project, masks="fixed", em_steps=6, joint_steps=3, finetune="lora")
    trainer.start()
    first = _masks_copy(trainer)
    trainer.run()
    assert trainer.iteration == 0
    assert all((trainer.masks[k] == first[k]).all() for k in first)

    em = _trainer(project, masks="em", em_steps=4, joint_steps=3, finetune="lora")
    seen = []
    em.emit.subscribe(lambda e: seen.append((e.kind, e.phase)))
    em.start()
    em.cfg = em.cfg.model_copy(update={"joint_steps": 0})  # stop after the EM phase
    em.run()
    after_em = _masks_copy(em)
    em.cfg = em.cfg.model_copy(update={"joint_steps": 3})
    em.run()  # the joint phase
    assert all((em.masks[k] == after_em[k]).all() for k in after_em)
    assert ("estep", "em") in seen and not any(kind == "estep" and phase == "joint" for kind, phase in seen)


def test_area_guard_refuses_and_refusal_is_not_convergence(project):
    trainer = _trainer(project, masks="em", area_change_max=2.0, mask_converged=0.9, crf=False)
    att = trainer.model.att
    small = [np.stack([_blob(att, 0, 0, 4), _blob(att, 8, 8, 4)]), np.stack([np.ones((att, att), np.float32)])]
    _set_signal(trainer, small)
    trainer.start()
    before = _masks_copy(trainer)
    big = [np.stack([_blob(att, 0, 0, 12), _blob(att, 8, 8, 4)]), small[1]]  # concept 0 grows 9x
    _set_signal(trainer, big)
    result = trainer.run_estep()
    first = next(r for r in result.records if r["token"] == "<v1>")
    assert first["refused"] and (trainer.masks[(0, "<v1>")] == before[(0, "<v1>")]).all()
    assert not result.converged  # every kept mask equals its previous one, but one update was refused
    _set_signal(trainer, small)
    assert trainer.run_estep().converged  # unchanged masks, nothing refused


def test_momentum_mixes_the_previous_soft_maps(project):
    trainer = _trainer(project, masks="em", mask_momentum=0.25, crf=False)
    att = trainer.model.att
    a = [np.stack([_blob(att, 0, 0, 4), _blob(att, 8, 8, 4)]), np.ones((1, att, att), np.float32)]
    b = [np.stack([_blob(att, 4, 4, 4), _blob(att, 0, 8, 4)]), np.ones((1, att, att), np.float32)]
    _set_signal(trainer, a)
    trainer.start()
    _set_signal(trainer, b)
    result = trainer.run_estep()
    assert np.allclose(result.soft[(0, "<v1>")], 0.25 * a[0][0] + 0.75 * b[0][0])


def test_union_sampling_covers_every_subset_size(project):
    trainer = _trainer(project)
    sizes, seen = set(), set()
    for _ in range(200):
        image, subset = trainer.sample_subset()
        sizes.add((image, len(subset)))
        seen.update((image, k) for k in subset)
    assert sizes == {(0, 1), (0, 2), (1, 1)}  # image 0 has two concepts, image 1 one
    assert seen == {(0, 0), (0, 1), (1, 0)}


def test_flip_and_crop_augment_image_and_masks_together(project):
    trainer = _trainer(project, augment="flip")
    trainer.start()
    data, mask = trainer.images[0], trainer.masks[(0, "<v1>")]
    flips = 0
    for _ in range(40):
        s = trainer.sample()
        if s["tokens"][0] != "<v1>" or s["latent"] is data.latents[False]:
            continue
        flips += 1
        assert s["latent"] is data.latents[True]
        assert (s["masks"][0].numpy() == mask[:, ::-1]).all()
    assert flips > 0

    trainer = _trainer(project, augment="full")
    trainer.start()
    trainer.rng.seed(1)
    crops = 0
    for _ in range(20):
        s = trainer.sample()
        plain = [data.latents[False], data.latents[True]]
        if any(torch.equal(s["latent"], p) for p in plain):
            continue
        crops += 1
        assert s["masks"].shape[-1] == trainer.model.size
    assert crops > 0
    # a crop's latent is the encoding of the cropped image
    trainer.rng.seed(7)
    state = trainer.rng.getstate()
    s = trainer.sample()
    trainer.rng.setstate(state)
    image, subset = trainer.sample_subset()
    flip = trainer.rng.random() < 0.5
    box = trainer._crop_box()
    from conceptforge.engine.trainer import _crop_resize

    rgb = trainer.images[image].rgb
    expected = encode_image(trainer.model, _crop_resize(rgb[:, ::-1] if flip else rgb, box, trainer.model.size))
    assert torch.equal(s["latent"], expected)


def test_batch_size_runs_b_samples_through_the_unet_at_once(project):
    trainer = _trainer(project, batch_size=3)
    trainer.start()
    batches = []
    handle = trainer.model.unet.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    losses = trainer.train_step()
    handle.remove()
    assert batches == [3] and np.isfinite(losses["loss"])


@pytest.mark.parametrize("finetune", ["full", "none", "lora"])
def test_finetune_modes_train_what_they_say(project, finetune):
    trainer = _trainer(project, em_steps=1, joint_steps=2, finetune=finetune)
    trainer.start()
    base = {n: p.detach().clone() for n, p in trainer.model.unet.named_parameters() if "lora_" not in n}
    trainer.run()
    params = dict(trainer.model.unet.named_parameters())

    def current(name):  # LoRA wraps a layer's weight as <layer>.base_layer.weight
        head, _, leaf = name.rpartition(".")
        return params.get(name, params.get(f"{head}.base_layer.{leaf}"))

    changed = [n for n, v in base.items() if not torch.equal(current(n), v)]
    lora_up = [p for n, p in params.items() if "lora_B" in n]
    if finetune == "full":
        assert len(changed) > len(base) // 2
    else:
        assert changed == []
    assert bool(lora_up) == (finetune == "lora")
    assert all(p.abs().sum() > 0 for p in lora_up)  # LoRA's up matrices start at zero: they learned


def test_same_seed_same_bits_for_lora_and_tokens(project):
    def learned():
        trainer = _trainer(project, em_steps=3, joint_steps=2, finetune="lora", seed=4)
        trainer.start()
        trainer.run()
        lora = {n: p.detach().clone() for n, p in trainer.model.unet.named_parameters() if "lora_" in n}
        return trainer.model.rows.rows.detach().clone(), lora

    (rows_a, lora_a), (rows_b, lora_b) = learned(), learned()
    assert torch.equal(rows_a, rows_b)
    assert lora_a.keys() == lora_b.keys() and all(torch.equal(lora_a[n], lora_b[n]) for n in lora_a)


def test_init_steps_train_the_tokens_before_the_first_masks(project):
    plain = _trainer(project, init_steps=0)
    warmed = _trainer(project, init_steps=3)
    plain.start()
    warmed.start()
    assert not torch.equal(plain.model.rows.rows, warmed.model.rows.rows)
    assert warmed.iteration == 0


def test_fp16_step_uses_a_gradient_scaler(project):
    trainer = _trainer(project, mixed_precision="fp16")
    trainer.start()
    before = trainer.model.rows.rows.detach().clone()
    losses = trainer.train_step()
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() > 0
    assert np.isfinite(losses["loss"]) and not torch.equal(before, trainer.model.rows.rows)


def test_unsupported_prediction_type_is_refused():
    cfg = resolve_config(False, {}, {})
    with pytest.raises(InputError, match="predicts 'sample'"):
        check_model_settings({"prediction_type": "sample", "num_train_timesteps": 1000}, cfg)
    with pytest.raises(InputError, match="mask_t_max"):
        check_model_settings({"prediction_type": "epsilon", "num_train_timesteps": 500}, cfg)


def test_error_maps_do_not_depend_on_how_timesteps_are_batched(project, monkeypatch):
    from conceptforge.engine import estep

    estimator = _trainer(project).estimator
    batched = estimator.error_maps(0, 5, seed=3)
    monkeypatch.setattr(estep, "BATCH_TARGET", 1)  # one timestep per UNet call
    single = estimator.error_maps(0, 5, seed=3)
    for a, b in zip(batched, single):
        assert np.allclose(a, b, atol=1e-5)


def test_harvested_attention_replaces_the_pass(project):
    trainer = _trainer(project, mask_signal="attention", attention_source="harvest", mask_t_min=0, mask_t_max=999, mask_momentum=0)
    trainer.start()
    recorded = []
    original = trainer.estimator.record
    trainer.estimator.record = lambda *a: (recorded.append(a), original(*a))
    for _ in range(12):
        trainer.train_step()
    calls = []
    handle = trainer.model.unet.register_forward_hook(lambda *a: calls.append(1))
    maps = {i: trainer.estimator.harvested_maps(i) for i in range(len(trainer.images))}
    result = trainer.run_estep()
    handle.remove()
    for i, data in enumerate(trainer.images):
        if maps[i] is None:
            continue
        from conceptforge.engine.attention import normalize_minmax

        expected = normalize_minmax(torch.from_numpy(maps[i])).numpy()
        assert np.allclose(np.stack([result.soft[(i, t)] for t in data.tokens]), expected, atol=1e-6)
    assert any(m is not None for m in maps.values())
    assert len(calls) == sum(m is None for m in maps.values())  # a dedicated pass only where nothing was harvested
    assert trainer.estimator.harvested == {}  # each E-step reads the steps since the last one
    assert recorded
    # a flipped sample's map is mirrored back; noise levels outside the E-step's range are left out
    estimator = trainer.estimator
    estimator.cfg = estimator.cfg.model_copy(update={"mask_t_min": 100, "mask_t_max": 800})
    left = torch.zeros(1, 4, 4)
    left[0, :, 0] = 1.0
    estimator.record(1, ["<v3>"], left, True, 500)
    estimator.record(1, ["<v3>"], torch.ones(1, 4, 4), False, 900)
    assert (estimator.harvested_maps(1)[0, :, 3] == 1).all() and estimator.harvested_maps(1)[0, :, :3].sum() == 0


def test_settled_images_are_not_estimated_again(project):
    trainer = _trainer(project, estep_skip_settled=True, crf=False)
    att = trainer.model.att
    maps = [np.stack([_blob(att, 0, 0, 4), _blob(att, 8, 8, 4)]), np.ones((1, att, att), np.float32)]
    _set_signal(trainer, maps)
    trainer.start()
    trainer.run_estep()  # unchanged: both images settle
    asked = []
    trainer.estimator.signal_and_error = lambda image, *a, **k: (asked.append(image), (maps[image], None))[1]
    result = trainer.run_estep()
    assert asked == [] and result.converged


def test_an_image_settles_after_as_many_steady_re_estimates_in_a_row_as_asked(project):
    trainer = _trainer(project, estep_skip_settled=True, estep_settle_passes=2, crf=False)
    att = trainer.model.att
    maps = [np.stack([_blob(att, 0, 0, 4), _blob(att, 8, 8, 4)]), np.ones((1, att, att), np.float32)]
    _set_signal(trainer, maps)
    trainer.start()
    once = trainer.run_estep()  # steady once: not yet settled
    assert once.steady == {0: 1, 1: 1} and once.settled == set() and not once.converged
    saved = trainer.state_dict()
    twice = trainer.run_estep()
    assert twice.steady == {0: 2, 1: 2} and twice.settled == {0, 1} and twice.converged
    # the count survives a checkpoint
    again = _trainer(project, estep_skip_settled=True, estep_settle_passes=2, crf=False)
    _set_signal(again, maps)
    again.restore(saved)
    assert again.estep_result.steady == {0: 1, 1: 1}
    assert again.run_estep().converged
    # a checkpoint from before the count: its settled images count as settled enough
    older = trainer.state_dict()
    del older["error_signal"]["steady"]
    restored = _trainer(project, estep_skip_settled=True, estep_settle_passes=2, crf=False)
    restored.restore(older)
    assert restored.estep_result.settled == {0, 1} and restored.estep_result.steady == {0: 2, 1: 2}
    # a moved mask starts the count again
    moved = _trainer(project, estep_skip_settled=True, estep_settle_passes=2, crf=False)
    _set_signal(moved, maps)
    moved.start()
    moved.run_estep()
    maps[0] = np.stack([_blob(att, 8, 0, 4), _blob(att, 0, 8, 4)])
    result = moved.run_estep()
    assert 0 not in result.steady and result.steady[1] == 2 and result.settled == {1}


def test_plan_refresh_takes_the_oldest_error_signals_while_the_credit_lasts():
    from conceptforge.engine.estep import plan_refresh

    prompts = {0: 3, 1: 2, 2: 2}  # K + 1 prompts per image
    assert plan_refresh([0, 1, 2], prompts, {0: 3, 1: 1, 2: 2}, 9.0, 2) == ({1: 2, 2: 2}, 1.0)
    # the oldest costs more than the credit: nobody jumps the queue, the credit waits
    assert plan_refresh([0, 1, 2], prompts, {0: 0, 1: 1, 2: 2}, 5.0, 2) == ({}, 5.0)
    assert plan_refresh([2], prompts, {}, 4.0, 2) == ({2: 2}, 0.0)
    # a partly paid pass runs with fewer timesteps, but not with fewer than four
    assert plan_refresh([0], {0: 4}, {}, 25.0, 8) == ({0: 6}, 1.0)
    assert plan_refresh([0], {0: 4}, {}, 15.0, 8) == ({}, 15.0)


def _count_error_passes(trainer) -> list[int]:
    asked: list[int] = []
    original = trainer.estimator.error_maps
    trainer.estimator.error_maps = lambda image, *a, **k: (asked.append(image), original(image, *a, **k))[1]
    return asked


def test_error_passes_follow_the_training_steps_not_the_images(project):
    settings = dict(init_mask_signal="error", mask_signal="both", mask_timesteps=2, mask_t_min=0, mask_t_max=999, estep_skip_settled=False, crf=False, mask_momentum=0)
    trainer = _trainer(project, estep_passes_per_step=1.0, **settings)
    trainer.start()
    first_error = dict(trainer.estep_result.error)
    assert sorted(first_error) == [0, 1]  # the first E-step computes every image's error signal
    asked = _count_error_passes(trainer)
    # costs: image 0 has 2 concepts -> 2 timesteps x 3 prompts = 6 samples; image 1: 2 x 2 = 4
    for _ in range(5):
        trainer.train_step()
    trainer.step = 5
    result = trainer.run_estep()
    assert asked == [] and result.credit == 5.0
    for i, data in enumerate(trainer.images):
        assert trainer.estimator.harvested_maps(i) is None  # cleared by the E-step
        assert result.error[i] is first_error[i]
    trainer.step = 10
    result = trainer.run_estep()
    assert asked == [0, 1] and result.credit == 0.0 and result.refreshed == {0: 2, 1: 2}
    # without a budget every image is re-estimated at every E-step
    trainer = _trainer(project, estep_passes_per_step=float("inf"), **settings)
    trainer.start()
    asked = _count_error_passes(trainer)
    trainer.step = 1
    trainer.run_estep()
    assert asked == [0, 1]


def test_an_image_without_an_error_pass_keeps_its_masks(project):
    trainer = _trainer(project, init_mask_signal="error", mask_signal="both", estep_passes_per_step=0.01, mask_t_min=0, mask_t_max=999, estep_skip_settled=False, crf=False, mask_momentum=0)
    trainer.start()
    first = trainer.estep_result
    for _ in range(12):
        trainer.train_step()
    trainer.step = 12
    # `both` reads attention from its own error pass: the training steps' maps are not kept
    assert not trainer.estimator.harvests and trainer.estimator.harvested == {}
    result = trainer.run_estep()
    assert result.refreshed == first.refreshed  # the credit paid for no pass
    for key, mask in first.masks.items():
        assert np.array_equal(result.masks[key], mask) and np.array_equal(result.soft[key], first.soft[key])
    # masks kept for want of a pass are no evidence of convergence
    assert result.settled == set() and not result.converged


def test_the_error_budget_survives_a_checkpoint(project):
    settings = dict(init_mask_signal="error", mask_signal="both", estep_passes_per_step=0.5, mask_t_min=0, mask_t_max=999, crf=False)
    trainer = _trainer(project, **settings)
    trainer.start()
    trainer.step = 7
    trainer.run_estep()
    state = trainer.state_dict()
    again = _trainer(project, **settings)
    again.restore(state)
    a, b = trainer.estep_result, again.estep_result
    assert (a.step, a.credit, a.refreshed) == (b.step, b.credit, b.refreshed) and a.credit > 0
    assert all(np.array_equal(a.error[i].raw, b.error[i].raw) and a.error[i].weight == b.error[i].weight for i in a.error)


def test_error_memory_pools_an_images_passes_by_their_timesteps(project):
    settings = dict(init_mask_signal="error", mask_signal="error", mask_timesteps=2, init_mask_timesteps=4, mask_t_min=0, mask_t_max=999,
                    estep_passes_per_step=float("inf"), estep_skip_settled=False, crf=False, mask_momentum=0)
    plain, pooled = _trainer(project, error_memory=0.0, **settings), _trainer(project, error_memory=0.5, **settings)
    for trainer in (plain, pooled):
        trainer.start()
        trainer.step = 1
    first = pooled.estep_result.error
    assert all(e.weight == 4.0 for e in first.values())
    fresh, again = plain.run_estep(), pooled.run_estep()  # the same pass on both (same tokens, seed and E-step)
    for i in first:
        # the first pass's 4 timesteps count half: (0.5 x 4 x first + 2 x fresh) / (2 + 2)
        expected = (2.0 * first[i].raw + 2.0 * fresh.error[i].raw) / 4.0
        assert again.error[i].weight == 4.0 and np.allclose(again.error[i].raw, expected, atol=1e-6)
        assert fresh.error[i].weight == 2.0  # without memory: the latest pass alone
        assert np.allclose(np.stack([again.soft[(i, t)] for t in plain.images[i].tokens]), again.error[i].normalized, atol=1e-6)


def test_an_estep_refines_again_from_the_maps_that_give_a_background_its_ground_back(project, monkeypatch):
    from conceptforge.engine import estep

    asked = []

    def first_concept_everywhere(maps, masks, parts, backgrounds, threshold):
        asked.append((len(maps), len(masks), backgrounds))
        out = np.zeros_like(maps)
        out[0] = 1.0
        return out

    monkeypatch.setattr(estep, "raise_lost_ground", first_concept_everywhere)
    trainer = _trainer(project, masks="em", assignment_regions="image", crf=False, mask_momentum=0)
    trainer.start()
    result = trainer.estep_result
    assert len(asked) == len(trainer.images)
    for i, data in enumerate(trainer.images):
        assert asked[i][:2] == (len(data.tokens), len(data.tokens))
        assert asked[i][2] == [k for k, bg in enumerate(data.background) if bg]
        assert result.masks[(i, data.tokens[0])].all() and (result.drawn[(i, data.tokens[0])] == 1.0).all()
    # with the maps' regions there is no image ground to give back
    asked.clear()
    _trainer(project, masks="em", assignment_regions="maps", crf=False).start()
    assert asked == []


def test_an_estep_keeps_the_maps_it_refined_its_masks_from(project):
    from conceptforge.engine.masks import refine_masks

    trainer = _trainer(project, masks="em", mask_assignment="joint", crf=False, mask_momentum=0)
    att = trainer.model.att
    both = np.maximum(_blob(att, 0, 0, 4), _blob(att, 8, 8, 4))
    _set_signal(trainer, [np.stack([both, both]), np.stack([np.ones((att, att), np.float32)])])
    trainer.start()
    result, data = trainer.estep_result, trainer.images[0]
    assert not any(data.background)
    drawn = np.stack([result.drawn[(0, t)] for t in data.tokens])
    assert (result.soft[(0, data.tokens[0])] == result.soft[(0, data.tokens[1])]).all()  # the signal: twins
    assert not (drawn[0] == drawn[1]).all()  # the assignment gave each its own blob
    again = refine_masks(data.rgb, drawn, threshold=trainer.cfg.threshold, use_crf=False, has_background=data.has_background)
    assert all((again[k] == result.masks[(0, t)]).all() for k, t in enumerate(data.tokens))
