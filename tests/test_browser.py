"""Real-browser test: Playwright drives headless Debian chromium against `streamlit run` on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers.browser import BROWSER_MARKS, choose, explained, open_page, settle, wait_text
from PIL import Image

from camlib.augment import CIFAR10_TRAIN_PIPELINE, pipeline_to_json
from camlib.samples import load_sample

ROOT = Path(__file__).resolve().parents[1]
# the lab writes its pipeline into the query string (ui/lab/url.py), so the URL may carry one
LAB_PATH = re.compile(r"/augmentation_lab(\?|$)")
pytestmark = BROWSER_MARKS


def test_cam_page_upload_shows_overlay(browser_page, tmp_path: Path) -> None:
    page, dialogs = browser_page
    page.wait_for_selector('[data-testid="stImage"] img', timeout=120_000)
    first = explained(page)
    assert "281" in first or "282" in first or "285" in first  # the default chelsea photo is a cat

    photo = tmp_path / "coffee.png"
    Image.fromarray(load_sample("coffee (cup)")).save(photo)
    page.get_by_text("Upload", exact=True).click()
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(photo))
    page.wait_for_function(
        "(before) => [...document.querySelectorAll('p')].some(p => p.innerText.startsWith('Explaining class') "
        "&& p.innerText !== before)",
        arg=first,
        timeout=120_000,
    )
    assert explained(page) != first
    overlays = page.locator('[data-testid="stImage"] img')
    assert overlays.count() >= 2
    # the new overlay's <img> may still be loading when the text changes (this check raced 1 run in 3)
    page.wait_for_function(
        "() => { const img = document.querySelector('[data-testid=\"stImage\"] img');"
        " return img && img.complete && img.naturalWidth > 0; }",
        timeout=60_000,
    )
    assert overlays.first.evaluate("img => img.complete && img.naturalWidth") >= 224
    assert page.locator('[data-testid="stException"]').count() == 0
    assert dialogs == []


def test_overlay_png_download_is_made_when_clicked_and_lossless(browser_page) -> None:
    """The "Overlay PNG" button is a deferred download (ui/explorer/cam_view.py): the browser asks the server for the
    file on click and gets the lossless PNG of the overlay shown above it as a JPEG (224 px, the model's view)."""
    page, dialogs = browser_page
    page.wait_for_selector('[data-testid="stImage"] img', timeout=120_000)
    settle(page)  # the module's page: the previous test's upload may still be running
    shown = page.locator('[data-testid="stImage"] img').first
    src = shown.get_attribute("src")
    assert src.startswith("data:image/jpeg;base64,")
    with page.expect_download(timeout=60_000) as started:
        page.locator(".st-key-cam_dl_png button").click()
    saved = started.value.path()
    assert shown.get_attribute("src") == src  # no run in between: the overlay shown is the one exported
    with Image.open(saved) as image:
        assert image.format == "PNG" and image.size == (224, 224)
        exported = np.asarray(image.convert("RGB"), dtype=np.int16)
    jpeg = base64.b64decode(src.split(",", 1)[1])
    with Image.open(io.BytesIO(jpeg)) as image:
        displayed = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert np.abs(exported - displayed).mean() < 3  # the same overlay, JPEG's loss aside
    assert page.locator('[data-testid="stException"]').count() == 0
    assert dialogs == []


@pytest.mark.bad_input(2, 20)
def test_bad_upload_shows_error_not_traceback(browser_page, tmp_path: Path) -> None:
    page, _ = browser_page
    bad = tmp_path / "<img src=x onerror=alert(1)>.png"
    bad.write_bytes(b"\x7fELF this is not an image")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(bad))
    page.get_by_text("not a valid image", exact=False).first.wait_for(timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stImage"] img').count() >= 2  # the last good overlay stays


def test_compare_methods_grid_scores_faithfulness_and_runs_the_sanity_checks(server: str, browser) -> None:
    """The compare view in the browser, on the CIFAR-10 ResNet-20 (fast): the method x layer grid draws one loaded
    overlay per method, then its cells are scored on request (table, most faithful layer, curves) and the best cell's
    sanity checks run."""
    page, dialogs, _ = open_page(browser, server)
    explained(page)
    choose(page, "cam_model", "ResNet-20 (CIFAR-10, trained by this project)")
    page.locator(".st-key-cam_view").get_by_text("Compare methods", exact=True).click()
    wait_text(page, "5 methods x 1 layers")
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
        ".filter(i => i.complete && i.naturalWidth >= 224).length >= 5",
        timeout=120_000,
    )
    page.locator('[data-testid="stExpander"] summary', has_text="Which map to trust?").click()
    page.get_by_role("button", name="Score faithfulness (5 cells)").click()
    wait_text(page, "Most faithful layer on this image")
    page.locator(".st-key-cam_faith_curves .js-plotly-plot").wait_for(timeout=60_000)
    page.get_by_role("button", name="Run the sanity checks").click()
    page.locator(".st-key-cam_sanity_curve .js-plotly-plot").wait_for(timeout=180_000)
    verdicts = page.get_by_text("not explaining the model").count() + page.get_by_text("depends on the weights").count()
    assert verdicts == 1
    assert page.locator('[data-testid="stException"]').count() == 0
    assert dialogs == []
    page.close()


