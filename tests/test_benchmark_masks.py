"""The mask benchmark's statistics on made-up records: bootstrap intervals over
units, the one weighting of every mean, and the held-out set's guard."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import stats  # noqa: E402


def test_interval_covers_zero_for_symmetric_noise():
    rng = np.random.default_rng(1)
    groups = [list(rng.normal(0.0, 0.2, size=3)) for _ in range(12)]
    d = stats.pooled_mean_interval(groups)
    assert d.lo < 0 < d.hi
    assert d.verdict == "not distinguishable"
    assert d.units == 12 and d.values == 36


def test_interval_excludes_zero_for_a_clear_shift():
    rng = np.random.default_rng(2)
    up = stats.pooled_mean_interval([list(0.3 + rng.normal(0.0, 0.1, size=3)) for _ in range(12)])
    assert 0 < up.lo < up.value < up.hi and up.verdict == "em better"
    down = stats.pooled_mean_interval([list(-0.3 + rng.normal(0.0, 0.1, size=3)) for _ in range(12)])
    assert down.hi < 0 and down.verdict == "fixed better"


def test_margin_and_words():
    d = stats.pooled_mean_interval([[0.2, 0.21], [0.19, 0.2], [0.22], [0.18, 0.2], [0.2]], margin=0.05, above="met", below="missed")
    assert d.verdict == "met"
    d = stats.pooled_mean_interval([[0.02, 0.01], [0.0, 0.03], [0.01], [0.02, 0.0], [0.01]], margin=0.05, above="met", below="missed")
    assert d.verdict == "missed"


def test_resampling_is_by_unit_and_weighs_each_concept_once():
    # one unit with many concepts: the pooled mean follows the concepts, and the
    # interval is as wide as drawing that whole unit or not makes it
    groups = [[1.0] * 9, [0.0], [0.0], [0.0], [0.0]]
    d = stats.pooled_mean_interval(groups)
    assert d.value == pytest.approx(9 / 13)
    assert d.lo == 0.0  # resamples without the big unit
    assert d.hi > 0.9  # resamples drawing it several times
    assert all(np.isnan(stats.bootstrap_ci(lambda idx: idx.sum(1).astype(float), stats.MIN_UNITS - 1)))  # too few: no interval
    few = stats.pooled_mean_interval([[0.5, 0.6]] * (stats.MIN_UNITS - 1))
    assert few.verdict.startswith("no interval") and few.text() == "+0.550"


def test_paired_differences_match_concepts_by_key():
    a = [{"x <o0>": 0.8, "x <bg>": 0.9}, {"y <o0>": 0.5, "y <bg>": None}]
    b = [{"x <bg>": 0.7, "x <o0>": 0.6}, {"y <o0>": 0.7, "y <bg>": 0.9}]
    diffs = stats.paired_differences(a, b)
    assert diffs[0] == pytest.approx([0.2, 0.2]) and diffs[1] == pytest.approx([-0.2])


def test_ratio_and_rate_intervals():
    em = [[0.2, 0.4], [0.3], [0.25, 0.35], [0.3, 0.3], [0.3]]
    given = [[0.25, 0.45], [0.4], [0.3, 0.3], [0.35, 0.35], [0.32]]
    r = stats.ratio_interval(em, given, 0.85, above="met", below="missed", inside="not distinguishable from 0.85")
    assert r.value == pytest.approx(stats.pooled_mean(em) / stats.pooled_mean(given))
    assert r.lo < r.value < r.hi
    c = stats.rate_ratio_interval([12.0, 11.8, 12.2, 12.0, 12.0], [100] * 5, [10.0] * 5, [100] * 5, 1.25,
                                  above="missed", below="met", inside="not distinguishable from 1.25x")
    assert c.value == pytest.approx(1.2) and c.verdict == "met"


def made_up_records():
    """Two scenes of different concept counts, E-steps at 0, 50, 100; one concept's last E-step is 50."""
    def concept(image, token, steps, ious, background=False):
        return {"image": image, "token": token, "background": background, "shared": False, "steps": steps, "iou": ious}

    return [
        {"unit": "1", "concepts": [
            concept("a", "<o0>", [0, 50, 100], [0.2, 0.5, 0.9]),
            concept("a", "<o1>", [0, 50, 100], [0.1, 0.3, 0.4]),
            concept("a", "<o2>", [0, 50], [0.3, 0.6]),
            concept("a", "<bg>", [0, 50, 100], [0.8, 0.9, 0.95], background=True),
        ], "timing": {"em_seconds": 10.0, "estep_seconds": 2.0, "em_steps_timed": 100}},
        {"unit": "2", "concepts": [
            concept("b", "<o0>", [0, 50, 100], [0.5, 0.1, 0.2]),
            concept("b", "<bg>", [0, 50, 100], [0.7, 0.8, 0.6], background=True),
        ], "timing": {"em_seconds": 11.0, "estep_seconds": 1.0, "em_steps_timed": 100}},
    ]


