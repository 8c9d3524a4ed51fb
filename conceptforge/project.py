"""The project folder and its manifest, conceptforge.yaml.

A project holds copies of the user's images (each content stored once), the
concepts registered on them, learn settings, runs and exported concepts.  Every
check happens before anything is written, and the manifest is written
atomically, so a refused command leaves the project as it was.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import InputError
from .fsutil import sha256_file, write_yaml_atomic

MANIFEST = "conceptforge.yaml"
MANIFEST_VERSION = 1
DEFAULT_MODEL = "builtin:tiny-shapes"
TOKEN_PATTERN = re.compile(r"^<[A-Za-z0-9][A-Za-z0-9_\-]*>$")


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


def validate_token(token: str) -> None:
    if not TOKEN_PATTERN.match(token):
        raise InputError(f"Token {token!r} must be a name in angle brackets, such as <me> or <my-dog>.")


def check_image_file(path: Path, what: str = "image") -> tuple[int, int]:
    """Return (width, height) of a readable image file or raise InputError."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise InputError(f"The {what} {path} does not exist.")
    if not path.is_file():
        raise InputError(f"The {what} {path} is not a file.")
    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"The {what} {path} is not a readable image ({type(exc).__name__}).") from None


class Project:
    """A conceptforge project folder."""

    def __init__(self, root: Path, data: dict[str, Any]):
        self.root = root
        self.version: int = data["version"]
        self.model: str = data["model"]
        self.model_config: str | None = data.get("model_config")
        self.images: list[ImageEntry] = data["images"]
        self.settings: dict[str, Any] = data["settings"]

    # -- folders -----------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def concepts_dir(self) -> Path:
        return self.root / "concepts"

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    # -- creation and loading ---------------------------------------------
    @classmethod
    def create(cls, root: Path, model: str = DEFAULT_MODEL, force: bool = False, model_config: str | None = None) -> "Project":
        """Create (or with force, re-initialise the manifest of) a project; never deletes files."""
        cls.check_creatable(root, force)
        manifest = root / MANIFEST
        data: dict[str, Any] = {"version": MANIFEST_VERSION, "model": model, "model_config": model_config, "images": [], "settings": {}}
        if manifest.exists():  # --force keeps images and concepts, resets the model
            old = cls.load(root)
            data["images"], data["settings"] = old.images, old.settings
        project = cls(root, data)
        root.mkdir(parents=True, exist_ok=True)
        project.images_dir.mkdir(exist_ok=True)
        project.runs_dir.mkdir(exist_ok=True)
        project.save()
        return project

    @staticmethod
    def check_creatable(root: Path, force: bool) -> None:
        """Refuse an existing project (unless force) or a path that is a file."""
        if (root / MANIFEST).exists() and not force:
            raise InputError(f"{root} is already a conceptforge project; pass --force to re-initialise it.")
        if root.exists() and not root.is_dir():
            raise InputError(f"{root} exists and is not a folder.")

    @classmethod
    def load(cls, root: Path) -> "Project":
        if not root.exists():
            raise InputError(f"The project folder {root} does not exist.")
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise InputError(f"{root} is not a conceptforge project (no {MANIFEST}); run `conceptforge init {root}` first.")
        try:
            raw = yaml.safe_load(manifest.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" at line {line + 1}" if line is not None else ""
            raise InputError(f"{manifest} is not valid YAML{where}.") from None
        return cls(root, _parse_manifest(raw, manifest))

    def save(self) -> None:
        data = {
            "version": self.version,
            "model": self.model,
            "model_config": self.model_config,
            "images": [im.to_dict() for im in self.images],
            "settings": self.settings,
        }
        write_yaml_atomic(self.manifest_path, data)

    # -- concepts ------------------------------------------------------------
    def concepts(self) -> list[tuple[ImageEntry, Concept]]:
        return [(im, c) for im in self.images for c in im.concepts]

    def tokens(self) -> list[str]:
        """Distinct tokens in order of first registration."""
        seen: dict[str, None] = {}
        for _, c in self.concepts():
            seen.setdefault(c.token, None)
        return list(seen)

    def concept_init(self, token: str) -> str | None:
        for _, c in self.concepts():
            if c.token == token and c.init:
                return c.init
        return None

    def add_concept(
        self,
        image: Path,
        token: str,
        init: str | None = None,
        background: bool = False,
        gt_mask: Path | None = None,
        is_model_word: Callable[[str], bool] | None = None,
    ) -> tuple[ImageEntry, Concept]:
        """Copy the image in (once per content) and register a concept on it."""
        validate_token(token)
        size = check_image_file(image)
        if is_model_word is not None and is_model_word(token):
            raise InputError(f"Token {token} is already a word of the model's tokenizer; choose another name.")
        if gt_mask is not None:
            mask_size = check_image_file(gt_mask, what="mask")
            if mask_size != size:
                raise InputError(f"The mask {gt_mask} is {mask_size[0]}x{mask_size[1]} but the image {image} is {size[0]}x{size[1]}.")
        digest = sha256_file(image)
        entry = next((im for im in self.images if im.sha256 == digest), None)
        if entry is not None and any(c.token == token for c in entry.concepts):
            raise InputError(f"Token {token} is already a concept of the image {image}.")
        if entry is not None and background and any(c.background for c in entry.concepts):
            raise InputError(f"The image {image} already has a background concept.")
        new_entry = entry is None
        if new_entry:
            entry = ImageEntry(file=self._free_name(image.stem, image.suffix.lower() or ".png", digest), sha256=digest)
        concept = Concept(token=token, init=init, background=background)
        if gt_mask is not None:
            concept.gt_mask = f"{Path(entry.file).stem}.{concept.name}.gt.png"
        # all checks passed: write files, then the manifest
        self.images_dir.mkdir(exist_ok=True)
        if new_entry:
            shutil.copyfile(image, self.images_dir / entry.file)
        if gt_mask is not None:
            _copy_mask(gt_mask, self.images_dir / concept.gt_mask)
        entry.concepts.append(concept)
        if new_entry:
            self.images.append(entry)
        self.save()
        return entry, concept

    def _free_name(self, stem: str, suffix: str, digest: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_\-]", "_", stem) or "image"
        taken = {im.file for im in self.images} | {p.name for p in self.images_dir.glob("*")}
        name = safe + suffix
        if name in taken:
            name = f"{safe}-{digest[:8]}{suffix}"
        return name

    def image_path(self, entry: ImageEntry) -> Path:
        return self.images_dir / entry.file

    def gt_mask_path(self, concept: Concept) -> Path | None:
        return self.images_dir / concept.gt_mask if concept.gt_mask else None


def _copy_mask(src: Path, dst: Path) -> None:
    """Store a user mask as a binary PNG."""
    import numpy as np
    from PIL import Image

    with Image.open(src) as im:
        arr = np.asarray(im.convert("L")) > 127
    Image.fromarray((arr * 255).astype("uint8"), "L").save(dst)


def _parse_manifest(raw: Any, path: Path) -> dict[str, Any]:
    """Check the manifest's structure; raise InputError naming the file and the fault."""

    def bad(what: str) -> InputError:
        return InputError(f"{path} is broken: {what}.")

    if not isinstance(raw, dict):
        raise bad("it is not a mapping of keys to values")
    if "version" not in raw:
        raise bad("it has no version key")
    if raw["version"] != MANIFEST_VERSION:
        raise bad(f"version {raw['version']!r} is not supported (expected {MANIFEST_VERSION})")
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model must be a non-empty string")
    images_raw = raw.get("images") or []
    if not isinstance(images_raw, list):
        raise bad("images must be a list")
    images: list[ImageEntry] = []
    for i, im in enumerate(images_raw):
        if not isinstance(im, dict) or not isinstance(im.get("file"), str) or not isinstance(im.get("sha256"), str):
            raise bad(f"image entry {i + 1} needs file and sha256")
        concepts = []
        for c in im.get("concepts") or []:
            if not isinstance(c, dict) or not isinstance(c.get("token"), str) or not TOKEN_PATTERN.match(c["token"]):
                raise bad(f"a concept of image {im['file']} has no valid token")
            concepts.append(
                Concept(token=c["token"], init=c.get("init"), background=bool(c.get("background", False)), gt_mask=c.get("gt_mask"))
            )
        images.append(ImageEntry(file=im["file"], sha256=im["sha256"], concepts=concepts))
    settings = raw.get("settings") or {}
    if not isinstance(settings, dict):
        raise bad("settings must be a mapping")
    mc = raw.get("model_config")
    if mc is not None and not isinstance(mc, str):
        raise bad("model_config must be a path")
    return {"version": raw["version"], "model": model, "model_config": mc, "images": images, "settings": settings}
