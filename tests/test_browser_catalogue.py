"""Real-browser checks of the bad-input catalogue (rows 4, 6, 12, 22, 49): Playwright drives headless Debian chromium
against `streamlit run` on 127.0.0.1 (no file watcher), with the browser and page fixtures of tests/conftest.py."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from helpers.browser import BROWSER_MARKS, choose, explained, settle
from helpers.images import with_orientation
from PIL import Image

from camlib.samples import load_sample

pytestmark = BROWSER_MARKS


UPLOADER = '[data-testid="stFileUploaderDropzoneInput"]'
ORIGINAL_IMG = (
    "() => { const box = [...document.querySelectorAll('[data-testid=\"stImage\"]')]"
    ".find(e => e.innerText.includes('On the original image')); return box && box.querySelector('img'); }"
)


def _to_upload(page) -> None:
    page.get_by_text("Upload", exact=True).first.click()
    page.locator(UPLOADER).wait_for(state="attached", timeout=60_000)


def _original_src(page) -> str | None:
    return page.evaluate(f"() => {{ const img = ({ORIGINAL_IMG})(); return img ? img.src : null; }}")


def _original_aspect(page, replacing: str | None = None) -> float:
    """The width / height of the overlay on the original image, once it is loaded and, with ``replacing``, once it
    is no longer the image whose ``src`` that was (the upload's run may start after its file chip is shown)."""
    handle = page.wait_for_function(
        f"(old) => {{ const img = ({ORIGINAL_IMG})(); return img && img.complete && img.src !== old "
        "&& img.naturalWidth > 0 && img.naturalWidth / img.naturalHeight; }",
        arg=replacing,
        timeout=60_000,
    )
    return float(handle.json_value())


def _cam_text(page) -> str:
    """The "Explaining class ..." line without its timing (which says whether the CAM came from the cache)."""
    return re.sub(r" (in \d+ ms|from the cache \(first computed in \d+ ms\)) on ", " on ", explained(page))


def _wait_for_upload_shown(page, name: str, timeout: float = 120_000) -> None:
    """Wait until ``name`` is the uploaded file, its run is over and the page no longer shows a fallback image (the
    frontend removes the old file, a rerun shows the sample, then the new file arrives and runs)."""
    page.locator('[data-testid="stFileChipName"]', has_text=name).first.wait_for(timeout=timeout)
    page.wait_for_function(
        '() => !document.querySelector(\'[data-testid="stStatusWidgetRunningIcon"], '
        '[data-testid="stStatusWidgetRunningManIcon"], [data-stale="true"]\') '
        "&& !document.body.innerText.replace(/[\\u2060\\u200b]/g, '').includes('No upload yet')",
        timeout=timeout,
    )
    settle(page, timeout)


def _no_exception(page, dialogs: list[str]) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    assert dialogs == []


@pytest.mark.bad_input(4)
@pytest.mark.parametrize("name", ["setup.exe", "pipeline.json", "drawing.svg", "photo.png.exe"])
def test_disallowed_extension_gets_a_frontend_error_chip(browser_page, tmp_path: Path, name: str) -> None:  # noqa: F811
    page, dialogs = browser_page
    settle(page)
    _to_upload(page)
    before = _cam_text(page)
    path = tmp_path / name
    path.write_bytes(
        b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>"
        if name.endswith("svg")
        else b"MZ\x90\x00 not an image"
    )
    page.locator(UPLOADER).set_input_files(str(path))
    page.locator('[data-testid="stFileChipIconError"]').first.wait_for(timeout=30_000)
    assert page.get_by_text("not allowed", exact=False).count() >= 1
    settle(page)
    assert _cam_text(page) == before  # the app is unaffected: same image, same CAM
    _no_exception(page, dialogs)
    page.locator('[data-testid="stFileChipDeleteBtn"]').first.click()  # clear it for the next case
    page.locator('[data-testid="stFileChipIconError"]').first.wait_for(state="detached", timeout=30_000)


@pytest.mark.bad_input(6)
def test_file_over_the_upload_limit_gets_a_frontend_error_chip(browser_page, tmp_path: Path) -> None:  # noqa: F811
    """The image uploader allows 20 MB: a 21 MB PNG is refused in the browser (error chip) and never reaches the
    script: the CAM shown stays the same."""
    page, dialogs = browser_page
    settle(page)
    _to_upload(page)
    before = _cam_text(page)
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(21 * 1024 * 1024))
    page.locator(UPLOADER).set_input_files(str(path))
    page.locator('[data-testid="stFileChipIconError"]').first.wait_for(timeout=60_000)
    settle(page)
    assert _cam_text(page) == before
    _no_exception(page, dialogs)
    page.locator('[data-testid="stFileChipDeleteBtn"]').first.click()
    page.locator('[data-testid="stFileChipIconError"]').first.wait_for(state="detached", timeout=30_000)


