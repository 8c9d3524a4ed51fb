"""`discover`: proposals on built-in scenes with known objects, the command, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from cli_helpers import FAST_SETTINGS, cf, tree_digest
from synthetic_images import two_tone_disc_beside_a_square
from conceptforge.engine import discover as D
from conceptforge.engine.masks import iou
from conceptforge.shapes.world import sample_scene

# development scenes (benchmarks/discover.py --split dev) that the shipped settings get right
KNOWN = [(820001, 1), (820004, 1), (820011, 2), (820014, 2)]


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    from conceptforge.project import Project

    project = Project.create(tmp_path_factory.mktemp("discover") / "p")
    return D.load_project_model(project, "cpu")


def _matched(found: D.Discovery, truth: list[np.ndarray]) -> list[float]:
    from scipy.optimize import linear_sum_assignment

    cost = np.array([[iou(t, p.mask) for p in found.objects] for t in truth])
    rows, cols = linear_sum_assignment(-cost)
    return list(cost[rows, cols])


@pytest.mark.parametrize("seed,n", KNOWN)
def test_proposals_match_the_true_objects(builtin, seed, n):
    model, cfg = builtin
    scene = sample_scene(seed, n_objects=n)
    found = D.discover_concepts(model, np.asarray(scene.image), D.settings_for(cfg, True))
    assert len(found.objects) == n
    assert min(_matched(found, [o.mask for o in scene.objects])) >= 0.9
    assert found.background is not None and iou(found.background.mask, scene.background_mask) >= 0.9
    assert found.background.init == "background"
    assert all(p.init in ("circle", "square", "triangle", "star", "heart", "cross", "shape", "object") for p in found.objects)


def test_init_words_by_denoising_error_name_the_shapes(builtin):
    model, cfg = builtin
    scene = sample_scene(820009, n_objects=3)  # a development scene: cross, triangle and square
    found = D.discover_concepts(model, np.asarray(scene.image), D.settings_for(cfg, True))
    for obj in scene.objects:
        best = max(found.objects, key=lambda p: iou(p.mask, obj.mask))
        assert iou(best.mask, obj.mask) > 0.9 and best.init == obj.shape


def test_same_seed_same_bits(builtin):
    model, cfg = builtin
    rgb = np.asarray(sample_scene(820011, n_objects=2).image)
    a = D.discover_concepts(model, rgb, D.settings_for(cfg, True, seed=3))
    b = D.discover_concepts(model, rgb, D.settings_for(cfg, True, seed=3))
    assert [p.mask.tobytes() for p in a.proposals] == [p.mask.tobytes() for p in b.proposals]
    assert [p.init for p in a.proposals] == [p.init for p in b.proposals]


def test_max_concepts_caps_largest_first(builtin):
    model, cfg = builtin
    scene = sample_scene(820011, n_objects=2)
    found = D.discover_concepts(model, np.asarray(scene.image), D.settings_for(cfg, True, max_concepts=1))
    assert len(found.objects) == 1 and found.dropped_cap == 1
    largest = max(scene.objects, key=lambda o: o.mask.sum())
    assert iou(found.objects[0].mask, largest.mask) >= 0.9


def test_regions_group_into_objects_and_background_without_a_model():
    # the disc's red and blue halves meet on a straight chord through its middle: one object; the
    # square overlapping the disc meets it off the middle and stays its own; grey is the background
    rgb, disc, square = two_tone_disc_beside_a_square()
    seg = D.segment(rgb, None, D.DiscoverSettings())
    found = [seg.masks[k] for k in seg.objects]
    assert len(found) == 2
    assert max(iou(m, disc) for m in found) >= 0.95 and max(iou(m, square) for m in found) >= 0.95
    assert len(seg.background) == 1 and iou(seg.masks[seg.background[0]], ~(disc | square)) >= 0.95
    apart = D.segment(rgb, None, D.DiscoverSettings(merge_boundary=0, merge_span=0))  # no merging: three object regions
    assert len(apart.objects) == 3


def test_attention_groups_superpixels_before_the_background_is_taken():
    # attention in which object cells look at object cells and background cells at background
    # cells: the disc's two parts and the square become one group before the border rule
    rgb, disc, square = two_tone_disc_beside_a_square()
    side = 16
    cells = (disc | square).reshape(side, 4, side, 4).mean(axis=(1, 3)).reshape(-1) > 0.5
    logits = np.where(cells[:, None] == cells[None, :], 1.0, -1.0)
    settings = D.DiscoverSettings(merge_boundary=0, merge_span=0, merge_distance=0.2)
    merged = D.segment(rgb, logits, settings)
    assert len(merged.objects) == 1 and iou(merged.masks[merged.objects[0]], disc | square) >= 0.95
    assert len(D.segment(rgb, None, settings).objects) == 3  # without attention: three parts


def test_sd_family_groups_superpixels_by_the_models_self_attention(tiny_model, tmp_path):
    from conceptforge.project import Project

    model, cfg = D.load_project_model(Project.create(tmp_path / "p", model=str(tiny_model)), "cpu")
    settings = D.settings_for(cfg, False)
    assert settings.merge_distance > 0 and settings.words_per_prompt > 1
    rgb, _, _ = two_tone_disc_beside_a_square(model.size)
    found = D.discover_concepts(model, rgb, settings)
    cover = sum(p.mask.astype(int) for p in found.proposals)
    assert found.labels.shape == rgb.shape[:2] and (cover == 1).all()  # the proposals tile the image
    # the random tiny model's self-attention is nearly uniform: it groups every superpixel with its
    # neighbours, which the image alone would keep apart
    alone = D.discover_concepts(model, rgb, D.settings_for(cfg, False, merge_distance=0.0))
    assert found.clusters < alone.clusters and len(alone.objects) >= 1


def _scene_file(tmp_path, seed=820011, n=2):
    path = tmp_path / "duo.png"
    sample_scene(seed, n_objects=n).image.save(path)
    return path


def test_command_writes_proposals_and_add_registers_concepts_learn_can_use(tmp_path):
    proj = tmp_path / "p"
    assert cf("init", proj, "-q").exit_code == 0
    image = _scene_file(tmp_path)
    r = cf("--threads", "1", "discover", proj, image)
    assert r.exit_code == 0, r.output
    assert "<duo-1>" in r.output and "<duo-2>" in r.output and "<duo-bg>" in r.output and "background" in r.output
    folder = proj / "discover" / "duo"
    assert {p.name for p in folder.iterdir()} == {"proposals.png", "proposals.json", "duo-1.png", "duo-2.png", "duo-bg.png"}
    assert yaml.safe_load((proj / "conceptforge.yaml").read_text())["images"] == []  # not registered without --add

    r = cf("--threads", "1", "discover", proj, image, "--add", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [p["token"] for p in out["proposals"]] == ["<duo-1>", "<duo-2>", "<duo-bg>"]
    data = yaml.safe_load((proj / "conceptforge.yaml").read_text())
    concepts = data["images"][0]["concepts"]
    assert [c["token"] for c in concepts] == ["<duo-1>", "<duo-2>", "<duo-bg>"]
    assert [c["background"] for c in concepts] == [False, False, True]
    assert all(c["init"] for c in concepts)

    data["settings"] = dict(FAST_SETTINGS)
    (proj / "conceptforge.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    r = cf("--threads", "1", "learn", proj, "--em-steps", "2", "--joint-steps", "0", "--no-report", "-q")
    assert r.exit_code == 0, r.output
    assert (proj / "concepts" / "duo-1.safetensors").is_file() and (proj / "concepts" / "duo-bg.safetensors").is_file()


def test_image_already_in_the_project_and_no_background(tmp_path):
    proj = tmp_path / "p"
    assert cf("init", proj, "-q").exit_code == 0
    image = _scene_file(tmp_path, 820001, 1)
    assert cf("add-concept", proj, image, "--token", "<mine>").exit_code == 0
    r = cf("--threads", "1", "discover", proj, "duo.png", "--no-background", "--add", "-q")
    assert r.exit_code == 0, r.output
    tokens = [c["token"] for c in yaml.safe_load((proj / "conceptforge.yaml").read_text())["images"][0]["concepts"]]
    assert tokens == ["<mine>", "<duo-1>"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["missing.png"], "does not exist"),
        (["bad.png"], "not a readable image"),
        (["duo.png", "--max-concepts", "0"], "--max-concepts 0 proposes nothing"),
    ],
)
def test_bad_input_is_one_sentence_exit_2_project_unchanged(tmp_path, args, needle):
    proj = tmp_path / "p"
    assert cf("init", proj, "-q").exit_code == 0
    _scene_file(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    before = tree_digest(proj)
    args = [str(tmp_path / args[0])] + args[1:]
    r = cf("discover", proj, *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert tree_digest(proj) == before


def test_token_clash_refused_before_anything_is_written(tmp_path):
    proj = tmp_path / "p"
    assert cf("init", proj, "-q").exit_code == 0
    image = _scene_file(tmp_path)
    other = tmp_path / "other.png"
    sample_scene(820004, n_objects=1).image.save(other)
    assert cf("add-concept", proj, other, "--token", "<DUO-1>").exit_code == 0
    before = tree_digest(proj)
    r = cf("--threads", "1", "discover", proj, image, "--add")
    assert r.exit_code == 2 and "<DUO-1>" in r.output, r.output
    assert tree_digest(proj) == before


def test_proposal_picture_outlines_each_proposal_in_its_own_colour():
    from PIL import Image

    from conceptforge.engine.pictures import PALETTE

    rgb, disc, square = two_tone_disc_beside_a_square()
    found = D.Discovery([D.Proposal(disc, float(disc.mean()), "circle", 1.0), D.Proposal(square, float(square.mean()), "square", 1.0)],
                        D.Proposal(~(disc | square), 0.5, "background", 1.0, background=True), clusters=3)
    sheet = np.asarray(D.proposal_picture(Image.fromarray(rgb), found, side=128))
    tinted = sheet[:, 136:]  # the right half: 128 px + an 8 px gap
    for k in range(2):
        assert (tinted == PALETTE[k]).all(axis=-1).sum() > 150  # the outline, not only the number box (64 px)


def test_a_vocabulary_without_candidate_words_leaves_init_words_empty(builtin, monkeypatch):
    # a tokenizer that has none of the candidate nouns as one token: proposals without init words, no crash
    model, cfg = builtin
    monkeypatch.setattr(D, "candidate_words", lambda tokenizer, is_builtin: [])
    rgb = np.asarray(sample_scene(820011, n_objects=2).image)
    for signal in ("attention", "error"):
        found = D.discover_concepts(model, rgb, D.settings_for(cfg, True, init_word_signal=signal))
        assert len(found.objects) == 2 and all(p.init is None for p in found.objects)