def _augmented_src(page) -> str | None:
    return page.evaluate(
        "() => { const box = [...document.querySelectorAll('[data-testid=\"stImage\"]')]"
        ".find(e => e.innerText.includes('Augmented')); const img = box && box.querySelector('img');"
        " return img && img.complete && img.naturalWidth > 0 ? img.getAttribute('src') : null; }"
    )


def test_augmentation_lab_slider_redraws_grid(browser_page) -> None:
    page, dialogs = browser_page
    page.locator('[data-testid="stSidebarNav"] a', has_text="Augmentation Lab").click()
    page.wait_for_url(LAB_PATH, timeout=60_000)
    images = page.locator('[data-testid="stImage"]')
    images.filter(has_text="Original").locator("img").wait_for(timeout=120_000)
    images.filter(has_text="Augmented").locator("img").wait_for(timeout=120_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
        ".filter(i => i.complete && i.naturalWidth >= 256).length >= 2",
        timeout=60_000,
    )
    before = _augmented_src(page)
    assert before

    # open "5. ColorJitter" and move its probability slider one step with the keyboard
    page.locator('[data-testid="stExpander"] summary', has_text="5. ColorJitter").click()
    thumb = page.locator('.st-key-aug_s4__p [role="slider"], .st-key-aug_s4__p input[type="range"]').first
    thumb.wait_for(state="attached", timeout=30_000)
    thumb.focus()
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(
        "(before) => { const box = [...document.querySelectorAll('[data-testid=\"stImage\"]')]"
        ".find(e => e.innerText.includes('Augmented')); const img = box && box.querySelector('img');"
        " return img && img.complete && img.naturalWidth > 0 && img.getAttribute('src') !== before; }",
        arg=before,
        timeout=60_000,
    )
    assert _augmented_src(page) != before
    assert page.locator('.st-key-aug_s4__p [data-testid="stSliderThumbValue"]').inner_text().strip() == "0.75"
    assert page.locator('[data-testid="stException"]').count() == 0
    assert dialogs == []


