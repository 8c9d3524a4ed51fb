"""The project folder under hostile or unusual input: images read as a viewer
shows them, manifest paths confined to images/, concurrent add-concept, unique
stems, strict validation, comment-keeping writes, init repair, remove-concept."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cli_helpers import cf, tree_digest
from conceptforge.errors import InputError
from conceptforge.imageio import MAX_PIXELS, open_mask, open_rgb
from conceptforge.project import Project

MANIFEST = "conceptforge.yaml"


def _text(result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _refused(proj: Path, *args, needle: str) -> str:
    """The command exits 2 with one sentence containing `needle` and leaves the project unchanged."""
    before = tree_digest(proj)
    r = cf(*args)
    text = _text(r)
    assert r.exit_code == 2, r.output
    assert needle.lower() in text.lower(), r.output
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert text.startswith("error:") and text.count("error:") == 1, r.output
    assert tree_digest(proj) == before
    return text


def _rgb(path: Path, size=(32, 32), colour=(200, 30, 30)) -> Path:
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:] = colour
    arr[4:12, 4:12] = (20, 200, 20)
    Image.fromarray(arr).save(path)
    return path


def _mask(path: Path, size=(32, 32), box=(4, 12)) -> Path:
    m = np.zeros((size[1], size[0]), np.uint8)
    m[box[0] : box[1], box[0] : box[1]] = 255
    Image.fromarray(m).save(path)
    return path


@pytest.fixture
def proj(tmp_path) -> Path:
    """A project on the built-in model with one concept on images/a.png."""
    root = tmp_path / "proj"
    assert cf("init", root).exit_code == 0
    r = cf("add-concept", root, _rgb(tmp_path / "a.png"), "--token", "<a>", "--init", "circle")
    assert r.exit_code == 0, r.output
    return root


def _edit(proj: Path, change) -> None:
    data = yaml.safe_load((proj / MANIFEST).read_text())
    change(data)
    (proj / MANIFEST).write_text(yaml.safe_dump(data, sort_keys=False))


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height 1-bit pixels (its pixel data is cut short)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


# -- images as a viewer shows them ------------------------------------------------
def test_exif_orientation_is_applied(tmp_path, proj):
    arr = np.zeros((10, 20, 3), np.uint8)  # stored 20 wide, 10 high
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    path = tmp_path / "phone.png"
    Image.fromarray(arr).save(path, exif=exif)
    im = open_rgb(path)
    assert im.size == (10, 20) and im.mode == "RGB"
    assert im.getpixel((5, 2)) == (255, 0, 0) and im.getpixel((5, 17)) == (0, 0, 255)
    # a GT mask drawn on the upright picture fits it
    mask = _mask(tmp_path / "upright_mask.png", size=(10, 20), box=(2, 8))
    r = cf("add-concept", proj, path, "--token", "<p>", "--gt-mask", mask)
    assert r.exit_code == 0, r.output


def test_16_bit_grey_is_scaled_not_saturated(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(path)  # 50% grey in 16 bits
    assert Image.open(path).mode.startswith("I")
    assert open_rgb(path).getpixel((0, 0)) == (128, 128, 128)
    tiff = tmp_path / "deep32.tif"
    Image.fromarray(np.full((8, 8), 65535, np.int32)).save(tiff)  # mode I, 16-bit range
    assert Image.open(tiff).mode == "I"
    assert open_rgb(tiff).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_mask_is_scaled_then_thresholded(tmp_path, proj):
    m = np.full((32, 32), 20000, np.uint16)  # 31%: outside
    m[4:12, 4:12] = 50000  # 76%: inside
    path = tmp_path / "mask16.png"
    Image.fromarray(m).save(path)
    got = open_mask(path)
    assert got.dtype == bool and got.sum() == 64 and got[4:12, 4:12].all()
    r = cf("add-concept", proj, tmp_path / "a.png", "--token", "<m>", "--gt-mask", path)
    assert r.exit_code == 0, r.output
    stored = np.asarray(Image.open(proj / "images" / "a.m.gt.png")) > 0
    assert (stored == got).all()


def test_transparency_on_white_for_images_and_outside_for_masks(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere, but only the top row is opaque
    rgba[0, :, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    im = open_rgb(path)
    assert im.getpixel((0, 0)) == (255, 0, 0) and im.getpixel((0, 3)) == (255, 255, 255)
    white = np.full((4, 4, 4), 255, np.uint8)
    white[1:, :, 3] = 0  # a white brush stroke on a transparent layer
    mask_path = tmp_path / "stroke.png"
    Image.fromarray(white, "RGBA").save(mask_path)
    assert open_mask(mask_path).tolist() == [[True] * 4] + [[False] * 4] * 3
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    pal_path = tmp_path / "pal.png"
    pal.save(pal_path, transparency=0)
    got = open_rgb(pal_path)
    assert [got.getpixel((0, 0)), got.getpixel((1, 0))] == [(255, 255, 255), (0, 255, 0)]


def test_cmyk_is_converted(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(path, quality=100)
    r, g, b = open_rgb(path).getpixel((4, 4))
    assert r < 20 and g > 235 and b > 235  # cyan


@pytest.mark.parametrize("size", [(20000, 20000), (9000, 8000)])
def test_huge_image_is_refused_with_a_sentence(tmp_path, proj, size):
    path = _png_header_only(tmp_path / "huge.png", *size)
    with pytest.raises(InputError, match="megapixels"):
        open_rgb(path)
    text = _refused(proj, "add-concept", proj, path, "--token", "<h>", needle=f"over the limit of {MAX_PIXELS // 1_000_000} megapixels")
    assert "huge.png" in text


def test_truncated_and_foreign_formats_are_refused(tmp_path, proj):
    good = _rgb(tmp_path / "full.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    _refused(proj, "add-concept", proj, cut, "--token", "<c>", needle="cut.png is not a readable image")
    eps = tmp_path / "drawing.eps"  # a format that would run Ghostscript
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    _refused(proj, "add-concept", proj, eps, "--token", "<e>", needle="not a readable image")


# -- paths in the manifest -----------------------------------------------------------
@pytest.mark.parametrize("value", ["../../../../x/y.png", "/etc/passwd", "", "sub/../../outside.png"])
def test_image_path_outside_images_is_refused(proj, value):
    _edit(proj, lambda d: d["images"][0].__setitem__("file", value))
    text = _refused(proj, "concepts", proj, needle=f"file: {value}")
    assert "images/ folder" in text and MANIFEST in text


def test_gt_mask_path_outside_images_is_refused(proj):
    _edit(proj, lambda d: d["images"][0]["concepts"][0].__setitem__("gt_mask", "../conceptforge.yaml"))
    _refused(proj, "concepts", proj, needle="gt_mask: ../conceptforge.yaml")


def test_symlink_out_of_images_is_refused(tmp_path, proj):
    secret = _rgb(tmp_path / "secret.png")
    (proj / "images" / "link.png").symlink_to(secret)
    _edit(proj, lambda d: d["images"][0].__setitem__("file", "link.png"))
    _refused(proj, "concepts", proj, needle="file: link.png")


def test_model_may_point_outside(tmp_path, proj):
    _edit(proj, lambda d: d.update(model=str(tmp_path / "elsewhere" / "model.safetensors"), model_config=str(tmp_path / "cfg")))
    assert Project.load(proj).model.endswith("model.safetensors")


# -- concurrent add-concept ------------------------------------------------------------
def test_concurrent_add_concept_all_land(tmp_path):
    root = tmp_path / "proj"
    assert cf("init", root).exit_code == 0
    images = [_rgb(tmp_path / f"img{k}.png", colour=(40 * k, 90, 200 - 40 * k)) for k in range(3)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "conceptforge", "add-concept", str(root), str(images[k % 2]), "--token", f"<c{k}>", "-q"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for k in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    project = Project.load(root)
    assert sorted(project.tokens()) == ["<c0>", "<c1>", "<c2>"]
    assert sorted(im.file for im in project.images) == ["img0.png", "img1.png"]
    assert (root / ".conceptforge.lock").is_file()


# -- stems ------------------------------------------------------------------------
def test_same_stem_gets_a_new_stem(tmp_path, proj):
    (tmp_path / "src").mkdir()
    png = _rgb(tmp_path / "src" / "x.png", colour=(1, 100, 1))
    bmp = tmp_path / "src" / "x.bmp"
    Image.fromarray(255 - np.asarray(Image.open(png))).save(bmp)
    assert cf("add-concept", proj, png, "--token", "<x1>").exit_code == 0
    r = cf("add-concept", proj, bmp, "--token", "<x2>")
    assert r.exit_code == 0, r.output
    stems = [im.stem for im in Project.load(proj).images]
    assert len(stems) == len(set(stems)) == 3


def test_manifest_with_two_entries_of_one_stem_is_refused(tmp_path, proj):
    _rgb(proj / "images" / "a.bmp", colour=(1, 2, 3))
    _edit(proj, lambda d: d["images"].append({"file": "a.bmp", "sha256": "0" * 64, "concepts": [{"token": "<b>"}]}))
    text = _refused(proj, "concepts", proj, needle="same file stem")
    assert "a.png" in text and "a.bmp" in text and "rename" in text


# -- validation ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "token, needle",
    [
        ("<a>\n", "angle brackets"),
        ("<" + "x" * 63 + ">", "at most 64"),
        ("<con>", "Windows reserves"),
        ("<my dog>", "angle brackets"),
        ("<-x>", "angle brackets"),
    ],
)
def test_token_rules(tmp_path, proj, token, needle):
    _refused(proj, "add-concept", proj, tmp_path / "a.png", "--token", token, needle=needle)


def test_longest_token_is_accepted(tmp_path, proj):
    token = "<" + "x" * 62 + ">"
    assert len(token) == 64
    r = cf("add-concept", proj, tmp_path / "a.png", "--token", token)
    assert r.exit_code == 0, r.output


def test_token_differing_only_in_case_is_refused(tmp_path, proj):
    other = _rgb(tmp_path / "other.png", colour=(9, 9, 9))
    _refused(proj, "add-concept", proj, other, "--token", "<A>", needle="differs only in case")
    _edit(proj, lambda d: d["images"][0]["concepts"].append({"token": "<A>"}))
    _refused(proj, "concepts", proj, needle="differ only in case")


@pytest.mark.parametrize(
    "init, needle",
    [("red ball", "single word"), ("<a>", "concept token"), ("日本", "does not know"), ("", "single word")],
)
def test_init_word_rules(tmp_path, proj, init, needle):
    _refused(proj, "add-concept", proj, tmp_path / "a.png", "--token", "<i>", "--init", init, needle=needle)


def test_init_word_split_into_pieces_gets_a_note(tmp_path, proj):
    r = cf("add-concept", proj, tmp_path / "a.png", "--token", "<i>", "--init", "ball")
    assert r.exit_code == 0, r.output
    assert "b a l l</w>" in _text(r) and "the first, b, seeds <i>" in _text(r)
    r = cf("add-concept", proj, tmp_path / "a.png", "--token", "<j>", "--init", "circle")
    assert r.exit_code == 0 and "Note" not in r.output


@pytest.mark.parametrize("fill, needle", [(0, "is empty"), (255, "covers the whole image")])
def test_empty_or_full_gt_mask_is_refused(tmp_path, proj, fill, needle):
    mask = tmp_path / "flat.png"
    Image.new("L", (32, 32), fill).save(mask)
    _refused(proj, "add-concept", proj, tmp_path / "a.png", "--token", "<g>", "--gt-mask", mask, needle=needle)


def _set(path: list, value):
    def change(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    "path, value, needle",
    [
        (["images", 0, "concepts"], 5, "concepts of image a.png must be a list"),
        (["images", 0, "concepts", 0, "init"], 5, "init of <a>"),
        (["images", 0, "concepts", 0, "init"], ["a", "b"], "init of <a>"),
        (["images", 0, "concepts", 0, "gt_mask"], 7, "gt_mask: 7"),
        (["images", 0, "concepts", 0, "background"], "false", "background of <a>"),
        (["images", 0, "concepts", 0, "token"], 5, "token 5"),
        (["images"], {}, "images must be a list"),
        (["settings"], [1], "settings must be a mapping"),
        (["version"], True, "version True"),
        (["model_config"], 3, "model_config"),
    ],
)
def test_wrong_types_in_a_hand_edited_manifest(proj, path, value, needle):
    _edit(proj, _set(path, value))
    text = _refused(proj, "concepts", proj, needle=needle)
    assert MANIFEST in text and "broken" in text
    with pytest.raises(InputError):
        Project.load(proj)


def test_concepts_5_at_top_level_is_ignored_as_unknown_key(proj):
    _edit(proj, lambda d: d.update(concepts=5))
    assert Project.load(proj).tokens() == ["<a>"]


# -- comment-keeping writes -----------------------------------------------------------------
def test_add_and_remove_keep_comments_and_unknown_keys(tmp_path, proj):
    text = (proj / MANIFEST).read_text()
    text = "# my project\n" + text.replace("images:", "owner: me  # who\nimages:  # the pictures\n", 1)
    text = text.replace("  concepts:", "  note: kept\n  concepts:", 1)
    (proj / MANIFEST).write_text(text)
    other = _rgb(tmp_path / "other.png", colour=(9, 9, 9))
    assert cf("add-concept", proj, other, "--token", "<o>", "--init", "no").exit_code == 0
    after = (proj / MANIFEST).read_text()
    for piece in ("# my project", "owner: me  # who", "images:  # the pictures", "note: kept"):
        assert piece in after, after
    data = yaml.safe_load(after)
    assert data["images"][1]["concepts"][0]["init"] == "no"  # quoted: a plain no would read as false
    assert Project.load(proj).concept_init("<o>") == "no"
    assert cf("remove-concept", proj, "--token", "<o>").exit_code == 0
    after = (proj / MANIFEST).read_text()
    assert "# my project" in after and "note: kept" in after and "<o>" not in after


# -- init -----------------------------------------------------------------------------------
def test_init_path_with_markup(tmp_path):
    root = tmp_path / "x[/]y"
    r = cf("init", root)
    assert r.exit_code == 0, r.output
    assert str(root) in _text(r)
    assert (root / MANIFEST).is_file()
    r = cf("concepts", root)
    assert r.exit_code == 0 and "x[/]y" in r.output


def test_markup_in_user_text_is_printed_verbatim(tmp_path):
    root = tmp_path / "p[bold]q"
    assert cf("init", root).exit_code == 0
    src = tmp_path / "[red]x[/]"  # the folders "[red]x[" and "]"
    src.mkdir(parents=True)
    image = _rgb(src / "pic.png")
    r = cf("add-concept", root, image, "--token", "<a>", "--init", "ball")
    assert r.exit_code == 0 and "images/pic.png" in _text(r), r.output
    r = cf("add-concept", root, src / "gone[/].png", "--token", "<b>")
    assert r.exit_code == 2 and "gone[/].png does not exist" in _text(r), r.output
    r = cf("remove-concept", root, "--token", "<a>")
    assert r.exit_code == 0 and "Removed <a>" in r.output, r.output
    r = cf("init", root, "--force", "-q")
    assert r.exit_code == 0 and r.output.strip() == str(root)


def test_init_under_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = cf("init", tmp_path / "afile" / "deeper" / "proj")
    assert r.exit_code == 2 and "is a file" in _text(r), r.output
    assert not (tmp_path / "afile" / "deeper").exists()


def test_init_force_repairs_a_broken_manifest(tmp_path, proj):
    other = _rgb(tmp_path / "other.png", colour=(9, 9, 9))
    assert cf("add-concept", proj, other, "--token", "<o>").exit_code == 0
    assert cf("add-concept", proj, other, "--token", "<p>").exit_code == 0

    def breakage(d):
        d["images"][1]["concepts"][1]["background"] = "false"  # <p> is lost, <o> on the same image is kept
        d["images"].append({"file": "../../x.png", "sha256": "0" * 64, "concepts": [{"token": "<q>"}]})

    _edit(proj, breakage)
    broken = (proj / MANIFEST).read_bytes()
    before = set(p.relative_to(proj) for p in proj.rglob("*"))
    _refused(proj, "init", proj, needle="--force")
    r = cf("init", proj, "--force")
    assert r.exit_code == 0, r.output
    text = _text(r)
    assert "Repaired" in text and "(it is broken: background of <p>" in text
    assert "2 of its 3 image entries and 2 of its 4 concepts were carried over" in text
    backups = list(proj.glob("conceptforge.yaml.broken-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == broken and backups[0].name in text
    assert Project.load(proj).tokens() == ["<a>", "<o>"]
    assert before <= set(p.relative_to(proj) for p in proj.rglob("*"))  # nothing deleted


def test_init_force_on_unreadable_yaml_starts_fresh(proj):
    (proj / MANIFEST).write_text("version: 1\nimages: [unclosed\n")
    r = cf("init", proj, "--force")
    assert r.exit_code == 0, r.output
    assert "(it is not valid YAML at line 3)" in _text(r) and "starts afresh" in _text(r)
    assert Project.load(proj).images == []
    assert (proj / "images" / "a.png").is_file()
    assert len(list(proj.glob("conceptforge.yaml.broken-*"))) == 1


def test_init_force_on_a_valid_manifest_keeps_comments(proj):
    (proj / MANIFEST).write_text("# keep\n" + (proj / MANIFEST).read_text())
    assert cf("init", proj, "--force").exit_code == 0
    assert (proj / MANIFEST).read_text().startswith("# keep\n")
    assert not list(proj.glob("conceptforge.yaml.broken-*"))


# -- check_files ---------------------------------------------------------------------------
def test_check_files_names_the_missing_file(tmp_path, proj):
    Project.load(proj).check_files()
    assert cf("add-concept", proj, tmp_path / "a.png", "--token", "<m>", "--gt-mask", _mask(tmp_path / "m.png")).exit_code == 0
    (proj / "images" / "a.m.gt.png").unlink()
    with pytest.raises(InputError, match="GT mask images/a.m.gt.png of <m>"):
        Project.load(proj).check_files()
    (proj / "images" / "a.png").unlink()
    with pytest.raises(InputError, match="image images/a.png"):
        Project.load(proj).check_files()


# -- remove-concept ---------------------------------------------------------------------------
def test_remove_concept(tmp_path, proj):
    other = _rgb(tmp_path / "other.png", colour=(9, 9, 9))
    assert cf("add-concept", proj, other, "--token", "<a>").exit_code == 0
    assert cf("add-concept", proj, other, "--token", "<o>").exit_code == 0
    files = set(p.name for p in (proj / "images").iterdir())
    r = cf("remove-concept", proj, "--token", "<a>")
    assert r.exit_code == 0, r.output
    assert "images/a.png has no concept left" in _text(r)
    project = Project.load(proj)
    assert [im.file for im in project.images] == ["other.png"] and project.tokens() == ["<o>"]
    assert set(p.name for p in (proj / "images").iterdir()) == files  # nothing deleted
    _refused(proj, "remove-concept", proj, "--token", "<a>", needle="not a concept")
    _refused(proj, "remove-concept", proj, "--token", "<O>", needle="did you mean <o>")
    # the same picture again reuses its file instead of copying it twice
    assert cf("add-concept", proj, tmp_path / "a.png", "--token", "<a>").exit_code == 0
    assert set(p.name for p in (proj / "images").iterdir()) == files


def test_refusal_on_a_project_without_lock_file_leaves_it_unchanged(tmp_path, proj):
    (proj / ".conceptforge.lock").unlink()
    _refused(proj, "add-concept", proj, tmp_path / "a.png", "--token", "<a>", needle="already a concept")
    _refused(proj, "add-concept", proj, tmp_path / "a.png", "--token", "<A>", needle="differs only in case")
    _refused(proj, "remove-concept", proj, "--token", "<zz>", needle="not a concept")
    assert not (proj / ".conceptforge.lock").exists()


def _alias_bomb() -> str:
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(8):
        prev, name = chr(97 + i), chr(98 + i)
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return "version: 1\nmodel: m\n" + "\n".join(lines) + "\nsettings: {s: *i}\n"


@pytest.mark.parametrize(
    "text, needle",
    [
        (_alias_bomb(), "too large"),
        ("version: 1\nmodel: m\nsettings: {a: " + "[" * 70 + "]" * 70 + "}\n", "nested too deeply"),
        ("version: " + "9" * 5000 + "\nmodel: m\n", "thousands of digits"),
        ('version: !!python/object/apply:os.system ["echo hi"]\n', "not valid YAML"),
    ],
)
def test_hostile_yaml_is_refused(proj, text, needle):
    (proj / MANIFEST).write_text(text)
    _refused(proj, "concepts", proj, needle=needle)