@pytest.mark.bad_input(12)
@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_photo_is_shown_upright_with_its_overlay(
    browser_page,  # noqa: F811
    tmp_path: Path,
    orientation: int,
) -> None:
    """A 360x240 (landscape) JPEG whose EXIF says "rotate 90 degrees": the overlay on the original image is portrait
    (2:3), i.e. the rotation was applied once, and the overlay is drawn on the rotated image."""
    page, dialogs = browser_page
    settle(page)
    _to_upload(page)
    pixels = np.asarray(Image.fromarray(load_sample("coffee (cup)")).resize((360, 240)))
    path = tmp_path / f"portrait{orientation}.jpg"
    path.write_bytes(with_orientation(pixels, orientation, "JPEG"))
    before = _original_src(page)
    page.locator(UPLOADER).set_input_files(str(path))
    _wait_for_upload_shown(page, path.name)
    assert _original_aspect(page, replacing=before) == pytest.approx(240 / 360, abs=0.01)
    _no_exception(page, dialogs)


def _photo(tmp_path: Path, sample: str, size: tuple[int, int], name: str) -> Path:
    path = tmp_path / name
    Image.fromarray(load_sample(sample)).resize(size).save(path)
    return path


@pytest.mark.bad_input(22)
def test_new_upload_during_a_run_shows_only_the_new_images_cam(browser_page, tmp_path: Path) -> None:  # noqa: F811
    """Upload a wide photo and, while its run is going, a tall one: the page settles on the tall photo's CAM (the
    same text as when the tall photo is uploaded alone) on a tall original, never the wide one's overlay."""
    page, dialogs = browser_page
    settle(page)
    _to_upload(page)
    tall = _photo(tmp_path, "rocket", (240, 400), "tall.png")
    wide = _photo(tmp_path, "astronaut", (400, 240), "wide.png")
    page.locator(UPLOADER).set_input_files(str(tall))
    _wait_for_upload_shown(page, tall.name)
    alone = _cam_text(page)
    assert _original_aspect(page) == pytest.approx(240 / 400, abs=0.01)
    page.locator(UPLOADER).set_input_files(str(wide))
    page.wait_for_timeout(150)  # the wide photo's run has started
    page.locator(UPLOADER).set_input_files(str(tall))
    _wait_for_upload_shown(page, tall.name)
    assert _cam_text(page) == alone
    assert _original_aspect(page) == pytest.approx(240 / 400, abs=0.01)
    _no_exception(page, dialogs)


@pytest.mark.bad_input(22)
def test_removing_the_upload_mid_run_shows_no_stale_overlay(browser_page, tmp_path: Path) -> None:  # noqa: F811
    """Upload a wide photo and click the chip's x while its run is going: the page settles on the sample photo it
    names ("No upload yet: showing ..."), with the sample's aspect ratio, not on the removed photo."""
    page, dialogs = browser_page
    settle(page)
    _to_upload(page)
    wide = _photo(tmp_path, "motorcycle", (480, 200), "wide-bike.png")
    page.locator(UPLOADER).set_input_files(str(wide))
    page.locator('[data-testid="stFileChipDeleteBtn"]').first.click(timeout=30_000)
    settle(page)
    page.get_by_text("No upload yet: showing", exact=False).first.wait_for(timeout=60_000)
    chelsea = load_sample("chelsea (cat)")
    assert _original_aspect(page) == pytest.approx(chelsea.shape[1] / chelsea.shape[0], abs=0.01)
    assert page.locator('[data-testid="stFileChip"]').count() == 0
    _no_exception(page, dialogs)


