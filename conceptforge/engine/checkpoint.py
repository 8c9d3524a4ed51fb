"""Resumable checkpoints of a run: one safetensors file, written atomically.

A state is a nesting of dict (str or int keys), list, tuple, int, float, bool,
None, str, numpy scalars, numpy arrays and torch tensors.  Every array and tensor
goes into the safetensors file as a tensor; the file's metadata holds a JSON
description of the whole structure and a SHA-256 of the tensor bytes, so a
checkpoint round-trips exactly (same types, same bits) and reading one never
runs code.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError
from ..fsutil import atomic_write

STATE_FILE = "state.safetensors"
LEGACY_FILE = "state.pt"
FORMAT = "conceptforge-state"
VERSION = "1"


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` to folder/state.safetensors atomically; return the path."""
    path = folder / STATE_FILE
    write_state(path, state)
    return path


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The state saved in `folder`, or None when there is no checkpoint.

    Raises CheckpointError for a file that cannot be read, and for a checkpoint
    of an older version (a pickle, which is never opened)."""
    path = folder / STATE_FILE
    way_on = f"start a new run with `{_fresh_run_command(folder)}`"
    if not path.is_file():
        legacy = folder / LEGACY_FILE
        if legacy.exists():
            raise CheckpointError(
                f"The checkpoint {legacy} is from an older version of conceptforge and cannot be opened safely; {way_on}."
            )
        return None
    return read_state(path, way_on)


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to the safetensors file `path` atomically."""
    if type(state) is not dict:
        raise TypeError(f"a checkpoint state is a dict, not {type(state).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    structure = _Encoder(tensors).encode(state)
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "structure": json.dumps(structure, separators=(",", ":")),
        "sha256": _digest(tensors),
    }
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_state(path: Path, way_on: str = "delete it to start afresh") -> dict[str, Any]:
    """The state in the safetensors file `path` (as write_state wrote it).

    Raises FileNotFoundError when there is no such file, and CheckpointError,
    ending with `way_on`, when it cannot be read."""
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        return _read(path)
    except Exception:  # noqa: BLE001 - any failure to parse means the file is unreadable
        raise CheckpointError(f"The checkpoint {path} cannot be read (it is damaged or cut short); {way_on}.") from None


def _read(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        meta = fh.metadata() or {}
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError("not a conceptforge state")
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    if meta.get("sha256") != _digest(tensors):
        raise ValueError("digest mismatch")
    decoder = _Decoder(tensors)
    state = decoder.decode(json.loads(meta["structure"]))
    if type(state) is not dict or decoder.used != set(tensors):
        raise ValueError("not a state")
    return state


def _fresh_run_command(folder: Path) -> str:
    """The command that starts afresh, naming the project when the folder sits in runs/<id>/checkpoints."""
    runs = folder.parent.parent
    project = str(runs.parent) if folder.name == "checkpoints" and runs.name == "runs" else "DIR"
    return f"conceptforge learn {project} --no-resume"


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode() + b"\0")
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


class _Encoder:
    """Turns a state into a JSON-able structure, collecting its tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.storages: set[int] = set()

    def encode(self, value: Any) -> Any:
        kind = type(value)
        if value is None or kind in (bool, str):
            return value
        if kind is int:
            return value
        if kind is float:
            return {"t": "float", "v": struct.pack(">d", value).hex()}
        if kind in (list, tuple):
            return {"t": kind.__name__, "v": [self.encode(v) for v in value]}
        if kind in (dict, OrderedDict):
            items = []
            for k, v in value.items():
                if type(k) not in (str, int):
                    raise TypeError(f"checkpoint dict keys are str or int, not {type(k).__name__}")
                items.append([k, self.encode(v)])
            return {"t": "dict" if kind is dict else "odict", "v": items}
        if isinstance(value, torch.Tensor):
            return {"t": "tensor", "v": self._add(value.detach().cpu()), "dtype": str(value.dtype).removeprefix("torch.")}
        if kind is np.ndarray or isinstance(value, np.generic):
            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                raise TypeError(f"checkpoint arrays hold booleans or numbers, not {array.dtype}")
            native = array.astype(array.dtype.newbyteorder("="), order="C", copy=False)
            if not native.flags.writeable:
                native = native.copy()
            tag = "ndarray" if kind is np.ndarray else "npscalar"
            return {"t": tag, "v": self._add(torch.from_numpy(native)), "dtype": array.dtype.str}
        raise TypeError(f"a checkpoint cannot hold a {kind.__name__}")

    def _add(self, tensor: torch.Tensor) -> str:
        tensor = tensor.contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if tensor.numel() and ptr in self.storages:
            tensor = tensor.clone()  # safetensors stores each tensor on its own
        elif tensor.numel():
            self.storages.add(ptr)
        name = f"t{len(self.tensors)}"
        self.tensors[name] = tensor
        return name


class _Decoder:
    """Rebuilds a state from its structure, checking every node is one we write."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.used: set[str] = set()

    @staticmethod
    def fail() -> ValueError:
        return ValueError("not a structure this module writes")

    def decode(self, node: Any) -> Any:
        kind = type(node)
        if node is None or kind in (bool, str, int):
            return node
        if kind is not dict or set(node) - {"t", "v", "dtype"} or "t" not in node or "v" not in node:
            raise self.fail()
        tag, v = node["t"], node["v"]
        if tag == "float" and type(v) is str and len(v) == 16:
            return struct.unpack(">d", bytes.fromhex(v))[0]
        if tag in ("list", "tuple") and type(v) is list:
            items = [self.decode(x) for x in v]
            return items if tag == "list" else tuple(items)
        if tag in ("dict", "odict") and type(v) is list:
            out: dict[Any, Any] = {} if tag == "dict" else OrderedDict()
            for pair in v:
                if type(pair) is not list or len(pair) != 2 or type(pair[0]) not in (str, int) or pair[0] in out:
                    raise self.fail()
                out[pair[0]] = self.decode(pair[1])
            return out
        if tag in ("tensor", "ndarray", "npscalar"):
            return self._leaf(tag, v, node.get("dtype"))
        raise self.fail()

    def _leaf(self, tag: str, name: Any, dtype: Any) -> Any:
        if type(name) is not str or name not in self.tensors or name in self.used or type(dtype) is not str:
            raise self.fail()
        self.used.add(name)
        tensor = self.tensors[name]
        if tag == "tensor":
            if str(tensor.dtype) != f"torch.{dtype}":
                raise self.fail()
            return tensor
        try:
            want = np.dtype(dtype)
        except TypeError:
            raise self.fail() from None
        array = tensor.numpy()
        if want.kind not in "biuf" or array.dtype != want.newbyteorder("="):
            raise self.fail()
        array = array.astype(want, copy=False)
        if tag == "npscalar":
            if array.ndim:
                raise self.fail()
            return array[()]
        return array
