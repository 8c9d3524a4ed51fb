"""`discover`: proposals on built-in scenes with known objects, the command, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from cli_helpers import FAST_SETTINGS, cf, tree_digest
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


def test_clusters_and_background_rule_without_a_model():
    # logits of 4x4 positions: a 2x2 block (object) attends to itself, the rest to itself
    side = 4
    block = np.zeros((side, side), bool)
    block[1:3, 1:3] = True
    same = block.reshape(-1)[:, None] == block.reshape(-1)[None, :]
    logits = np.where(same, 1.0, -1.0)
    labels = D.cluster_rows(D.affinity_from_logits(logits, 1.0), 0.5)
    assert len(set(labels)) == 2 and len(set(labels[block.reshape(-1)])) == 1
    masks = np.stack([~np.kron(block, np.ones((4, 4), bool)), np.kron(block, np.ones((4, 4), bool))])
    back, objects = D.split_background(masks, 0.25)
    assert back == [0] and objects == [1]


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