def test_table_and_curve_agree():
    pytest.importorskip("torch")
    import masks

    records = made_up_records()
    summary = masks.summarise({"em": records}, multi=False)["em"]
    finals = [0.9, 0.4, 0.6, 0.95, 0.2, 0.6]
    assert summary["final"] == pytest.approx(np.mean(finals))  # each concept once, not the mean of scene means
    assert summary["final"] != pytest.approx(np.mean([np.mean(finals[:4]), np.mean(finals[4:])]))
    assert summary["curve"]["steps"] == [0, 50, 100]
    assert summary["curve"]["iou"][-1] == pytest.approx(summary["final"])
    assert summary["curve"]["iou"][0] == pytest.approx(summary["first"])
    assert summary["curve"]["iou"][1] == pytest.approx(np.mean([0.5, 0.3, 0.6, 0.9, 0.1, 0.8]))
    assert summary["final_objects"] == pytest.approx(np.mean([0.9, 0.4, 0.6, 0.2]))
    assert summary["estep_share"] == pytest.approx(3.0 / 24.0)
    assert summary["s_per_step"] == pytest.approx(24.0 / 200)


def test_held_out_sets_refuse_settings(capsys):
    pytest.importorskip("torch")
    import masks

    for scene_set in ("test", "multi"):
        with pytest.raises(SystemExit):
            masks.parse_args(["--scene-set", scene_set, "--set", "seed=1"])
        with pytest.raises(SystemExit):
            masks.parse_args(["--scene-set", scene_set, "--joint-steps", "0"])
        with pytest.raises(SystemExit):
            masks.parse_args(["--scene-set", scene_set, "--modes", "em,em-no-crf"])
        masks.parse_args(["--scene-set", scene_set, "--modes", "em,fixed"])  # fewer modes is no tuning
        args, _, _ = masks.parse_args(["--scene-set", scene_set, "--joint-steps", "0", "--allow-tuning-on-test"])
        assert args.out.name == f"masks_{scene_set}.md"
    args, s, _ = masks.parse_args(["--skip", "12", "--set", "seed=1"])
    assert s.name == "dev2" and args.out.name == "masks_dev2.md"
    with pytest.raises(SystemExit):
        masks.parse_args(["--scene-set", "dev1", "--scenes", "13"])  # would overlap dev2


def test_each_development_set_stops_where_the_next_begins():
    pytest.importorskip("torch")
    import masks

    devs = [masks.SETS[f"dev{n}"] for n in range(1, 7)]
    for before, after in zip(devs, devs[1:]):
        assert before.base == after.base and before.skip + before.max_units == after.skip
        with pytest.raises(SystemExit):
            masks.parse_args(["--scene-set", before.name, "--scenes", str(before.max_units + 1)])
    assert all(not s.held_out for s in devs) and masks.SETS["test"].base >= devs[-1].end
