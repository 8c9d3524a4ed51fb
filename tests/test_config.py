from __future__ import annotations

import pytest

from conceptforge.engine.config import resolve_config
from conceptforge.errors import InputError


def test_layers_of_settings():
    cfg = resolve_config(True, {"em_steps": 7, "mask_every": 3}, {"em_steps": 9, "seed": None})
    assert cfg.em_steps == 9 and cfg.mask_every == 3
    assert resolve_config(False, {}, {}).em_steps == 400


@pytest.mark.parametrize("settings", [{"masks": "magic"}, {"nope": 1}, {"em_steps": "many"}, {"threshold": 2.0}])
def test_bad_settings_are_input_errors(settings):
    with pytest.raises(InputError):
        resolve_config(False, settings, {})
