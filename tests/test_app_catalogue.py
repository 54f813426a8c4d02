"""AppTest checks of bad-inputs rows 5, 9 and 37 on the CAM Explorer page (the script runs in this process)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers.apptest import APP, TIMEOUT, explained
from PIL import Image
from streamlit.testing.v1 import AppTest

from camlib.cam import compute_cam_grid
from camlib.imaging import MAX_SIDE
from ui.explorer import cams


def _app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.bad_input(5)
@pytest.mark.parametrize("name", ["payload.exe", "notes.json", "drawing.svg", "photo.png.exe"])
def test_disallowed_extension_injected_past_the_frontend_fails_in_that_session_only(name: str) -> None:
    """AppTest, like a raw client, skips the browser's type filter: Streamlit's backend refuses the extension with
    StreamlitAPIException (its message redacted: showErrorDetails="type") in that session; another session of the
    same process renders its CAM as before."""
    other = _app()
    before = explained(other)
    attacker = _app()
    attacker.radio(key="cam_source").set_value("Upload").run()
    attacker.file_uploader(key="cam_upload").set_value((name, b"MZ\x90\x00 not an image", "image/png")).run()
    assert len(attacker.exception) == 1
    assert "Invalid file extension" not in attacker.exception[0].value  # redacted, no details leak
    other.selectbox(key="cam_method").set_value("gradcam++").run()
    other.selectbox(key="cam_method").set_value("gradcam").run()
    assert not other.exception and not other.error
    assert explained(other) == before


@pytest.mark.bad_input(9)
@pytest.mark.parametrize(("width", "height"), [(8000, 6000), (6000, 8000), (5000, 5000)])
def test_huge_legitimate_photo_is_downscaled_once_and_explained(width: int, height: int) -> None:
    """A huge but legitimate JPEG (the catalogue's 8000x6000, portrait and square too) is decoded once, downscaled so
    its longest side is MAX_SIDE with its aspect ratio kept, the downscaling is noted, and the CAM is shown."""
    gradient = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(3, axis=2)
    photo = Image.fromarray(np.broadcast_to(gradient, (height, width, 3)).copy())
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=60)
    at = _app()
    at.radio(key="cam_source").set_value("Upload").run()
    at.file_uploader(key="cam_upload").set_value(("big.jpg", buffer.getvalue(), "image/jpeg")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    shown = at.session_state["cam_last_image"].pixels
    assert max(shown.shape[:2]) == MAX_SIDE
    assert shown.shape[1] / shown.shape[0] == pytest.approx(width / height, abs=0.01)
    assert any("downscaled" in i.value for i in at.info)
    assert explained(at).startswith("**Explaining class")


@pytest.mark.bad_input(37)
@pytest.mark.parametrize("offset", [1000, -2000], ids=["past-the-last-class", "negative"])
def test_class_index_out_of_range_is_an_error_not_another_class(monkeypatch: pytest.MonkeyPatch, offset: int) -> None:
    """The page's class picker only offers 0..C-1, so an out-of-range index can only come from a bug: simulated by
    shifting the index on its way to camlib. camlib's ClassIndexError reaches the page as one error line, negative
    indices are not taken from the end, and the last good CAM stays on screen."""
    at = _app()
    before = explained(at)

    def shifted(model, x, layers, methods, *, class_idx, **kwargs):
        return compute_cam_grid(model, x, layers, methods, class_idx=class_idx + offset, **kwargs)

    monkeypatch.setattr(cams, "compute_cam_grid", shifted)
    cams._cam_store.clear()  # a cached CAM would not reach compute_cam_grid
    at.selectbox(key="cam_method").set_value("layercam").run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1 and "Cannot compute the CAM" in at.error[0].value
    assert "class" in at.error[0].value.lower() and ("range" in at.error[0].value or "0.." in at.error[0].value)
    assert explained(at) == before
