"""The manifest file's text: read, write keeping the user's comments, and lock.

Reading uses PyYAML's safe loader (YAML 1.1, as every earlier version did).
Writing goes through ruamel.yaml's round trip: the current file is loaded with
its comments, the values conceptforge owns are updated in place (list items
matched by their ``file`` or ``token``), and everything else - comments, key
order, keys conceptforge does not know - is kept.  The written text is read back
with PyYAML and must give the intended values; if it does not, the manifest is
written plainly instead (values always win over comments).  A lock file
(``.conceptforge.lock``) serialises every read-modify-write of the manifest.
"""

from __future__ import annotations

import io
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from .errors import InputError, ProjectBusyError
from .fsutil import atomic_write

MANIFEST = "conceptforge.yaml"
LOCK_NAME = ".conceptforge.lock"
LOCK_TIMEOUT_S = 120.0

# (keys conceptforge owns at this level, or None for all; {list key: (item id key, item schema)})
Schema = tuple[frozenset[str] | None, dict[str, tuple[str, "Schema"]]]
_CONCEPT: Schema = (frozenset({"token", "init", "background", "gt_mask"}), {})
_IMAGE: Schema = (frozenset({"file", "sha256", "concepts"}), {"concepts": ("token", _CONCEPT)})
TOP: Schema = (frozenset({"version", "model", "model_config", "images", "settings"}), {"images": ("file", _IMAGE)})
_ALL: Schema = (None, {})


def _safe_load(text: str) -> Any:
    """PyYAML's safe loader, through libyaml when it is there (the same values, faster)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def read_manifest(path: Path) -> Any:
    """The manifest's YAML data, or InputError naming the file (and line) when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not valid YAML (it is not UTF-8 text).") from None
    except OSError as exc:
        raise InputError(f"{path} cannot be read ({exc.strerror or type(exc).__name__}).") from None
    try:
        data = _safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise InputError(f"{path} is not valid YAML{where}.") from None
    except RecursionError:
        raise InputError(f"{path} is not valid YAML (it is nested too deeply).") from None
    except (ValueError, OverflowError):
        raise InputError(f"{path} is not valid YAML (a value in it cannot be read, such as a number thousands of digits long).") from None
    problem = _shape_problem(data)
    if problem is not None:
        raise InputError(f"{path} is {problem}.")
    return data


MAX_VALUES = 1_000_000
MAX_DEPTH = 64


def _shape_problem(data: Any) -> str | None:
    """Refuse data too big to walk (aliases repeat a value without copying it) or nested too deeply."""
    stack = [(data, 0)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            return f"too large (over {MAX_VALUES} values, counting each repetition of an alias)"
        if depth > MAX_DEPTH:
            return f"nested too deeply (over {MAX_DEPTH} levels)"
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            stack.extend((k, depth + 1) for k in value.keys() if isinstance(k, tuple))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)
    return None


