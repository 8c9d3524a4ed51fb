"""The manifest's entries and their rules: concepts, image entries, tokens, init
words, and the check of a loaded manifest (structure, types, paths confined to
images/, distinct stems, tokens distinct beyond case).  Every fault is one
InputError naming the file and the field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .manifest import read_manifest

MANIFEST_VERSION = 1
TOKEN_MAX = 64
# The whole string: "<", a letter or digit, up to 61 letters, digits, "_" or "-", ">" (64 characters at most).
TOKEN_PATTERN = re.compile(r"\A<[A-Za-z0-9][A-Za-z0-9_\-]{0,61}>\Z")
INIT_MAX = 64
# names Windows reserves for devices, with any extension: a token's file <name>.safetensors must not be one
RESERVED_NAMES = frozenset({"con", "prn", "aux", "nul"} | {f"{p}{n}" for p in ("com", "lpt") for n in range(1, 10)})
TOKEN_RULE = "a name in angle brackets, such as <me> or <my-dog>: a letter or digit, then letters, digits, _ or -, at most 64 characters in all"


@dataclass
class Concept:
    token: str
    init: str | None = None
    background: bool = False
    gt_mask: str | None = None  # file name under images/

    @property
    def name(self) -> str:
        return self.token[1:-1]

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "init": self.init, "background": self.background, "gt_mask": self.gt_mask}


@dataclass
class ImageEntry:
    file: str  # file name under images/
    sha256: str
    concepts: list[Concept] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return Path(self.file).stem

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "sha256": self.sha256, "concepts": [c.to_dict() for c in self.concepts]}


# -- rules ----------------------------------------------------------------------
def token_problem(token: Any) -> str | None:
    """Why `token` is not a valid concept token, or None."""
    if not isinstance(token, str):
        return f"must be text, {TOKEN_RULE}"
    if len(token) > TOKEN_MAX:
        return f"is {len(token)} characters long; a token has at most {TOKEN_MAX}"
    if not TOKEN_PATTERN.match(token):
        return f"must be {TOKEN_RULE}"
    if token[1:-1].lower() in RESERVED_NAMES:
        return f"names a file that Windows reserves ({token[1:-1].upper()}); choose another name"
    return None


def validate_token(token: str) -> None:
    """Raise InputError unless `token` follows TOKEN_RULE (its name is then a safe file name)."""
    problem = token_problem(token)
    if problem is not None:
        raise InputError(f"Token {show(token)} {problem}.")


def init_problem(word: Any) -> str | None:
    """Why `word` cannot be an init word (one printable word, not a concept token), or None."""
    if not isinstance(word, str):
        return "must be a single word"
    if not word or not word.isprintable() or any(ch.isspace() for ch in word):
        return "must be a single word, without spaces"
    if len(word) > INIT_MAX:
        return f"is {len(word)} characters long; an init word has at most {INIT_MAX}"
    if word.startswith("<") and word.endswith(">"):
        return "is a concept token; use a word of the model's vocabulary, such as person"
    return None


def validate_init_word(word: str) -> None:
    problem = init_problem(word)
    if problem is not None:
        raise InputError(f"The init word {show(word)} {problem}.")


def plain(value: Any) -> str:
    """A manifest value as written in YAML when it is printable text, else its repr."""
    return value if isinstance(value, str) and value.isprintable() and len(value) <= 200 else show(value)


def show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def inside_images(root: Path, value: str) -> bool:
    """Whether images/<value> resolves (symlinks too) to a path strictly inside the project's images/ folder."""
    try:
        base = root.resolve() / "images"
        target = (root / "images" / value).resolve()
    except (OSError, ValueError, RuntimeError):
        return False
    return target != base and base in target.parents


# -- reading the manifest ------------------------------------------------------------
class _Broken(Exception):
    """A fault in the manifest: a phrase to put after '<file> is broken: '."""


def parse_manifest(raw: Any, path: Path) -> dict[str, Any]:
    """Check the manifest's structure and values; raise InputError naming the file and the field."""
    try:
        return _parse(raw, path.parent)
    except _Broken as exc:
        raise InputError(f"{path} is broken: {exc}.") from None


