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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import InputError
from .fsutil import sha256_file
from .manifest import MANIFEST, backup_name, manifest_lock, read_manifest, write_manifest

MANIFEST_VERSION = 1
DEFAULT_MODEL = "builtin:tiny-shapes"
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


@dataclass
class Repair:
    """What `init --force` did with a manifest it could not load."""

    backup: Path  # the broken manifest, kept
    reason: str  # why it could not be loaded, after "it": "is not valid YAML at line 3"
    images: tuple[int, int]  # image entries carried over, of those the broken manifest had
    concepts: tuple[int, int]  # concepts carried over, of those the broken manifest had


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
        raise InputError(f"Token {_show(token)} {problem}.")


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
        raise InputError(f"The init word {_show(word)} {problem}.")


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


def _plain(value: Any) -> str:
    """A manifest value as written in YAML when it is printable text, else its repr."""
    return value if isinstance(value, str) and value.isprintable() and len(value) <= 200 else _show(value)


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


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
                    data["images"], data["settings"], images, concepts = _salvage(root, manifest)
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
        return cls(root, _parse_manifest(read_manifest(manifest), manifest))

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
        self._adopt(_parse_manifest(read_manifest(self.manifest_path), self.manifest_path))

    def check_files(self) -> None:
        """Raise InputError naming the first image or GT mask of the manifest that is missing from images/."""
        for entry in self.images:
            if not self.image_path(entry).is_file() or not _inside_images(self.root, entry.file):
                raise InputError(
                    f"The image images/{entry.file} listed in {self.manifest_path} is missing; put it back, "
                    f"or remove its concepts with `conceptforge remove-concept`."
                )
            for c in entry.concepts:
                if c.gt_mask and (not (self.images_dir / c.gt_mask).is_file() or not _inside_images(self.root, c.gt_mask)):
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
            raise InputError(f"background must be true or false, not {_show(background)}.")
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
            raise InputError(f"{_show(token) if token_problem(token) else token} is not a concept of {self.root}{hint}.")
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


def _inside_images(root: Path, value: str) -> bool:
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


def _parse_manifest(raw: Any, path: Path) -> dict[str, Any]:
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
        raise _Broken(f"version {_show(version)} is not supported (expected {MANIFEST_VERSION})")
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
        raise _Broken(f"images must be a list of image entries, not {_show(images_raw)}")
    images = [_parse_image(im, i, root) for i, im in enumerate(images_raw)]
    _check_images(images)
    settings = raw.get("settings")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise _Broken(f"settings must be a mapping, not {_show(settings)}")
    return {"version": version, "model": model, "model_config": mc, "images": images, "settings": settings}


def _parse_image(im: Any, i: int, root: Path) -> ImageEntry:
    where = f"image entry {i + 1}"
    if not isinstance(im, dict) or not isinstance(im.get("file"), str) or not isinstance(im.get("sha256"), str):
        raise _Broken(f"{where} needs file and sha256")
    file = im["file"]
    if not _inside_images(root, file) or not file.isprintable():
        raise _Broken(f"`file: {_plain(file)}` of {where} is not a file name inside the project's images/ folder")
    where = f"image {file}"
    concepts_raw = im.get("concepts")
    if concepts_raw is None:
        concepts_raw = []
    if not isinstance(concepts_raw, list):
        raise _Broken(f"concepts of {where} must be a list, not {_show(concepts_raw)}")
    concepts = []
    for k, c in enumerate(concepts_raw):
        if not isinstance(c, dict):
            raise _Broken(f"concept {k + 1} of {where} must be a mapping with a token")
        token = c.get("token")
        problem = token_problem(token)
        if problem is not None:
            raise _Broken(f"the token {_show(token)} of concept {k + 1} of {where} {problem}")
        init = c.get("init")
        if init is not None and init_problem(init) is not None:
            raise _Broken(f"init of {token} on {where} {init_problem(init)}, not {_show(init)}")
        background = c.get("background", False)
        if not isinstance(background, bool):
            raise _Broken(f"background of {token} on {where} must be true or false (unquoted), not {_show(background)}")
        gt = c.get("gt_mask")
        if gt is not None and (not isinstance(gt, str) or not _inside_images(root, gt) or not gt.isprintable()):
            raise _Broken(f"`gt_mask: {_plain(gt)}` of {token} on {where} is not a file name inside the project's images/ folder")
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


def _salvage(root: Path, manifest: Path) -> tuple[list[ImageEntry], dict[str, Any], tuple[int, int], tuple[int, int]]:
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