@pytest.mark.bad_input(49)
def test_rerun_storm_of_widget_changes_ends_in_the_final_values(browser_page) -> None:  # noqa: F811
    """Ten rapid opacity steps and three method changes in quick succession: reruns are superseded, the page
    settles with the last method explained and the slider at its last value, with no exception."""
    page, dialogs = browser_page
    settle(page)
    slider = page.locator('.st-key-cam_alpha [role="slider"], .st-key-cam_alpha input[type="range"]').first
    slider.wait_for(state="attached", timeout=30_000)
    start = float(page.locator('.st-key-cam_alpha [data-testid="stSliderThumbValue"]').inner_text())
    slider.focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    for method in ("LayerCAM", "HiResCAM", "XGrad-CAM"):  # each click starts a rerun that supersedes the last
        choose(page, "cam_method", method)
    settle(page)
    assert page.locator('.st-key-cam_method input[role="combobox"]').input_value() == "XGrad-CAM"
    page.wait_for_function(
        "() => [...document.querySelectorAll('p')].some(p => p.innerText.startsWith("
        "'Explaining class') && p.innerText.includes('with XGrad-CAM '))",
        timeout=120_000,
    )
    value = float(page.locator('.st-key-cam_alpha [data-testid="stSliderThumbValue"]').inner_text())
    assert value < start
    _no_exception(page, dialogs)


@pytest.mark.slow
@pytest.mark.bad_input(47, kind="PL")
def test_several_browser_tabs_load_the_app_and_their_cams_at_once(browser, server: str) -> None:  # noqa: F811
    """Playwright load (the catalogue's N~5 browsers, 3 tabs on this 2-core machine): tabs opened together each get
    the page and its CAM with no exception and no dialog, within a generous bound."""
    pages = []
    try:
        for _ in range(3):
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            dialogs: list[str] = []
            page.on("dialog", lambda dialog, seen=dialogs: (seen.append(dialog.message), dialog.dismiss()))
            page.goto(server, wait_until="commit")
            pages.append((page, dialogs))
        for page, dialogs in pages:
            page.wait_for_selector('[data-testid="stApp"]', timeout=120_000)
            assert explained(page).startswith("Explaining class")
            settle(page)
            _no_exception(page, dialogs)
    finally:
        for page, _ in pages:
            page.close()


def _explaining_with(page, method: str, timeout: float = 120_000) -> None:
    page.wait_for_function(
        "(m) => [...document.querySelectorAll('p')].some(p => p.innerText.startsWith('Explaining class') "
        "&& p.innerText.includes(' with ' + m + ' '))",
        arg=method,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.bad_input(68)
def test_a_slow_method_in_one_tab_blocks_no_other_and_stops_when_changed(browser, server: str) -> None:  # noqa: F811
    """Tab A starts Score-CAM (the page shows its estimate and a start button, then a progress bar). Tab B changes
    its method and gets its CAM while A's bar is still there (ordering, not timing). A then changes its method: the
    bar goes, A shows its new CAM, and nothing shows an exception."""
    tabs = []
    try:
        for _ in range(2):
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            dialogs: list[str] = []
            page.on("dialog", lambda dialog, seen=dialogs: (seen.append(dialog.message), dialog.dismiss()))
            page.goto(server)
            explained(page)
            settle(page)
            tabs.append((page, dialogs))
        (a, a_dialogs), (b, b_dialogs) = tabs
        choose(a, "cam_method", "Score-CAM")
        a.get_by_text("extra forward passes", exact=False).first.wait_for(timeout=120_000)
        a.locator(".st-key-cam_start button").click()
        bar = a.locator('[data-testid="stProgress"]')
        bar.first.wait_for(timeout=120_000)
        choose(b, "cam_method", "XGrad-CAM")
        _explaining_with(b, "XGrad-CAM")
        assert bar.count() == 1  # A's Score-CAM is still running: B did not wait for it
        choose(a, "cam_method", "Grad-CAM")
        _explaining_with(a, "Grad-CAM")
        settle(a)
        assert bar.count() == 0
        _no_exception(a, a_dialogs)
        _no_exception(b, b_dialogs)
    finally:
        for page, _ in tabs:
            page.close()
