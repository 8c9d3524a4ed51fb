"""Property-based tests: the manifest loader takes any YAML and gives a Project
or one InputError, and the token rule accepts exactly the documented tokens."""

from __future__ import annotations

import os
import re
import string
import tempfile
from pathlib import Path

import yaml

# Hypothesis keeps caches (unicode tables, constants) in a folder; keep it out of the checkout
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(Path(tempfile.gettempdir()) / "conceptforge-hypothesis"))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conceptforge.errors import InputError  # noqa: E402
from conceptforge.project import Project, validate_token  # noqa: E402

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = ["version", "model", "model_config", "images", "settings", "file", "sha256", "concepts", "token", "init", "background", "gt_mask"]
GOOD_PATHS = ["a.png", "b.png", "a.bmp", "A.png", "sub/c.png"]
BAD_PATHS = ["../x.png", "/etc/passwd", "", ".", "sub", "x\x00.png", "sub/../../y.png", "link.png", "images/a.png", "a\nb.png"]
GOOD_TOKENS = ["<a>", "<A>", "<b>", "<c-1>"]
BAD_TOKENS = ["<a>\n", "<con>", "a", "<x", "<a b>", "", "<" + "x" * 63 + ">"]
GOOD_INITS = [None, "ball", "no", "false", "yes", "日本"]
BAD_INITS = ["<a>", "red ball", "", "a\nb", "x" * 65]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(GOOD_PATHS + BAD_PATHS + GOOD_TOKENS + BAD_TOKENS + BAD_INITS),
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5),
    max_leaves=30,
)


def _maybe(value, weight: int = 20, bad: list | None = None):
    """Mostly `value` (a strategy or a constant), now and then a known bad value or anything at all."""
    base = value if isinstance(value, st.SearchStrategy) else st.just(value)
    other = st.sampled_from(bad) | anything if bad else anything
    return st.integers(0, weight).flatmap(lambda k: base if k else other)


concept = st.fixed_dictionaries(
    {"token": _maybe(st.sampled_from(GOOD_TOKENS), bad=BAD_TOKENS)},
    optional={
        "init": _maybe(st.sampled_from(GOOD_INITS), bad=BAD_INITS),
        "background": _maybe(st.booleans(), bad=["false", "true", 0, 1, None]),
        "gt_mask": _maybe(st.sampled_from([None] + GOOD_PATHS), bad=BAD_PATHS + [7]),
        "extra": scalars,
    },
)
image = st.fixed_dictionaries(
    {
        "file": _maybe(st.sampled_from(GOOD_PATHS), bad=BAD_PATHS),
        "sha256": _maybe("0" * 64),
        "concepts": _maybe(st.lists(concept, min_size=1, max_size=3), bad=[5, {}, "x", None, []]),
    },
    optional={"note": scalars},
)
manifest = _maybe(
    st.fixed_dictionaries(
        {
            "version": _maybe(1, bad=[True, 1.0, "1", 2]),
            "model": _maybe("builtin:tiny-shapes", bad=["", 5]),
            "images": _maybe(st.lists(image, min_size=1, max_size=4), bad=[{}, 5, "x", None, []]),
        },
        optional={
            "settings": _maybe(st.dictionaries(st.text(max_size=6), scalars, max_size=3), bad=[[1], "x"]),
            "model_config": _maybe(st.sampled_from([None, "/cfg"]), bad=["", 3]),
            "owner": scalars,
        },
    ),
    weight=4,
)

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{n}" for p in ("com", "lpt") for n in range(1, 10)}


def _project_dir(tmp: Path) -> Path:
    root = tmp / "proj"
    (root / "images" / "sub").mkdir(parents=True)
    for name in ("a.png", "b.png", "a.bmp", "sub/c.png"):
        (root / "images" / name).write_bytes(b"x")
    (root / "images" / "link.png").symlink_to(tmp / "outside.png")
    (tmp / "outside.png").write_bytes(b"x")
    return root


def _check_invariants(project: Project) -> None:
    base = project.root.resolve() / "images"
    stems = [im.stem.lower() for im in project.images]
    assert len(stems) == len(set(stems))
    spellings: dict[str, str] = {}
    for im in project.images:
        assert base in (project.images_dir / im.file).resolve().parents
        for c in im.concepts:
            validate_token(c.token)
            assert spellings.setdefault(c.token.lower(), c.token) == c.token
            assert isinstance(c.background, bool)
            assert c.init is None or (isinstance(c.init, str) and c.init and not any(ch.isspace() for ch in c.init))
            if c.gt_mask is not None:
                assert base in (project.images_dir / c.gt_mask).resolve().parents


@FUZZ
@given(raw=manifest)
def test_loader_gives_a_project_or_an_input_error(raw):
    with tempfile.TemporaryDirectory() as tmp:
        root = _project_dir(Path(tmp))
        (root / "conceptforge.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
        try:
            project = Project.load(root)
        except InputError as exc:
            message = str(exc)
            assert message.endswith(".") and "\n" not in message.rstrip()
            return
        _check_invariants(project)
        # a loaded manifest survives a write unchanged
        project.save()
        again = Project.load(root)
        assert [im.to_dict() for im in again.images] == [im.to_dict() for im in project.images]
        assert again.settings == project.settings and again.model == project.model


@FUZZ
@given(text=st.text(max_size=200))
def test_loader_takes_any_text(text):
    with tempfile.TemporaryDirectory() as tmp:
        root = _project_dir(Path(tmp))
        (root / "conceptforge.yaml").write_text(text, encoding="utf-8")
        try:
            _check_invariants(Project.load(root))
        except InputError:
            pass


def _documented_rule(token: str) -> bool:
    """project.TOKEN_RULE: <, a letter or digit, then letters, digits, _ or -, >; at most 64 characters; not a Windows device name."""
    allowed = set(string.ascii_letters + string.digits + "_-")
    name = token[1:-1]
    return (
        3 <= len(token) <= 64
        and token[0] == "<"
        and token[-1] == ">"
        and name[0] in string.ascii_letters + string.digits
        and set(name) <= allowed
        and name.lower() not in RESERVED
    )


tokens = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"<[A-Za-z0-9][A-Za-z0-9_\-]{0,70}>", fullmatch=True),
    st.from_regex(r"<[A-Za-z0-9][A-Za-z0-9_\-]{0,10}>\s?", fullmatch=True),
    st.builds(lambda s: f"<{s}>", st.text(max_size=66)),
    st.sampled_from(["<con>", "<Nul>", "<com1>", "<lpt9>", "<com10>", "<a>\n", "<a>", "<" + "x" * 62 + ">"]),
)


@FUZZ
@given(token=tokens)
def test_token_rule(token):
    try:
        validate_token(token)
        accepted = True
    except InputError:
        accepted = False
    assert accepted == _documented_rule(token)
    if accepted:
        name = token[1:-1]
        assert SAFE_NAME.fullmatch(name)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.safetensors"
            path.write_bytes(b"")
            assert [p.name for p in Path(tmp).iterdir()] == [path.name]
