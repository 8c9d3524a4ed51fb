"""Checkpoints: an exact round trip through one safetensors file, and no code run on load."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conceptforge.engine.checkpoint import load_checkpoint, save_checkpoint
from conceptforge.errors import CheckpointError, InputError


def assert_same(a, b, where="state"):
    """Same types all the way down, bit-identical values."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        assert [type(k) for k in a] == [type(k) for k in b], where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert struct.pack(">d", a) == struct.pack(">d", b), where
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert a.contiguous().reshape(-1).view(torch.uint8).tolist() == b.contiguous().reshape(-1).view(torch.uint8).tolist(), where
    elif isinstance(a, (np.ndarray, np.generic)):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), where
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), where
    else:
        assert a == b, where


def rich_state() -> dict:
    return {
        "phase": "em",
        "step": 12,
        "big": 2**70,
        "negative": -3,
        "floats": [0.1, -0.0, math.nan, -math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308],
        "flags": (True, False, None),
        "empty": {"list": [], "tuple": (), "dict": {}},
        "int_keys": {0: "a", 1: {2: (3, 4)}, -5: None},
        "mixed_keys": {"1": "str one", 1: "int one"},
        "odd|keys with spaces": "ok",
        "ordered": OrderedDict([("b", 1), ("a", 2)]),
        "tensors": [
            torch.tensor(3.5),
            torch.zeros(0, 3),
            torch.zeros((2, 0), dtype=torch.int64),
            torch.tensor([True, False, True]),
            torch.arange(6, dtype=torch.bfloat16).reshape(2, 3) / 7,
            torch.arange(6, dtype=torch.float16) / 3,
            torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),
            torch.randn(2, 2, dtype=torch.float64),
            torch.randint(0, 255, (7,), dtype=torch.uint8),
            torch.arange(-4, 4, dtype=torch.int8),
            torch.arange(10, dtype=torch.int32)[::2],  # not contiguous
            torch.arange(10.0).reshape(2, 5).t(),  # transposed view
        ],
        "arrays": {
            "bool": np.array([[True, False], [False, True]]),
            "uint8": np.arange(5, dtype=np.uint8),
            "f32": np.linspace(0, 1, 7, dtype=np.float32),
            "f64": np.array([math.pi, -0.0, math.nan]),
            "int64": np.array(-7),  # 0-d
            "empty": np.zeros((0, 4), dtype=np.float32),
            "big_endian": np.arange(4, dtype=">f8"),
            "uint16": np.arange(3, dtype=np.uint16),
            "view": np.arange(12, dtype=np.float32).reshape(3, 4)[:, 1],
        },
        "np_scalars": [np.float32(1.25), np.int64(9), np.bool_(True), np.float64(2.5)],
    }


def test_round_trip_is_exact(tmp_path):
    state = rich_state()
    path = save_checkpoint(tmp_path, state)
    assert path == tmp_path / "state.safetensors" and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.safetensors"]  # no temp file left
    assert_same(state, load_checkpoint(tmp_path))


def test_file_is_plain_safetensors_with_json_structure(tmp_path):
    save_checkpoint(tmp_path, {"a": torch.ones(2), "b": [np.zeros(3, dtype=np.float32)], "c": 1})
    with safe_open(str(tmp_path / "state.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
        names = set(fh.keys())
    assert len(names) == 2
    assert isinstance(json.loads(meta["structure"]), dict)
    assert not (tmp_path / "state.pt").exists()


def test_shared_and_repeated_tensors_are_saved(tmp_path):
    base = torch.arange(10.0)
    t = torch.ones(3)
    state = {"a": base[:5], "b": base[3:], "same": [t, t], "whole": base}
    assert_same(state, load_checkpoint(save_checkpoint(tmp_path, state).parent))


def test_no_checkpoint_is_none(tmp_path):
    assert load_checkpoint(tmp_path) is None
    assert load_checkpoint(tmp_path / "missing") is None


def test_random_streams_continue_bit_for_bit(tmp_path):
    rng = random.Random(1234)
    gen = torch.Generator().manual_seed(1234)
    rng.random(), torch.rand(5, generator=gen)
    save_checkpoint(tmp_path, {"streams": [(rng.getstate(), gen.get_state())]})
    expected = ([rng.random() for _ in range(5)], torch.rand(8, generator=gen))

    (rng_state, gen_state), = load_checkpoint(tmp_path)["streams"]
    rng2, gen2 = random.Random(), torch.Generator()
    rng2.setstate(rng_state)  # needs the tuples back as tuples
    gen2.set_state(gen_state)  # needs the uint8 tensor back
    assert [rng2.random() for _ in range(5)] == expected[0]
    assert torch.equal(torch.rand(8, generator=gen2), expected[1])


def _train(model, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_adamw_state_continues_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.99))
    _train(model, opt, 3, seed=1)
    save_checkpoint(tmp_path, {"opt": opt.state_dict(), "weights": {n: p.detach().clone() for n, p in model.named_parameters()}})
    _train(model, opt, 4, seed=2)
    expected = [p.detach().clone() for p in model.parameters()]

    loaded = load_checkpoint(tmp_path)
    assert_same(opt.state_dict()["param_groups"], loaded["opt"]["param_groups"])
    model2 = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for n, p in model2.named_parameters():
            p.copy_(loaded["weights"][n])
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.5)
    opt2.load_state_dict(loaded["opt"])
    _train(model2, opt2, 4, seed=2)
    for a, b in zip(expected, model2.parameters()):
        assert torch.equal(a, b.detach())