def _parse(raw: Any, root: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _Broken("it is not a mapping of keys to values")
    if "version" not in raw:
        raise _Broken("it has no version key")
    version = raw["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version != MANIFEST_VERSION:
        raise _Broken(f"version {show(version)} is not supported (expected {MANIFEST_VERSION})")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise _Broken("model must be a non-empty string")
    mc = raw.get("model_config")
    if mc is not None and (not isinstance(mc, str) or not mc):
        raise _Broken("model_config must be a path")
    images_raw = raw.get("images")
    if images_raw is None:
        images_raw = []
    if not isinstance(images_raw, list):
        raise _Broken(f"images must be a list of image entries, not {show(images_raw)}")
    images = [_parse_image(im, i, root) for i, im in enumerate(images_raw)]
    _check_images(images)
    settings = raw.get("settings")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise _Broken(f"settings must be a mapping, not {show(settings)}")
    return {"version": version, "model": model, "model_config": mc, "images": images, "settings": settings}


def _parse_image(im: Any, i: int, root: Path) -> ImageEntry:
    where = f"image entry {i + 1}"
    if not isinstance(im, dict) or not isinstance(im.get("file"), str) or not isinstance(im.get("sha256"), str):
        raise _Broken(f"{where} needs file and sha256")
    file = im["file"]
    if not inside_images(root, file) or not file.isprintable():
        raise _Broken(f"`file: {plain(file)}` of {where} is not a file name inside the project's images/ folder")
    where = f"image {file}"
    concepts_raw = im.get("concepts")
    if concepts_raw is None:
        concepts_raw = []
    if not isinstance(concepts_raw, list):
        raise _Broken(f"concepts of {where} must be a list, not {show(concepts_raw)}")
    concepts = []
    for k, c in enumerate(concepts_raw):
        if not isinstance(c, dict):
            raise _Broken(f"concept {k + 1} of {where} must be a mapping with a token")
        token = c.get("token")
        problem = token_problem(token)
        if problem is not None:
            raise _Broken(f"the token {show(token)} of concept {k + 1} of {where} {problem}")
        init = c.get("init")
        if init is not None and init_problem(init) is not None:
            raise _Broken(f"init of {token} on {where} {init_problem(init)}, not {show(init)}")
        background = c.get("background", False)
        if not isinstance(background, bool):
            raise _Broken(f"background of {token} on {where} must be true or false (unquoted), not {show(background)}")
        gt = c.get("gt_mask")
        if gt is not None and (not isinstance(gt, str) or not inside_images(root, gt) or not gt.isprintable()):
            raise _Broken(f"`gt_mask: {plain(gt)}` of {token} on {where} is not a file name inside the project's images/ folder")
        if any(x.token == token for x in concepts):
            raise _Broken(f"{token} is listed twice on {where}")
        if background and any(x.background for x in concepts):
            raise _Broken(f"{where} has two background concepts")
        concepts.append(Concept(token=token, init=init, background=background, gt_mask=gt))
    return ImageEntry(file=file, sha256=im["sha256"], concepts=concepts)


def _check_images(images: list[ImageEntry]) -> None:
    """Rules across image entries: distinct stems (masks are stored by stem), tokens distinct beyond case."""
    stems: dict[str, str] = {}
    for im in images:
        other = stems.get(im.stem.lower())
        if other is None:
            stems[im.stem.lower()] = im.file
            continue
        if other == im.file:
            raise _Broken(f"the image {im.file} is listed twice; merge its concepts into one entry")
        raise _Broken(
            f"the images {other} and {im.file} have the same file stem {im.stem!r} (masks are stored by stem); "
            "rename one of the files in images/ and its `file:` line"
        )
    tokens: dict[str, str] = {}
    for im in images:
        for c in im.concepts:
            other = tokens.setdefault(c.token.lower(), c.token)
            if other != c.token:
                raise _Broken(f"the tokens {other} and {c.token} differ only in case; use one spelling")


def salvage(root: Path, manifest: Path) -> tuple[list[ImageEntry], dict[str, Any], tuple[int, int], tuple[int, int]]:
    """What still parses in a broken manifest: image entries with the concepts that parse, and the settings.

    Returns (entries, settings, (images kept, of), (concepts kept, of)); an image left with no concept is dropped."""
    try:
        raw = read_manifest(manifest)
    except InputError:
        return [], {}, (0, 0), (0, 0)
    if not isinstance(raw, dict):
        return [], {}, (0, 0), (0, 0)
    images_raw = raw.get("images") if isinstance(raw.get("images"), list) else []
    kept: list[ImageEntry] = []
    concepts_seen = 0
    for i, im in enumerate(images_raw):
        candidates = im.get("concepts") if isinstance(im, dict) and isinstance(im.get("concepts"), list) else []
        concepts_seen += len(candidates)
        if not isinstance(im, dict):
            continue
        good: list[Any] = []
        entry = None
        for c in candidates:
            try:
                trial = _parse_image({**im, "concepts": good + [c]}, i, root)
                _check_images(kept + [trial])
            except _Broken:
                continue
            good.append(c)
            entry = trial
        if entry is not None:
            kept.append(entry)
    settings = raw.get("settings") if isinstance(raw.get("settings"), dict) else {}
    concepts_kept = sum(len(e.concepts) for e in kept)
    return kept, settings, (len(kept), len(images_raw)), (concepts_kept, concepts_seen)
