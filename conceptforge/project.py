"""The project folder and its manifest, conceptforge.yaml.

A project holds copies of the user's images (each content stored once, each
with its own file stem, since masks are stored by stem), the concepts
registered on them, learn settings, runs and exported concepts.  Every check
happens before anything is written; changes to the manifest re-read it under
the project's lock (.conceptforge.lock) and write it atomically, keeping the
user's comments, so concurrent commands all land and a refused command leaves
the project as it was.  Every path read from the manifest must stay inside the
project's images/ folder.  Nothing the user made is deleted: removing a concept
leaves its image and mask files in images/.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .entries import (
    INIT_MAX,
    MANIFEST_VERSION,
    TOKEN_MAX,
    TOKEN_PATTERN,
    TOKEN_RULE,
    Concept,
    ImageEntry,
    init_problem,
    inside_images,
    parse_manifest,
    salvage,
    show,
    token_problem,
    validate_init_word,
    validate_token,
)
from .errors import InputError
from .fsutil import sha256_file
from .manifest import MANIFEST, backup_name, manifest_lock, read_manifest, write_manifest

DEFAULT_MODEL = "builtin:tiny-shapes"

__all__ = [
    "DEFAULT_MODEL",
    "INIT_MAX",
    "MANIFEST",
    "MANIFEST_VERSION",
    "TOKEN_MAX",
    "TOKEN_PATTERN",
    "TOKEN_RULE",
    "Concept",
    "ImageEntry",
    "Project",
    "Repair",
    "check_gt_mask",
    "check_image_file",
    "init_problem",
    "token_problem",
    "validate_init_word",
    "validate_token",
]


@dataclass
class Repair:
    """What `init --force` did with a manifest it could not load."""

    backup: Path  # the broken manifest, kept
    reason: str  # why it could not be loaded, after "it": "is not valid YAML at line 3"
    images: tuple[int, int]  # image entries carried over, of those the broken manifest had
    concepts: tuple[int, int]  # concepts carried over, of those the broken manifest had


def check_image_file(path: Path, what: str = "image") -> tuple[int, int]:
    """Return (width, height) of a readable image file, as a viewer shows it, or raise InputError."""
    from .imageio import image_size

    return image_size(path, what)


def check_gt_mask(path: Path, size: tuple[int, int]):
    """A user's mask as a bool array: readable, of the image's size, neither empty nor full."""
    from .imageio import open_mask

    mask = open_mask(path)
    h, w = mask.shape
    if (w, h) != tuple(size):
        raise InputError(f"The mask {path} is {w}x{h} but the image is {size[0]}x{size[1]}.")
    if not mask.any():
        raise InputError(f"The mask {path} is empty: no pixel is brighter than 50% (white marks the concept).")
    if mask.all():
        raise InputError(f"The mask {path} covers the whole image: every pixel is brighter than 50% (black marks the rest).")
    return mask


# -- the project ------------------------------------------------------------------
class Project:
    """A conceptforge project folder."""

    def __init__(self, root: Path, data: dict[str, Any]):
        self.root = root
        self._adopt(data)
        self.repair: Repair | None = None  # set by create() when it replaced a broken manifest

    def _adopt(self, data: dict[str, Any]) -> None:
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
        """Create a project, or with force re-initialise its manifest (new model, images and settings kept).

        A manifest that cannot be loaded is kept as conceptforge.yaml.broken-<time>
        and replaced by one with the image entries that still parse (see .repair).
        Never deletes files."""
        cls.check_creatable(root, force)
        try:
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "runs").mkdir(exist_ok=True)
        except OSError as exc:
            raise InputError(f"Cannot create the project folder {root} ({exc.strerror or type(exc).__name__}).") from None
        data: dict[str, Any] = {"version": MANIFEST_VERSION, "model": model, "model_config": model_config, "images": [], "settings": {}}
        with manifest_lock(root):
            manifest = root / MANIFEST
            repair = None
            if manifest.is_file():
                try:
                    old = cls.load(root)
                    data["images"], data["settings"] = old.images, old.settings
                except InputError as exc:
                    data["images"], data["settings"], images, concepts = salvage(root, manifest)
                    backup = backup_name(manifest)
                    shutil.copy2(manifest, backup)
                    reason = str(exc).removeprefix(f"{manifest} ").rstrip(".")
                    repair = Repair(backup=backup, reason=reason, images=images, concepts=concepts)
            project = cls(root, data)
            project.repair = repair
            project.save()
        return project

    @staticmethod
    def check_creatable(root: Path, force: bool) -> None:
        """Refuse an existing project (unless force), or a path that is, or lies under, a file."""
        if (root / MANIFEST).exists() and not force:
            raise InputError(f"{root} is already a conceptforge project; pass --force to re-initialise it.")
        if root.exists() and not root.is_dir():
            raise InputError(f"{root} exists and is not a folder.")
        if (root / MANIFEST).exists() and not (root / MANIFEST).is_file():
            raise InputError(f"{root / MANIFEST} is not a file; move it out of the way first.")
        for parent in root.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    raise InputError(f"Cannot create {root}: {parent} is a file, not a folder.")
                break

    @classmethod
    def load(cls, root: Path) -> "Project":
        if not root.exists():
            raise InputError(f"The project folder {root} does not exist.")
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise InputError(f"{root} is not a conceptforge project (no {MANIFEST}); run `conceptforge init {root}` first.")
        return cls(root, parse_manifest(read_manifest(manifest), manifest))

    def save(self) -> None:
        """Write the manifest atomically, keeping the file's comments and unknown keys."""
        data = {
            "version": self.version,
            "model": self.model,
            "model_config": self.model_config,
            "images": [im.to_dict() for im in self.images],
            "settings": self.settings,
        }
        write_manifest(self.manifest_path, data)

    def _reload(self) -> None:
        self._adopt(parse_manifest(read_manifest(self.manifest_path), self.manifest_path))

    def check_files(self) -> None:
        """Raise InputError naming the first image or GT mask of the manifest that is missing from images/."""
        for entry in self.images:
            if not self.image_path(entry).is_file() or not inside_images(self.root, entry.file):
                raise InputError(
                    f"The image images/{entry.file} listed in {self.manifest_path} is missing; put it back, "
                    f"or remove its concepts with `conceptforge remove-concept`."
                )
            for c in entry.concepts:
                if c.gt_mask and (not (self.images_dir / c.gt_mask).is_file() or not inside_images(self.root, c.gt_mask)):
                    raise InputError(
                        f"The GT mask images/{c.gt_mask} of {c.token} listed in {self.manifest_path} is missing; put it back."
                    )

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
        """Copy the image in (once per content) and register a concept on it.

        The manifest is re-read under the project's lock first, so this object
        then holds the manifest as it is on disk plus the new concept."""
        validate_token(token)
        if init is not None:
            validate_init_word(init)
        if not isinstance(background, bool):
            raise InputError(f"background must be true or false, not {show(background)}.")
        size = check_image_file(image)
        if is_model_word is not None and is_model_word(token):
            raise InputError(f"Token {token} is already a word of the model's tokenizer; choose another name.")
        mask = check_gt_mask(gt_mask, size) if gt_mask is not None else None
        digest = sha256_file(image)
        self._check_new_concept(image, digest, token, background)  # refuse before taking the lock, if we can
        with manifest_lock(self.root):
            self._reload()
            entry = self._check_new_concept(image, digest, token, background)
            new_entry = entry is None
            copy = False
            if entry is None:
                name, copy = self._free_name(image, digest)
                entry = ImageEntry(file=name, sha256=digest)
            concept = Concept(token=token, init=init, background=background)
            if mask is not None:
                concept.gt_mask = self._free_mask_name(entry, concept)
            # all checks passed: write files, then the manifest
            self.images_dir.mkdir(exist_ok=True)
            if copy:
                shutil.copyfile(image, self.images_dir / entry.file)
            if mask is not None:
                _save_mask(mask, self.images_dir / concept.gt_mask)
            entry.concepts.append(concept)
            if new_entry:
                self.images.append(entry)
            self.save()
        return entry, concept

    def _check_new_concept(self, image: Path, digest: str, token: str, background: bool) -> ImageEntry | None:
        """Refuse a token that clashes with the manifest; return the image's entry if it has one."""
        clash = next((t for t in self.tokens() if t.lower() == token.lower() and t != token), None)
        if clash is not None:
            raise InputError(f"Token {token} differs only in case from the project's token {clash}; use {clash} or another name.")
        entry = next((im for im in self.images if im.sha256 == digest), None)
        if entry is not None and any(c.token == token for c in entry.concepts):
            raise InputError(f"Token {token} is already a concept of the image {image}.")
        if entry is not None and background and any(c.background for c in entry.concepts):
            raise InputError(f"The image {image} already has a background concept.")
        return entry

    def remove_concept(self, token: str) -> list[tuple[ImageEntry, bool]]:
        """Remove a token from every image it is on; an image left without concepts
        leaves the manifest, its files stay in images/.  Returns (entry, entry removed)."""
        self._images_with(token)  # refuse before taking the lock, if we can
        with manifest_lock(self.root):
            self._reload()
            hit = self._images_with(token)
            for im in hit:
                im.concepts = [c for c in im.concepts if c.token != token]
            self.images = [im for im in self.images if im.concepts or all(im is not h for h in hit)]
            self.save()
        return [(im, not im.concepts) for im in hit]

    def _images_with(self, token: str) -> list[ImageEntry]:
        hit = [im for im in self.images if any(c.token == token for c in im.concepts)]
        if not hit:
            near = next((t for t in self.tokens() if t.lower() == str(token).lower()), None)
            hint = f" (did you mean {near}?)" if near else f"; `conceptforge concepts {self.root}` lists them"
            raise InputError(f"{show(token) if token_problem(token) else token} is not a concept of {self.root}{hint}.")
        return hit

    def _free_name(self, image: Path, digest: str) -> tuple[str, bool]:
        """A file name under images/ whose stem no manifest entry has, and whether the image must be copied there
        (not when a file of that name already holds the same content)."""
        safe = re.sub(r"[^A-Za-z0-9_\-]", "_", image.stem)[:100] or "image"
        suffix = image.suffix.lower() if re.fullmatch(r"\.[a-z0-9]{1,10}", image.suffix.lower()) else ""
        stems = {im.stem.lower() for im in self.images}
        candidates = [safe, f"{safe}-{digest[:8]}"] + [f"{safe}-{digest[:8]}-{n}" for n in range(2, 1000)]
        for stem in candidates:
            if stem.lower() in stems:
                continue
            path = self.images_dir / (stem + suffix)
            if not path.exists():
                return path.name, True
            if path.is_file() and not path.is_symlink() and sha256_file(path) == digest:
                return path.name, False
        raise InputError(f"No free file name for {image} in {self.images_dir}.")

    def _free_mask_name(self, entry: ImageEntry, concept: Concept) -> str:
        used = {c.gt_mask for _, c in self.concepts() if c.gt_mask}
        name = f"{entry.stem}.{concept.name}.gt.png"
        n = 1
        while name in used or (self.images_dir / name).exists():
            n += 1
            name = f"{entry.stem}.{concept.name}-{n}.gt.png"
        return name

    def image_path(self, entry: ImageEntry) -> Path:
        return self.images_dir / entry.file

    def gt_mask_path(self, concept: Concept) -> Path | None:
        return self.images_dir / concept.gt_mask if concept.gt_mask else None


def _save_mask(mask, dst: Path) -> None:
    """Store a user mask as a binary PNG."""
    import numpy as np
    from PIL import Image

    Image.fromarray((np.asarray(mask) * 255).astype("uint8"), "L").save(dst)