def test_overwrite_keeps_one_file(tmp_path):
    save_checkpoint(tmp_path, {"step": 1})
    save_checkpoint(tmp_path, {"step": 2})
    assert load_checkpoint(tmp_path) == {"step": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": {(1, 2): 3}}, {"x": {True: 3}}, {"x": np.array(["a"])}, [1]])
def test_unsupported_values_are_refused_on_save(tmp_path, bad):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, bad)
    assert not (tmp_path / "state.safetensors").exists()


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_legacy_pickle_is_never_opened(tmp_path):
    project = tmp_path / "proj"
    folder = project / "runs" / "20240101-000000-em" / "checkpoints"
    folder.mkdir(parents=True)
    target = tmp_path / "pwned"
    (folder / "state.pt").write_bytes(pickle.dumps({"x": _Evil(str(target))}))
    # a plain unpickle would create the file
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    assert not target.exists()
    message = str(info.value)
    assert str(folder / "state.pt") in message and "older version" in message
    assert f"conceptforge learn {project} --no-resume" in message
    assert isinstance(info.value, InputError) and info.value.exit_code == 2


def test_new_file_wins_over_a_legacy_one(tmp_path):
    (tmp_path / "state.pt").write_bytes(b"not read")
    save_checkpoint(tmp_path, {"step": 3})
    assert load_checkpoint(tmp_path) == {"step": 3}


def _damaged(tmp_path: Path, data: bytes):
    (tmp_path / "state.safetensors").write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "state.safetensors") in message and "--no-resume" in message
    assert "\n" not in message
    return info.value


def _good_bytes(tmp_path: Path) -> bytes:
    save_checkpoint(tmp_path, {"w": torch.arange(100.0), "m": np.ones(5, dtype=bool), "n": 3})
    return (tmp_path / "state.safetensors").read_bytes()


@pytest.mark.parametrize("keep", [0, 1, 7, 100, -1, -200])
def test_truncated_file_is_a_checkpoint_error(tmp_path, keep):
    data = _good_bytes(tmp_path)
    _damaged(tmp_path, data[:keep] if keep >= 0 else data[:keep])


def test_random_bytes_are_a_checkpoint_error(tmp_path):
    _damaged(tmp_path, os.urandom(4096))
    _damaged(tmp_path, b"")


def test_flipped_tensor_byte_is_a_checkpoint_error(tmp_path):
    data = bytearray(_good_bytes(tmp_path))
    data[-10] ^= 0x01  # inside the tensor data: the header still parses
    _damaged(tmp_path, bytes(data))


class RawJson(str):
    """Structure text used as it is."""


def _with_metadata(tmp_path: Path, structure, tensors=None, **extra) -> bytes:
    tensors = {"t0": torch.ones(2)} if tensors is None else tensors
    from conceptforge.engine.checkpoint import _digest  # the same digest, so only the structure is wrong

    text = structure if isinstance(structure, RawJson) else json.dumps(structure)
    meta = {"format": "conceptforge-state", "version": "1", "structure": str(text), "sha256": _digest(tensors)}
    meta.update(extra)
    out = tmp_path / "forged.safetensors"
    save_file(tensors, str(out), metadata=meta)
    return out.read_bytes()


