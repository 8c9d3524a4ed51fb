"""Data-parallel learning: `torchrun`/`accelerate launch` processes share one run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from cli_helpers import make_project
from conceptforge.engine.parallel import Parallel


def _group_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    par = Parallel.from_env()
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.full((3,), float(rank + 1))
    par.average_gradients([p])
    q = torch.nn.Parameter(torch.full((2,), float(rank)))
    par.broadcast_parameters([q])
    result = {
        "grad": p.grad.tolist(),
        "broadcast_param": q.tolist(),
        "broadcast": par.broadcast(f"from {rank}"),
        "gather": par.gather(rank * 10),
        "mine": par.mine(5),
    }
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    import torch.distributed as dist

    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_group_averages_gradients_and_shares_objects(tmp_path):
    mp.spawn(_group_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"{k}.json").read_text()) for k in (0, 1))
    assert r0["grad"] == r1["grad"] == [1.5, 1.5, 1.5]
    assert r0["broadcast_param"] == r1["broadcast_param"] == [0.0, 0.0]
    assert r0["broadcast"] == r1["broadcast"] == "from 0"
    assert r0["gather"] == r1["gather"] == [0, 10]
    assert (r0["mine"], r1["mine"]) == ([0, 2, 4], [1, 3])


def test_outside_a_launcher_nothing_changes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    par = Parallel.from_env()
    assert (par.rank, par.world, par.is_main, par.active) == (0, 1, True, False)
    assert par.seed(5) == 5 and par.mine(3) == [0, 1, 2] and par.gather("x") == ["x"]


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    # --multi_gpu is accelerate's torch.distributed launcher; without GPUs the group runs on gloo
    "accelerate": [
        sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
    ],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_learn_one_run(tmp_path, tiny_model, scene_files, launcher):
    proj = make_project(tmp_path, tiny_model, scene_files)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = LAUNCHERS[launcher] + ["-m", "conceptforge", "learn", str(proj), "--em-steps", "6", "--joint-steps", "2", "--json",
                                   # the error-pass budget: both processes must plan the same refreshes
                                   "--set", "init_mask_signal=error", "--set", "mask_signal=both", "--set", "estep_passes_per_step=4",
                                   "--set", "mask_timesteps=4"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1 and lines[0]["ok"]  # only the main process reports
    runs = [p for p in (proj / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1
    assert json.loads((runs[0] / "state.json").read_text())["status"] == "finished"
    steps = [json.loads(x) for x in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    em_steps = [s["step"] for s in steps if s["kind"] == "step" and s["phase"] == "em"]
    assert em_steps == list(range(1, 7))  # written once, not once per process
    estep_images = [{m["image"] for m in s["masks"]} for s in steps if s["kind"] == "estep"]
    assert all(images == {"first", "second"} for images in estep_images)  # both processes' shares gathered
    assert sorted(p.name for p in (proj / "concepts").glob("*.safetensors")) == ["pytorch_lora_weights.safetensors", "v1.safetensors", "v2.safetensors", "v3.safetensors"]
    assert not (proj / "runs" / ".learn.lock").exists()
