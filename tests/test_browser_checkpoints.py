"""Real-browser test of a checkpoint upload whose declared work exceeds its bytes (catalogue row 69): Playwright drives
headless Debian chromium against ``streamlit run`` on 127.0.0.1, with the browser fixture of tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.browser import BROWSER_MARKS, choose, explained, wait_text
from helpers.checkpoint_files import zip_bomb
from helpers.streamlit_ws import Server, streamlit_server

pytestmark = BROWSER_MARKS
CHECKPOINT_UPLOADER = '.st-key-cam_ckpt_file [data-testid="stFileUploaderDropzoneInput"]'


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The app on 127.0.0.1 without a file watcher; the test reads the server process's peak RSS."""
    with streamlit_server(log=tmp_path_factory.mktemp("browser") / "streamlit.log") as server:
        yield server


@pytest.mark.slow
@pytest.mark.bad_input(69, kind="PW")
def test_a_zip_bomb_checkpoint_is_refused_in_the_page_which_keeps_working(
    running: Server,
    browser,  # noqa: F811
    tmp_path: Path,
) -> None:
    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(zip_bomb())  # 1 MB; torch.load alone inflates it to a 1 GiB tensor (tests/test_checkpoints.py)
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(running.url)
    page.wait_for_selector('[data-testid="stImage"] img', timeout=120_000)
    shown = explained(page).split(" with ")[0]  # "Explaining class 281: tabby" (the timing part varies)
    choose(page, "cam_model", "Your checkpoint...")
    wait_text(page, "Upload a checkpoint to use it")
    peak = running.status("VmHWM")  # kB
    page.locator(CHECKPOINT_UPLOADER).set_input_files(str(bomb))
    wait_text(page, "is compressed")
    error = page.locator('[data-testid="stAlertContentError"]').first.inner_text()
    assert "record 'archive/data/0' is compressed" in error and "declaring 1,073,741,824" in error, error
    assert running.status("VmHWM") - peak < 200 * 1024  # the server's peak RSS: not the 1 GiB the file declares
    wait_text(page, "Still using: EfficientNet-Lite0")
    assert explained(page).split(" with ")[0] == shown  # the last model's CAM is still shown
    # and the page goes on working: back to a registry model, no error left
    choose(page, "cam_model", "ResNet-20 (CIFAR-10, trained by this project)")
    page.wait_for_function(
        "(before) => [...document.querySelectorAll('p')].some(p => p.innerText.startsWith('Explaining class') "
        "&& !p.innerText.startsWith(before))",
        arg=shown,
        timeout=120_000,
    )
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    assert page.locator('[data-testid="stException"]').count() == 0
    assert dialogs == []
    page.close()
