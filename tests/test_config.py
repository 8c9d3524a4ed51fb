from __future__ import annotations

import json

import pytest
import yaml

from cli_helpers import cf, make_project, tree_digest
from conceptforge.engine.config import DEFAULTS, LearnConfig, family_defaults, parse_set_option, resolve_config
from conceptforge.errors import InputError


def test_layers_of_settings():
    cfg = resolve_config(True, {"em_steps": 7, "mask_every": 3}, {"em_steps": 9, "seed": None})
    assert cfg.em_steps == 9 and cfg.mask_every == 3
    assert resolve_config(False, {}, {}).em_steps == 400
    assert resolve_config(True, {}, {}).em_steps == 200


def test_one_defaults_table_covers_every_setting():
    assert set(DEFAULTS) == set(LearnConfig.model_fields)
    for builtin in (True, False):
        LearnConfig(**family_defaults(builtin))  # both families' defaults are valid
    assert resolve_config(False, {}, {}).objective == "reference"  # SD: Break-a-Scene's loss
    assert resolve_config(True, {}, {}).objective == "area"


@pytest.mark.parametrize(
    "settings,named",
    [
        ({"masks": "magic"}, "masks"),
        ({"nope": 1}, "nope"),
        ({"em_steps": "many"}, "em_steps"),
        ({"threshold": 2.0}, "threshold"),
        ({"em_steps": 2.7}, "em_steps"),  # not truncated to 2
        ({"em_steps": 1e23}, "em_steps"),
        ({"mask_t_min": 700, "mask_t_max": 600}, "mask_t_min"),
        ({"token_lr": 0}, "token_lr"),
        ({"token_lr": 1e30}, "token_lr"),
        ({"weight_lr": -1e-4}, "weight_lr"),
        ({"mask_momentum": 1.0}, "mask_momentum"),
        ({"mask_converged": 1.5}, "mask_converged"),
        ({"area_change_max": 0.5}, "area_change_max"),
        ({"attn_weight": -1}, "attn_weight"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"em_warmup": -3}, "em_warmup"),
        ({"image_size": -64}, "image_size"),
        ({"image_size": 100}, "image_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"crf": "sometimes"}, "crf"),
    ],
)
def test_bad_settings_are_input_errors_naming_the_setting(settings, named):
    with pytest.raises(InputError, match=named):
        resolve_config(False, settings, {})


def test_estep_schedule_follows_the_budget():
    builtin = resolve_config(True, {}, {})
    assert builtin.estep_steps() == [50, 75, 100, 125, 150, 175, 200]  # the measured schedule at 200 steps
    short = resolve_config(True, {}, {"em_steps": 40})
    assert short.estep_steps() == [10, 15, 20, 25, 30, 35, 40] and short.schedule_warning() is None
    for steps in range(20, 401, 7):
        assert len(resolve_config(False, {}, {"em_steps": steps}).estep_steps()) >= 2
    assert resolve_config(False, {}, {"em_steps": 400}).estep_steps()[:2] == [50, 75]  # the paper-sized schedule
    explicit = resolve_config(True, {"em_warmup": 50, "mask_every": 25}, {"em_steps": 40})
    assert explicit.estep_steps() == [] and "--masks fixed" in explicit.schedule_warning()
    assert resolve_config(True, {}, {"masks": "fixed"}).estep_steps() == []


def test_set_option_reads_yaml_values():
    assert parse_set_option(["token_lr=1e-3", "crf=false", "masks=em", "em_warmup="]) == {
        "token_lr": 1e-3, "crf": False, "masks": "em", "em_warmup": None,
    }
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_set_option(["token_lr"])


def test_cli_refuses_bad_settings_before_anything_runs(tmp_path, tiny_model, scene_files):
    proj = make_project(tmp_path, tiny_model, scene_files)
    before = tree_digest(proj)
    for args in (["--set", "mask_t_max=5000"], ["--set", "em_steps=1e23"], ["--set", "lora_rank=0"], ["--em-steps", "-1"]):
        r = cf("learn", proj, *args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output and "Error:" not in r.output.replace("error:", "")
    assert tree_digest(proj) == before


def test_short_em_run_still_reestimates_masks(tmp_path, tiny_model, scene_files):
    proj = make_project(tmp_path, tiny_model, scene_files)
    manifest = proj / "conceptforge.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["settings"] = {"init_mask_timesteps": 2, "mask_timesteps": 1, "checkpoint_every": 20}  # the default schedule
    manifest.write_text(yaml.safe_dump(data))
    r = cf("learn", proj, "--em-steps", "20", "--joint-steps", "0", "--json")
    assert r.exit_code == 0, r.output
    (run,) = [p for p in (proj / "runs").iterdir() if p.is_dir()]
    esteps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"estep"' in line]
    # the first masks and at least two E-steps after them, unless the masks converged before
    assert len(esteps) >= 3 or (len(esteps) >= 2 and esteps[-1]["converged"]), [e["step"] for e in esteps]
    assert len(list((run / "masks").glob("iter_*"))) == len(esteps)
