"""What the real-browser tests (tests/test_browser*.py) share: Debian's chromium and its flags, and the page steps
they all take (open a tab that records dialogs and requests, choose a selectbox option, wait for a text). The
``server``, ``browser`` and ``browser_page`` fixtures that use them are in tests/conftest.py."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
# Every real-browser module's marks: each test starts a server and a browser (seconds to tens of seconds), so they are
# in the slow tier; Playwright cannot download its own browsers here, so no chromium means a skip.
BROWSER_MARKS = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)"),
]


def open_page(browser, server: str):
    """A new tab on the app, recording dialogs (an alert would mean injected script ran) and every request."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    dialogs: list[str] = []
    requests: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(server)
    page.wait_for_selector('[data-testid="stApp"]', timeout=120_000)
    return page, dialogs, requests


def explained(page) -> str:
    """The CAM Explorer's "Explaining class ..." line, once it is shown."""
    locator = page.locator("p", has_text="Explaining class").first
    locator.wait_for(timeout=120_000)
    return locator.inner_text()


def choose(page, key: str, option: str) -> None:
    """Open a selectbox and click one option, without waiting for the rerun it starts (retried if the box was being
    re-rendered by a rerun at the moment of the click)."""
    for attempt in range(3):
        page.locator(f".st-key-{key}").click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=10_000)
            return
        except Exception:  # noqa: BLE001 - the dropdown closed under a rerun: open it again
            if attempt == 2:
                raise


def wait_text(page, text: str, timeout: int = 180_000) -> None:
    page.get_by_text(text, exact=False).first.wait_for(timeout=timeout)


def settle(page, timeout: float = 120_000) -> None:
    """Wait until no script run is in progress (Streamlit's running indicator is gone) and the images have loaded."""
    page.wait_for_timeout(400)
    page.wait_for_function(
        '() => !document.querySelector(\'[data-testid="stStatusWidgetRunningIcon"],'
        ' [data-testid="stStatusWidgetRunningManIcon"], [data-stale="true"]\')',
        timeout=timeout,
    )
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=timeout,
    )
