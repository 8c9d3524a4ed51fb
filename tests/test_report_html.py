"""`conceptforge report` and `write_report`: the HTML page of a run, its
pictures, values and findings; legible contact sheets and matplotlib plots."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from cli_helpers import cf, make_project, tree_digest
from conceptforge.engine import pictures
from conceptforge.engine.report_html import CACHE_NAME, make_report, write_report
from report_helpers import RUN_ID, box, learned_project, write_run


class Page(HTMLParser):
    """The tags of a page that matter here."""

    def __init__(self, text: str):
        super().__init__()
        self.imgs: list[dict[str, str]] = []
        self.links: list[str] = []
        self.cells: list[dict[str, str]] = []
        self.sources: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.imgs.append(a)
        if tag == "a":
            self.links.append(a.get("href", ""))
        if tag == "td" and "cell" in a.get("class", "").split():
            self.cells.append(a)
        for key in ("src", "href", "data", "action"):
            if key in a:
                self.sources.append(a[key])


def decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,"), uri[:40]
    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    im.load()
    return im


@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny_model) -> Path:
    return learned_project(tmp_path_factory.mktemp("learned"), tiny_model)


@pytest.fixture
def handmade(tmp_path, tiny_model) -> Path:
    """Three E-steps written by hand: <v1> moves away and back, <v2> fills its
    image (covering <v1>), <v3> ends empty."""
    from report_helpers import scene_files

    proj = make_project(tmp_path, tiny_model, scene_files(tmp_path / "src"))
    a, b = box(4, 4, 10, 10), box(16, 18, 10, 10)
    background = ~box(8, 8, 12, 12)
    full, empty = np.ones((32, 32), bool), np.zeros((32, 32), bool)
    write_run(
        proj,
        {
            0: {("first", "<v1>"): a, ("first", "<v2>"): b, ("second", "<v3>"): background},
            1: {("first", "<v1>"): b, ("first", "<v2>"): b, ("second", "<v3>"): background},
            2: {("first", "<v1>"): a, ("first", "<v2>"): full, ("second", "<v3>"): empty},
        },
        gt={("first", "<v1>"): a, ("first", "<v2>"): b},
    )
    return proj


# --------------------------------------------------------------------------- the page of a learned run


def test_report_of_a_learned_run_is_one_self_contained_page(learned):
    r = cf("report", learned)
    assert r.exit_code == 0, r.output
    run = next(p for p in (learned / "runs").iterdir() if p.is_dir())
    out = run / "report.html"
    assert r.output.strip().endswith(str(out)) and out.is_file()
    text = out.read_text()
    page = Page(text)

    # nothing is fetched: every picture is inline, every link stays in the page
    assert all(s.startswith("data:image/png;base64,") or s.startswith("#") for s in page.sources), [s[:60] for s in page.sources]
    assert "http://" not in text and "https://" not in text and "<script" not in text
    for img in page.imgs:
        assert decode(img["src"]).size[0] > 0

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    esteps = [rec for rec in records if rec["kind"] == "estep"]
    assert len(page.cells) == 3 * len(esteps)  # three concepts, a cell per E-step each
    masks = [i for i in page.imgs if i["alt"].startswith("mask of ")]
    heats = [i for i in page.imgs if i["alt"].startswith("soft map of ")]
    assert len(masks) == len(heats) == 3 * len(esteps)
    assert decode(masks[0]["src"]).size == (128, 128)  # the 32-pixel image grown by a whole factor
    for token in ("&lt;v1&gt;", "&lt;v2&gt;", "&lt;v3&gt;"):
        assert token in text
    first = esteps[0]["masks"][0]
    assert f"area {first['area']:.1%}" in text and f"GT {first['iou_gt']:.2f}" in text
    for title in ("training losses", "mask IoU per E-step", "mask area per concept"):
        curve = next(i for i in page.imgs if i["alt"] == title)
        assert decode(curve["src"]).size[0] > 300
    sample = next(p for p in (learned / "samples").glob("*.png"))
    assert "a photo of &lt;v1&gt; and &lt;v3&gt;" in text and "seed 3" in text and sample.exists()
    assert "em_steps" in text and "started" in text  # settings and timing


def test_write_report_keeps_pictures_and_draws_only_new_ones(learned, tmp_path):
    run = next(p for p in (learned / "runs").iterdir() if p.is_dir())
    out = write_report(learned, run, tmp_path / "one.html")
    assert out == tmp_path / "one.html" and out.is_file()
    cache = run / CACHE_NAME
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert before
    again = write_report(learned, run, tmp_path / "two.html")
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == before  # nothing drawn again
    strip = lambda s: re.sub(r"report written [0-9: -]+", "", s)  # noqa: E731
    assert strip(again.read_text()) == strip(out.read_text())

    # a mask file written again with the same bytes (an E-step that left the mask as it was) is not drawn again
    last = max((run / "masks").iterdir())
    mask = next(last.glob("first/v1.png"))
    mask.write_bytes(mask.read_bytes())
    os.utime(mask, ns=(2, 2))
    write_report(learned, run, tmp_path / "same.html")
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == before

    # a mask file rewritten with new content is drawn again; its old picture is dropped unless
    # another E-step's file with the same bytes still shows it
    twins = [p for p in (run / "masks").glob("*/first/v1.png") if p != mask and p.read_bytes() == mask.read_bytes()]
    Image.fromarray(np.full((32, 32), 255, np.uint8), "L").save(mask)
    os.utime(mask, ns=(1, 1))
    write_report(learned, run, tmp_path / "three.html")
    after = {p.name for p in cache.iterdir()}
    assert len(after - set(before)) == 1 and len(set(before) - after) == (0 if twins else 1)
    for twin in twins:  # with the twins changed too, the old picture is no longer used
        Image.fromarray(np.full((32, 32), 255, np.uint8), "L").save(twin)
    write_report(learned, run, tmp_path / "four.html")
    assert len(set(before) - {p.name for p in cache.iterdir()}) == 1


# --------------------------------------------------------------------------- values, flags and findings


def test_changed_cells_values_and_findings(handmade):
    r = cf("report", handmade, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    found = {(f["kind"], tuple(f["tokens"])) for f in result["findings"]}
    assert found == {
        ("switching", ("<v1>",)),
        ("full", ("<v2>",)),
        ("gt", ("<v2>",)),
        ("overlap", ("<v1>", "<v2>")),
        ("empty", ("<v3>",)),
    }
    text = Path(result["report"]).read_text()
    page = Page(text)
    changed = [c for c in page.cells if "changed" in c["class"].split()]
    assert len(page.cells) == 9 and len(changed) == 4  # v1 at E-steps 1 and 2, v2 and v3 at 2
    assert "area 9.8%" in text and "area 100.0%" in text and "area 0.0%" in text
    assert "prev <span class=\"bad\">0.00</span>" in text
    for f in result["findings"]:
        assert escape(f["text"]) in text
    anchors = set(re.findall(r'id="([^"]+)"', text))
    assert page.links and all(link[1:] in anchors for link in page.links)  # each finding links to its row


def test_timing_and_settings_from_the_run(handmade):
    text = write_report(handmade, handmade / "runs" / RUN_ID).read_text()
    assert "3.0 s for 60 steps (0.050 s/step)" in text and "later E-steps" in text
    assert "<span>threshold</span> <code>0.5</code>" in text


def test_a_run_without_e_steps_still_gets_a_page(tmp_path, tiny_model):
    from report_helpers import scene_files

    proj = make_project(tmp_path, tiny_model, scene_files(tmp_path / "src"))
    run = proj / "runs" / RUN_ID
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"status": "running", "created": 1767225600.0}))
    r = cf("report", proj)
    assert r.exit_code == 0, r.output
    text = (run / "report.html").read_text()
    assert "No E-step yet" in text and 'http-equiv="refresh"' in text  # a running run's page reloads itself
    assert all(decode(i["src"]).size[0] > 0 for i in Page(text).imgs)


def test_nothing_flagged_on_stable_masks(tmp_path, tiny_model):
    from report_helpers import scene_files

    proj = make_project(tmp_path, tiny_model, scene_files(tmp_path / "src"))
    a, b = box(4, 4, 10, 10), box(16, 18, 10, 10)
    write_run(proj, {it: {("first", "<v1>"): a, ("first", "<v2>"): b, ("second", "<v3>"): ~box(8, 8, 12, 12)} for it in range(3)})
    report = make_report(proj, proj / "runs" / RUN_ID)
    assert report.findings == []
    assert "Nothing looks wrong" in report.path.read_text()
    assert 'class="cell changed"' not in report.path.read_text()


def test_text_from_the_project_is_escaped_and_files_outside_are_not_read(handmade, tmp_path):
    samples = handmade / "samples"
    samples.mkdir()
    info = PngImagePlugin.PngInfo()
    info.add_text("conceptforge:prompt", '<script>alert("x")</script>')
    info.add_text("conceptforge:seed", "7")
    Image.new("RGB", (16, 16), "red").save(samples / "s.png", pnginfo=info)
    outside = tmp_path / "outside.png"
    Image.new("L", (32, 32), 255).save(outside)
    mask = handmade / "runs" / RUN_ID / "masks" / "iter_0001" / "first" / "v1.png"
    mask.unlink()
    mask.symlink_to(outside)
    metrics = handmade / "runs" / RUN_ID / "metrics.jsonl"
    with metrics.open("a") as fh:  # a record naming a path outside the run is ignored
        fh.write(json.dumps({"kind": "estep", "step": 9, "iteration": 3, "masks": [{"image": "../../..", "token": "<v1>", "area": 0.5}]}) + "\n")

    text = write_report(handmade, handmade / "runs" / RUN_ID).read_text()
    assert "<script" not in text and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "mask file missing" in text  # the link out of the project is not followed
    assert "../../.." not in text


# --------------------------------------------------------------------------- refusals


def test_refusals_are_one_line_and_change_nothing(handmade, tmp_path):
    before = tree_digest(handmade)
    r = cf("report", handmade, "--run", "nope")
    assert r.exit_code == 2 and "nope" in r.output and "Traceback" not in r.output
    folder = tmp_path / "a-folder"
    folder.mkdir()
    r = cf("report", handmade, "--out", folder)
    assert r.exit_code == 2 and "is a folder" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert tree_digest(handmade) == before and list(folder.iterdir()) == []
    empty = tmp_path / "empty"
    assert cf("init", empty).exit_code == 0
    r = cf("report", empty)
    assert r.exit_code == 2 and "learn" in r.output


def test_write_report_refuses_a_run_of_another_project(handmade, tmp_path):
    from conceptforge.errors import InputError

    other = tmp_path / "elsewhere" / RUN_ID
    other.mkdir(parents=True)
    with pytest.raises(InputError, match="not in the project's runs folder"):
        write_report(handmade, other)
    assert not (other / "report.html").exists()


# --------------------------------------------------------------------------- contact sheets and pictures


def test_masks_sheet_has_header_plain_image_values_and_borders(handmade, tmp_path):
    sheet_path = tmp_path / "sheet.png"
    r = cf("masks", handmade, "--sheet", sheet_path)
    assert r.exit_code == 0, r.output
    sheet = np.asarray(Image.open(sheet_path).convert("RGB")).astype(int)
    height, width = sheet.shape[:2]
    assert width > 4 * 128 and height > 3 * 128  # an image column and three E-steps; three concepts
    assert (np.abs(sheet - np.array(pictures.CHANGED_BORDER)).sum(-1) == 0).sum() > 4 * 4 * 128  # four framed cells
    assert (sheet[:20].sum(-1) < 200).any()  # header text above the pictures


def test_outline_stands_out_and_leaves_the_object_untouched():
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[:] = (30, 160, 60)
    rgb[10:30, 10:30] = (220, 30, 30)
    image = Image.fromarray(rgb)
    mask = box(10, 10, 20, 20, size=40)
    colour = pictures.contrast_colour(image, mask)
    assert min(np.linalg.norm(np.subtract(colour, c)) for c in [(30, 160, 60), (220, 30, 30)]) > 150
    out = np.asarray(pictures.outline(image, mask, colour)).astype(int)
    assert tuple(out[10, 20]) == colour and tuple(out[9, 20]) == colour  # the line straddles the edge
    assert tuple(out[20, 20]) == (220, 30, 30)  # inside: the object's own colour, no tint
    assert out[0, 0].sum() < rgb[0, 0].astype(int).sum()  # outside: darkened


def test_heat_map_runs_dark_to_bright():
    soft = np.linspace(0, 1, 64, dtype=np.float32)[None].repeat(4, 0)
    heat = np.asarray(pictures.heat_map(soft)).astype(int)
    assert heat.shape == (4, 64, 3)
    assert heat[0, 0].sum() < 60 and heat[0, -1].sum() > 600


def test_contact_sheet_header_captions_and_borders():
    rows = [[Image.new("RGB", (20, 20), "gray")] * 3] * 2
    plain = pictures.contact_sheet(rows, cell=40)
    assert plain.size == (120, 80)
    full = pictures.contact_sheet(rows, cell=40, header=["a", "b", "c"], captions=[["x\ny"] * 3] * 2, borders=[[None, (255, 0, 0), None]] * 2, gap=4)
    assert full.size[0] == 3 * 40 + 2 * 4 and full.size[1] > 80 + 2 * 2 * 10
    px = np.asarray(full)
    assert (px == (255, 0, 0)).all(-1).sum() > 2 * 4 * 30


# --------------------------------------------------------------------------- plots


def test_evaluate_plot_is_a_matplotlib_chart_with_a_line_per_concept(tmp_path):
    from conceptforge.engine.evaluate import plot_curves

    curves = {
        "concepts": [
            {"image": "first", "token": "<v1>", "steps": [0, 10, 20], "iou": [0.2, 0.5, 0.9]},
            {"image": "first", "token": "<v2>", "steps": [0, 10, 20], "iou": [0.8, 0.6, 0.7]},
        ]
    }
    out = plot_curves(curves, tmp_path / "plot.png", "mask IoU with GT")
    px = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert px.shape[1] >= 400 and px.shape[0] >= 300
    for colour in ((31, 119, 180), (255, 127, 14)):  # matplotlib's first two line colours
        assert (np.abs(px - colour).sum(-1) < 30).sum() > 100


def test_live_report_skips_e_steps_while_rewriting_would_cost_more_than_its_share(tmp_path, monkeypatch):
    from conceptforge.engine import report_html
    from conceptforge.engine.events import Event
    from conceptforge.engine.run_writer import REPORT_SHARE, LiveReport
    from conceptforge.engine.runs import RunDir

    now = [0.0]
    written = []

    def slow_write(project_root, run_dir, out=None):  # a rewrite that takes 1 s of the fake clock
        now[0] += 1.0
        written.append(now[0])
        return out

    monkeypatch.setattr(report_html, "write_report", slow_write)
    live = LiveReport(tmp_path, RunDir(tmp_path / "run"), warn=lambda m: None, clock=lambda: now[0])
    for _ in range(60):  # an E-step every 2 s of training
        live(Event("estep"))
        now[0] += 2.0
    live(Event("done"))
    assert written[0] == 1.0  # the first E-step is always written
    assert len(written) < 60 / (1 / REPORT_SHARE / 2) + 2  # about one rewrite per 1 / REPORT_SHARE s, not one per E-step
    assert len(written) >= 3 and written[-1] == now[0]  # the end is always written
    assert len(written) * 1.0 / now[0] <= REPORT_SHARE + 0.02  # each rewrite took 1 s
