"""The report page in a real browser: headless Chromium driven by Playwright.

Needs Debian's `chromium` package (`apt-get install chromium`) and the
`playwright` Python package (the test extra); Playwright's own browser
download is not used. Without them the test is skipped, unless
CONCEPTFORGE_REQUIRE_BROWSER=1 (set by CI), which makes it fail instead.
CONCEPTFORGE_CHROMIUM names another Chromium binary."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from report_helpers import learned_project

HOW = "install Debian's chromium (apt-get install chromium) and pip install playwright, then run this test again"


def _chromium() -> str | None:
    named = os.environ.get("CONCEPTFORGE_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    # Debian's /usr/bin/chromium is a shell wrapper around this binary
    for path in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if path and Path(path).is_file():
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> tuple[object, str]:
    """Playwright's entry point and the Chromium binary (checked before any model is built)."""
    required = os.environ.get("CONCEPTFORGE_REQUIRE_BROWSER", "") not in ("", "0")
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed"
    binary = _chromium()
    if missing is None and binary is None:
        missing = "no Chromium binary was found"
    if missing:
        if required:
            pytest.fail(f"CONCEPTFORGE_REQUIRE_BROWSER is set but {missing}; {HOW}.")
        pytest.skip(f"{missing}: {HOW}.")
    return sync_playwright, binary


def test_report_renders_in_headless_chromium(chromium, tmp_path, tiny_model):
    sync_playwright, binary = chromium
    from conceptforge.engine.report_html import write_report

    proj = learned_project(tmp_path, tiny_model)
    run = next(p for p in (proj / "runs").iterdir() if p.is_dir())
    out = write_report(proj, run)
    url = out.resolve().as_uri()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")
            images = page.evaluate(
                "() => Array.from(document.images).map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,"
                " shown: i.getBoundingClientRect().width > 0}))"
            )
            title = page.title()
            headings = page.eval_on_selector_all("h2", "els => els.map(e => e.textContent)")
            shot = page.screenshot(full_page=True)
        finally:
            browser.close()

    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests  # nothing from the network
    assert run.name in title
    assert headings == ["Concepts to check", "Curves", "Masks", "Samples", "Settings", "Timing"]
    assert len(images) > 10
    assert [i["alt"] for i in images if not (i["ok"] and i["shown"])] == []
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(np.float32)
    assert pixels.shape[1] >= 1400 and pixels.shape[0] > 900
    assert pixels.std() > 20  # not a blank page
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 200  # pictures, not just text on white