def write_manifest(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to the manifest atomically, keeping the current file's comments and unknown keys."""
    text = _round_trip_text(path, data)
    if text is None:
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def manifest_lock(root: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the project's manifest lock (a file lock, across processes and threads)."""
    from filelock import FileLock, Timeout

    lock_path = root / LOCK_NAME
    lock = FileLock(str(lock_path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise ProjectBusyError(
            f"Another conceptforge command has been changing {root / MANIFEST} for {timeout:.0f} s; try again when it has finished."
        ) from None
    except OSError as exc:
        raise InputError(f"Cannot create the lock file {lock_path} ({exc.strerror or type(exc).__name__}).") from None
    try:
        yield
    finally:
        lock.release()


# -- round trip ---------------------------------------------------------------
def _yaml():
    """ruamel.yaml's round trip, writing None as null (as PyYAML does) rather than as nothing."""
    from ruamel.yaml import YAML
    from ruamel.yaml.representer import RoundTripRepresenter

    class Representer(RoundTripRepresenter):
        pass

    Representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    rt = YAML(typ="rt")
    rt.Representer = Representer
    rt.preserve_quotes = True
    rt.width = 4096
    return rt


def _round_trip_text(path: Path, data: dict[str, Any]) -> str | None:
    """The new manifest text with the old file's comments, or None when that cannot be done faithfully."""
    from ruamel.yaml import YAMLError
    from ruamel.yaml.comments import CommentedMap

    rt = _yaml()
    doc: Any = None
    try:
        if path.is_file():
            doc = rt.load(path.read_text(encoding="utf-8"))
    except (YAMLError, OSError, UnicodeDecodeError, RecursionError, ValueError):
        doc = None
    if not isinstance(doc, CommentedMap):
        doc = CommentedMap()
    try:
        _merge_map(doc, data, TOP)
        buf = io.StringIO()
        rt.dump(doc, buf)
        text = buf.getvalue()
        back = _safe_load(text)
        return text if _equal(_owned(back, TOP), data) else None
    except Exception:  # noqa: BLE001 - any failure of the comment-keeping path falls back to a plain write
        return None


def _owned(value: Any, schema: Schema) -> Any:
    """The part of a loaded manifest value that conceptforge owns."""
    owned, lists = schema
    if not isinstance(value, dict) or owned is None:
        return value
    out = {}
    for key in value:
        if key in owned:
            item = value[key]
            if key in lists and isinstance(item, list):
                item = [_owned(x, lists[key][1]) for x in item]
            out[key] = item
    return out


def _merge_map(old, new: dict, schema: Schema) -> None:
    owned, lists = schema
    for key in list(old):
        if (owned is None or key in owned) and key not in new:
            del old[key]
    for key, value in new.items():
        current = old.get(key, _MISSING) if _hashable(key) else _MISSING
        if key in lists and _is_seq(current) and isinstance(value, list):
            _merge_seq(current, value, *lists[key])
        elif _is_map(current) and isinstance(value, dict):
            _merge_map(current, value, _ALL)
        elif current is _MISSING or not _same(current, value):
            old[_fresh(key)] = _fresh(value)


def _merge_seq(seq, items: list, id_key: str, schema: Schema) -> None:
    olds: dict[Any, Any] = {}
    for item in seq:
        if _is_map(item) and isinstance(item.get(id_key), str):
            olds.setdefault(item[id_key], item)
    result = []
    for new in items:
        old = olds.pop(new.get(id_key), None) if isinstance(new, dict) and isinstance(new.get(id_key), str) else None
        if old is not None:
            _merge_map(old, new, schema)
            result.append(old)
        else:
            result.append(_fresh(new))
    keep = {id(x) for x in result}
    for i in reversed(range(len(seq))):
        if id(seq[i]) not in keep:
            del seq[i]
    present = {id(x) for x in seq}
    for x in result:
        if id(x) not in present:
            seq.append(x)
    if [id(x) for x in seq] != [id(x) for x in result]:
        seq[:] = result


_MISSING = object()


def _hashable(key: Any) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


def _is_map(x: Any) -> bool:
    from ruamel.yaml.comments import CommentedMap

    return isinstance(x, CommentedMap)


def _is_seq(x: Any) -> bool:
    from ruamel.yaml.comments import CommentedSeq

    return isinstance(x, CommentedSeq)


_RESOLVER = yaml.resolver.Resolver()


def _misread(text: str) -> bool:
    """True when PyYAML would read this plain scalar as something other than the string (yes, on, 0777...)."""
    return _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) != "tag:yaml.org,2002:str"


def _fresh(value: Any) -> Any:
    """A value ready for ruamel's dumper: strings PyYAML would misread are double-quoted."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    if isinstance(value, str):
        return DoubleQuotedScalarString(value) if _misread(value) else value
    if isinstance(value, dict):
        out = CommentedMap()
        for k, v in value.items():
            out[_fresh(k)] = _fresh(v)
        return out
    if isinstance(value, list):
        return CommentedSeq(_fresh(v) for v in value)
    return value


def _same(old: Any, new: Any) -> bool:
    """Whether the old node already holds `new` (then it is kept as written)."""
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool) and old == new
    if isinstance(new, str):
        return isinstance(old, str) and old == new and not _misread(new)
    if isinstance(new, (dict, list)):
        return False
    if new is None or old is None:
        return old is None and new is None
    if isinstance(new, float) and isinstance(old, float) and math.isnan(new) and math.isnan(old):
        return True
    if isinstance(new, (int, float)):
        return isinstance(old, type(new)) and old == new
    return type(old) is type(new) and old == new


def _equal(a: Any, b: Any) -> bool:
    """Equality of loaded YAML values, NaN equal to NaN and bool distinct from int."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def backup_name(path: Path) -> Path:
    """A free name beside `path` for a kept copy: NAME.broken-YYYYmmdd-HHMMSS[-N]."""
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.broken-{stamp}")
    n = 1
    while os.path.lexists(candidate):
        n += 1
        candidate = path.with_name(f"{path.name}.broken-{stamp}-{n}")
    return candidate
