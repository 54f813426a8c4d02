"""Real-browser tests of the Augmentation Lab's issue #14 parts: a shared link reproduces the grid, and the stability
panel computes its summary on request (Playwright driving Debian chromium against ``streamlit run``)."""

from __future__ import annotations

import urllib.parse

import pytest
from test_browser import _open_page, browser, server  # noqa: F401  (module fixtures: one server, one browser)

from camlib.augment import CIFAR10_TRAIN_PIPELINE, pipeline_to_query
from camlib.cifar import default_root, detect_source

ROOT = default_root()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(ROOT is None or detect_source(ROOT) is None, reason="CIFAR-10 not found"),
]


def test_a_shared_link_opens_the_same_grid_and_the_stability_summary_computes(server, browser) -> None:  # noqa: F811
    query = {
        "pipeline": pipeline_to_query(CIFAR10_TRAIN_PIPELINE),
        "seed": "11",
        "rows": "2",
        "cols": "3",
        "mode": "many",
        "split": "test",
        "classes": "cat,ship",
    }
    page, dialogs, _ = _open_page(browser, f"{server}/augmentation_lab?{urllib.parse.urlencode(query)}")
    try:
        grid = page.locator('[data-testid="stImage"]', has_text="Augmented (seed 11)").locator("img")
        grid.wait_for(timeout=120_000)
        assert "seed=11" in page.url and "rows=2" in page.url and "classes=cat%2Cship" in page.url
        first = grid.get_attribute("src")
        # the same link in a second tab: the same grid image (its media name is the hash of its bytes)
        other, _, _ = _open_page(browser, f"{server}/augmentation_lab?{urllib.parse.urlencode(query)}")
        again = other.locator('[data-testid="stImage"]', has_text="Augmented (seed 11)").locator("img")
        again.wait_for(timeout=120_000)
        assert again.get_attribute("src").rsplit("/", 1)[-1] == first.rsplit("/", 1)[-1]
        other.close()

        page.get_by_role("tab", name="Summary over K images").click()
        k = page.locator(".st-key-aug_stab_k input")
        k.fill("4")
        k.press("Enter")
        page.get_by_role("button", name="Compute the summary").click()
        table = page.locator('[data-testid="stDataFrame"]')
        table.first.wait_for(timeout=180_000)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert dialogs == []
    finally:
        page.close()
