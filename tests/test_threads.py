"""Thread count: chosen from the cores not kept busy, or as the user says."""

from __future__ import annotations

import pytest
import torch

from cli_helpers import cf
from conceptforge.errors import InputError
from conceptforge.threads import choose_threads, configure_threads, idle_cores


def test_idle_cores_leave_out_busy_ones():
    assert idle_cores(cores=2, load=0.0) == 2
    assert idle_cores(cores=2, load=1.0) == 1  # one core busy with another process
    assert idle_cores(cores=2, load=7.0) == 1  # never fewer than one
    assert idle_cores(cores=8, load=2.4) == 6


def test_requested_and_environment_win():
    assert choose_threads(3, {}) == 3
    assert choose_threads(None, {"CONCEPTFORGE_THREADS": "2"}) == 2
    with pytest.raises(InputError, match="CONCEPTFORGE_THREADS"):
        choose_threads(None, {"CONCEPTFORGE_THREADS": "many"})
    with pytest.raises(InputError):
        choose_threads(0, {})


def test_configure_sets_torch_and_passive_waiting(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # restored afterwards
    before = torch.get_num_threads()
    try:
        assert configure_threads(2) == 2
        assert torch.get_num_threads() == 2
        import os

        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["OMP_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(before)


def test_threads_option_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # restored afterwards
    before = torch.get_num_threads()
    try:
        r = cf("--threads", "2", "init", tmp_path / "p")
        assert r.exit_code == 0, r.output
        assert torch.get_num_threads() == 2
        assert cf("--threads", "0", "init", tmp_path / "q").exit_code == 2
    finally:
        torch.set_num_threads(before)