@pytest.mark.parametrize(
    "structure",
    [
        {"t": "dict", "v": [["a", {"t": "tensor", "v": "t9", "dtype": "float32"}]]},  # missing tensor
        {"t": "dict", "v": [["a", {"t": "tensor", "v": "t0", "dtype": "int64"}]]},  # wrong dtype
        {"t": "dict", "v": [["a", {"t": "ndarray", "v": "t0", "dtype": "<i8"}]]},  # wrong array dtype
        {"t": "dict", "v": [["a", {"t": "ndarray", "v": "t0", "dtype": "|O"}]]},  # object array
        {"t": "dict", "v": [["a", {"t": "tensor", "v": "t0", "dtype": "float32"}], ["b", {"t": "tensor", "v": "t0", "dtype": "float32"}]]},
        {"t": "dict", "v": []},  # a tensor in the file that nothing uses
        {"t": "list", "v": [{"t": "tensor", "v": "t0", "dtype": "float32"}]},  # top level not a dict
        {"t": "dict", "v": [["a", {"t": "tensor", "v": "t0", "dtype": "float32"}], ["c", {"t": "pickle", "v": "x"}]]},
        {"t": "dict", "v": [["a", {"t": "tensor", "v": "t0", "dtype": "float32"}], ["c", {"t": "float", "v": "zz"}]]},
        {"t": "dict", "v": [["a", {"t": "tensor", "v": "t0", "dtype": "float32"}], ["c", [1, 2]]]},  # bare JSON list
        {"t": "dict", "v": [[True, {"t": "tensor", "v": "t0", "dtype": "float32"}]]},  # bool key
        {"t": "dict", "v": [[1.5, {"t": "tensor", "v": "t0", "dtype": "float32"}]]},  # float key
        {"t": "dict", "v": [["a", {"t": "tensor", "v": "t0", "dtype": "float32"}], ["a", 1]]},  # repeated key
        {"t": "dict", "v": [["a", {"t": "tensor", "v": "t0", "dtype": "float32", "x": 1}]]},  # unknown field
        "not a structure",
    ],
)
def test_metadata_we_did_not_write_is_a_checkpoint_error(tmp_path, structure):
    _damaged(tmp_path, _with_metadata(tmp_path, structure))


def test_wrong_format_or_digest_is_a_checkpoint_error(tmp_path):
    good = {"t": "dict", "v": [["a", {"t": "tensor", "v": "t0", "dtype": "float32"}]]}
    (tmp_path / "state.safetensors").write_bytes(_with_metadata(tmp_path, good))
    assert torch.equal(load_checkpoint(tmp_path)["a"], torch.ones(2))  # the forged file itself is well formed
    _damaged(tmp_path, _with_metadata(tmp_path, good, format="other"))
    _damaged(tmp_path, _with_metadata(tmp_path, good, version="2"))
    _damaged(tmp_path, _with_metadata(tmp_path, good, sha256="0" * 64))
    save_file({"t0": torch.ones(2)}, str(tmp_path / "state.safetensors"))  # a safetensors file without our metadata
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)


def test_deep_nesting_is_a_checkpoint_error(tmp_path):
    n = 100000
    deep = '{"t":"list","v":[' * n + "1" + "]}" * n
    text = RawJson('{"t":"dict","v":[["a",{"t":"tensor","v":"t0","dtype":"float32"}],["d",' + deep + "]]}")
    _damaged(tmp_path, _with_metadata(tmp_path, text))


def test_checkpoint_modules_never_use_torch_load():
    root = Path(__file__).resolve().parents[1] / "conceptforge"
    hits = [str(p.relative_to(root)) for p in root.rglob("*.py") if "torch.load" in p.read_text()]
    own = {"engine/checkpoint.py", "fsutil.py", "engine/runs.py"}
    assert not own & set(hits)


def test_a_learner_like_state_round_trips(tmp_path):
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW([{"params": [model.weight], "lr": 1e-3}, {"params": [model.bias], "lr": 1e-4, "weight_decay": 0.0}])
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(model(torch.randn(2, 4)).sum())
    state = {
        "phase": "joint",
        "step": 7,
        "iteration": 3,
        "converged": False,
        "rows": torch.randn(2, 8),
        "opt": opt.state_dict(),
        "scaler": scaler.state_dict(),
        "masks": {"0|<a>": np.random.rand(8, 8) > 0.5, "1|<b>": np.zeros((8, 8), bool)},
        "soft": {"0|<a>": np.random.rand(8, 8).astype(np.float32)},
        "streams": [[list(random.Random(3).getstate()[1][:5]), torch.Generator().manual_seed(3).get_state()]],
        "weights": dict(model.state_dict()),
    }
    assert_same(state, load_checkpoint(save_checkpoint(tmp_path, state).parent))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_tensors_come_back_on_the_cpu(tmp_path):
    t = torch.randn(3, 3, device="cuda", dtype=torch.bfloat16)
    loaded = load_checkpoint(save_checkpoint(tmp_path, {"t": t}).parent)["t"]
    assert loaded.device.type == "cpu" and torch.equal(loaded, t.cpu())


def test_state_files_at_any_path(tmp_path):
    from conceptforge.engine.checkpoint import read_state, write_state

    path = tmp_path / "work" / "unet.safetensors"
    state = {"step": 4, "model": OrderedDict(w=torch.ones(2, 2))}
    write_state(path, state)
    assert_same(state, read_state(path))
    with pytest.raises(FileNotFoundError):
        read_state(tmp_path / "missing.safetensors")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match=r"unet\.safetensors cannot be read .*; delete it to start afresh\.$"):
        read_state(path)