@pytest.mark.bad_input(5, 61, kind="HTTP")
def test_upload_without_xsrf_token_is_refused(server: str) -> None:
    """XSRF protection is on: a raw PUT to the upload endpoint without the token is refused (bad-inputs #5, #61)."""
    request = urllib.request.Request(
        f"{server}/_stcore/upload_file/some-session/some-file",
        method="PUT",
        data=b"--x\r\n\r\nnot an image\r\n--x--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=x"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    with urllib.request.urlopen(f"{server}/_stcore/health", timeout=10) as response:  # the server is unaffected
        assert response.status == 200


# --- hostile names (bad-inputs #20) ----------------------------------------------------------------------------------

LINK_NAME = "[x](https://example.invalid/) ![t](https://example.invalid/t.png).png"
HTML_NAME = "<img src=x onerror=alert(1)>.png"
# Every element attribute that loads or links something, and every inline event handler.
_FOREIGN_ATTRIBUTES = """(origin) => {
  const found = [];
  for (const element of document.querySelectorAll('*')) {
    for (const attribute of element.attributes) {
      const name = attribute.name.toLowerCase(), value = attribute.value.trim();
      if (name.startsWith('on')) { found.push(`${element.tagName} ${name}=${value}`); continue; }
      if (!['href', 'src', 'srcset', 'xlink:href', 'action', 'formaction', 'poster', 'data'].includes(name)) continue;
      const own = value.startsWith(origin + '/') || value === origin || /^(data|blob):/.test(value)
        || value.startsWith('#') || (!/^[a-z][a-z0-9+.-]*:/i.test(value) && !value.startsWith('//'));
      if (!own || value.includes('example.invalid') || value === 'x') found.push(`${element.tagName} ${name}=${value}`);
    }
  }
  return found;
}"""


def _wait_for_text(page, text: str, timeout: int = 60_000) -> None:
    """Wait until the page shows ``text`` literally (ignoring the invisible word joiners that break autolinks)."""
    page.wait_for_function(
        "(text) => document.body.innerText.replaceAll('\\u2060', '').includes(text)", arg=text, timeout=timeout
    )


def _assert_only_own_urls(page, server: str, requests: list[str], dialogs: list[str]) -> None:
    assert page.evaluate(_FOREIGN_ATTRIBUTES, server) == []
    assert [url for url in requests if not url.startswith(server)] == []  # example.invalid was never requested
    assert dialogs == []


def _transparent_png() -> bytes:
    """The coffee photo, half transparent: its decoding adds a note that names the file."""
    image = Image.fromarray(load_sample("coffee (cup)")[::4, ::4].copy()).convert("RGBA")
    image.putalpha(128)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.bad_input(20)
def test_hostile_names_render_as_text_and_load_nothing(server: str, browser) -> None:
    page, dialogs, requests = open_page(browser, server)
    try:
        page.wait_for_selector('[data-testid="stImage"] img', timeout=120_000)
        page.get_by_text("Upload", exact=True).click()
        dropzone = page.locator('.st-key-cam_upload input[type="file"]')
        dropzone.set_input_files(files=[{"name": LINK_NAME, "mimeType": "image/png", "buffer": _transparent_png()}])
        # the note names the file: as literal text, not as a link and an image
        _wait_for_text(page, f"{LINK_NAME}: transparent pixels shown", timeout=120_000)
        _assert_only_own_urls(page, server, requests, dialogs)

        page.locator('.st-key-cam_upload [data-testid="stFileChipDeleteBtn"] button').click()
        _wait_for_text(page, "No upload yet: showing chelsea (cat).")
        assert page.get_by_text("example.invalid", exact=False).count() == 0  # the removed file is not named
        _assert_only_own_urls(page, server, requests, dialogs)

        page.locator('[data-testid="stSidebarNav"] a', has_text="Augmentation Lab").click()
        page.wait_for_url(LAB_PATH, timeout=60_000)
        importer = page.locator('.st-key-aug_import input[type="file"]')
        importer.wait_for(state="attached", timeout=120_000)
        document = json.loads(pipeline_to_json(CIFAR10_TRAIN_PIPELINE))
        document["augmentation_lab"]["steps"][0]["transform"] = HTML_NAME
        hostile_json = HTML_NAME.removesuffix(".png") + ".json"
        importer.set_input_files(
            files=[{"name": hostile_json, "mimeType": "application/json", "buffer": json.dumps(document).encode()}]
        )
        _wait_for_text(page, f"Cannot import {hostile_json}:")
        _assert_only_own_urls(page, server, requests, dialogs)

        linked_json = LINK_NAME.removesuffix(".png") + ".json"
        importer.set_input_files(
            files=[
                {
                    "name": linked_json,
                    "mimeType": "application/json",
                    "buffer": pipeline_to_json(CIFAR10_TRAIN_PIPELINE).encode(),
                }
            ]
        )
        _wait_for_text(page, f"Imported {linked_json}.")
        _assert_only_own_urls(page, server, requests, dialogs)
        assert page.locator('[data-testid="stException"]').count() == 0
    finally:
        page.close()
