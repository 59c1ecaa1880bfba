"""The app in a real browser: Playwright for Python driving Debian's chromium (headless).

Upload an example, press Restore, wait for the before/after slider and the face gallery, download the
result and check it is the exact full-resolution file. The page is saved as a screenshot (to tmp; to
docs/screenshot.png when GFP_UPDATE_SCREENSHOT=1). Skips when playwright or chromium is missing; CI gets
both from scripts/test.sh. Playwright's own browser download is not used (no internet here).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_app import EXAMPLES, ROOT, call, read

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("GFP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHOTO = EXAMPLES / "group_photo.jpg"
TRAINED_MODEL = ROOT / "examples" / "model-cpu"
TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def server_settings() -> dict[str, Any]:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set GFP_CHROMIUM)")
    # The model trained by train/configs/cpu.yml, so the screenshot shows real restorations.
    return {"max_pixels": 1_000_000, "models": (str(TRAINED_MODEL),)}


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def test_upload_restore_compare_download(server, page, tmp_path: Path) -> None:
    page.goto(server.url)
    page.locator("#input-image input[type=file]").set_input_files(str(PHOTO))
    page.locator("#input-image img").first.wait_for()
    page.click("#restore-button")

    page.wait_for_function(
        "() => document.querySelector('#status')?.innerText.includes('output')", timeout=TIMEOUT_MS
    )
    status = page.locator("#status").inner_text()
    assert "device cpu" in status and "output 1280x600 PNG" in status
    assert page.locator("#slider img").count() == 2  # before and after
    tiles = page.locator("#faces img")
    if server.real_detector:
        tiles.first.wait_for()
        assert tiles.count() >= 3 and "faces found" in status

    with page.expect_download() as info:
        page.locator("#download a").first.click()
    download = info.value
    assert download.suggested_filename == "group_photo_restored.png"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    got = read(saved)
    assert got.shape == (600, 1280, 3)
    # The exact file: the same pixels the API returns for the same request (no re-encoding on the way).
    np.testing.assert_array_equal(got, read(call(server.client(), server, PHOTO)[2]))

    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("GFP_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "screenshot.png")


def test_advanced_face_choice_and_colour_fix(server, page) -> None:
    """Set the colour fix and the faces to restore under Advanced; the status and the gallery say which."""
    page.goto(server.url)
    page.locator("#input-image input[type=file]").set_input_files(str(PHOTO))
    page.locator("#input-image img").first.wait_for()
    page.get_by_text("Advanced").first.click()
    page.get_by_test_id("wavelet-radio-label").first.click()
    page.locator("#faces-choice textarea, #faces-choice input").first.fill("3,1")
    page.click("#restore-button")
    page.wait_for_function(
        "() => document.querySelector('#status')?.innerText.includes('output')", timeout=TIMEOUT_MS
    )
    status = page.locator("#status").inner_text()
    assert "colour fix wavelet" in status
    if not server.real_detector:
        return
    assert "5 faces found, 2 restored, 3 skipped (3 not chosen)" in status
    tiles = page.locator("#faces img")
    tiles.first.wait_for()
    assert tiles.count() == 2
    captions = page.locator("#faces").inner_text()
    assert "Face 1" in captions and "Face 3" in captions and "Face 2" not in captions
