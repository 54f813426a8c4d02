"""Real-browser tests of the Augmentation Lab: a shared link reproduces the grid, the stability panel computes its
summary on request, and a link over the cost budget waits for a button and stops on a rerun (Playwright driving Debian
chromium against ``streamlit run``)."""

from __future__ import annotations

import re
import time
import urllib.parse

import pytest
from helpers.browser import BROWSER_MARKS, open_page

from camlib.augment import CIFAR10_TRAIN_PIPELINE, Pipeline, PipelineStep, pipeline_to_query
from camlib.cifar import default_root, detect_source

ROOT = default_root()
pytestmark = [
    *BROWSER_MARKS,
    pytest.mark.skipif(ROOT is None or detect_source(ROOT) is None, reason="CIFAR-10 not found"),
]


def test_a_shared_link_opens_the_same_grid_and_the_stability_summary_computes(server, browser) -> None:
    query = {
        "pipeline": pipeline_to_query(CIFAR10_TRAIN_PIPELINE),
        "seed": "11",
        "rows": "2",
        "cols": "3",
        "mode": "many",
        "split": "test",
        "classes": "cat,ship",
    }
    page, dialogs, _ = open_page(browser, f"{server}/augmentation_lab?{urllib.parse.urlencode(query)}")
    try:
        grid = page.locator('[data-testid="stImage"]', has_text="Augmented (seed 11)").locator("img")
        grid.wait_for(timeout=120_000)
        assert "seed=11" in page.url and "rows=2" in page.url and "classes=cat%2Cship" in page.url
        first = grid.get_attribute("src")
        # the same link in a second tab: the same grid image (its media name is the hash of its bytes)
        other, _, _ = open_page(browser, f"{server}/augmentation_lab?{urllib.parse.urlencode(query)}")
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


@pytest.mark.bad_input(71, kind="PW")
def test_a_slow_link_waits_for_its_button_and_a_rerun_stops_the_grid(server, browser) -> None:
    """A link whose pipeline is over the budget (eight Superpixels at their most expensive, 256 tiles: minutes) shows
    the estimate and a button instead of running; once started, a new seed (a rerun) stops it at the next tile and
    the page asks again, in seconds rather than the minutes the grid would take."""
    slow = Pipeline(
        tuple(PipelineStep("Superpixels", {"p_replace": (1.0, 1.0), "n_segments": (256, 256)}) for _ in range(8)), 0
    )
    query = {"pipeline": pipeline_to_query(slow), "seed": "0", "rows": "16", "cols": "16", "split": "test"}
    page, dialogs, _ = open_page(browser, f"{server}/augmentation_lab?{urllib.parse.urlencode(query)}")
    try:
        start = page.get_by_role("button", name=re.compile(r"^Draw the grid \(about"))
        start.wait_for(timeout=120_000)
        assert page.get_by_text("for 256 tiles on this server").count() == 1
        assert page.locator('[data-testid="stImage"]', has_text="Augmented (seed").count() == 0
        start.click()
        bar = page.locator('[data-testid="stProgress"]')
        bar.wait_for(timeout=60_000)
        seed = page.locator(".st-key-aug_seed_input input")
        seed.fill("1")
        seed.press("Enter")
        asked = time.monotonic()
        page.get_by_role("button", name=re.compile(r"^Draw the grid \(about")).wait_for(timeout=60_000)
        bar.wait_for(state="detached", timeout=60_000)
        assert time.monotonic() - asked < 60  # the grid itself takes minutes
        assert page.locator('[data-testid="stImage"]', has_text="Augmented (seed").count() == 0
        assert page.locator('[data-testid="stException"]').count() == 0
        assert dialogs == []
    finally:
        page.close()
