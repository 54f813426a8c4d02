"""Soak tests in this process: repeated work with a memory bound measured as RSS after a warm-up (bad-inputs rows 7
and 51). The soaks against a running server (rows 21, 50, 52) are in tests/test_server.py, which starts one server
for all of them."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import bilevel_png, gif_declaring
from helpers.models import seeded_resnet18
from PIL import Image

from camlib.cam import compute_cams
from camlib.errors import ImageTooLargeError
from camlib.imaging import decode_image
from camlib.overlay import overlay_heatmap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")

TTL_S = 3


def own_status(field_name: str) -> int:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


@pytest.mark.bad_input(7)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_repeated_decompression_bombs_cost_no_memory() -> None:
    """300 refusals of small files declaring 30 MP to 900 MP (PNG and GIF headers): each is refused from its header;
    peak RSS grows by less than 16 MB (one decoded 30 MP image would take 90 MB) and RSS does not creep."""
    bombs = [bilevel_png(30000, 30000), bilevel_png(6000, 5000), gif_declaring(20000, 20000)]
    for data in bombs:  # warm-up: imports, Pillow plugins
        with pytest.raises(ImageTooLargeError):
            decode_image(data)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    start = own_status("VmRSS")
    for i in range(300):
        with pytest.raises(ImageTooLargeError):
            decode_image(bombs[i % len(bombs)])
    assert own_status("VmHWM") - start < 16 * 1024
    assert own_status("VmRSS") - start < 8 * 1024


@pytest.mark.slow
@pytest.mark.bad_input(51)
def test_500_cam_runs_with_varied_images_do_not_grow_memory(one_torch_thread: None) -> None:
    """The catalogue's 500 CAM runs, in camlib: varied seeded 32x32 images through compute_cams (two layers) and
    overlay_heatmap on one shared model; RSS growth after 50 warm-up runs stays under 30 MB and every map is valid."""
    model = seeded_resnet18()
    generator = torch.Generator().manual_seed(0)
    rss: list[int] = []
    for run in range(500):
        x = torch.rand(1, 3, 32, 32, generator=generator)
        result = compute_cams(model, x, ["layer2", "layer3"], method="gradcam")
        overlay = overlay_heatmap((x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8), result.maps["layer3"][0])
        assert overlay.shape == (32, 32, 3) and np.isfinite(result.maps["layer2"]).all()
        if run == 49 or run % 50 == 49:
            rss.append(own_status("VmRSS"))
    assert (max(rss[1:]) - rss[0]) < 30 * 1024, [r // 1024 for r in rss]


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_200_app_reruns_with_alternating_settings_and_uploads_do_not_grow_memory() -> None:
    """A soak in AppTest: 200 reruns of the CAM Explorer that alternate the method (the gradient methods),
    the target layers, the overlay and the uploaded image (12 different photos, so results are computed, cached and
    evicted). RSS after the first 20 reruns grows by less than 50 MB over the remaining 180: every cache is bounded."""
    import gc

    from streamlit.testing.v1 import AppTest

    from camlib.cam import METHODS
    from ui import keys

    methods = [name for name, spec in METHODS.items() if spec.family == "gradient"][:5]
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300).run()
    at.radio(key=f"{keys.CAM}_source").set_value("Upload").run()
    layers_key = keys.cam_layers(at.session_state[f"{keys.CAM}_last_model"])
    options = at.multiselect(key=layers_key).options
    layer_sets = [[options[-1]], [options[-2], options[-1]], [options[-3]]]
    uploads = [_png(seed) for seed in range(12)]
    rss: dict[int, int] = {}
    for run in range(200):
        step = run % 4
        if step == 0:
            at.file_uploader(key=f"{keys.CAM}_upload").set_value((f"p{run}.png", uploads[run // 4 % 12], "image/png"))
        elif step == 1:
            at.selectbox(key=keys.CAM_METHOD).set_value(methods[run // 4 % len(methods)])
        elif step == 2:
            at.multiselect(key=layers_key).set_value(layer_sets[run // 4 % len(layer_sets)])
        else:
            at.slider(key=f"{keys.CAM}_alpha").set_value(0.3 + 0.1 * (run // 4 % 5))
        at.run()
        assert not at.exception and not at.error, (run, [e.value for e in at.exception], [e.value for e in at.error])
        if run in (19, 99, 199):
            gc.collect()
            rss[run] = own_status("VmRSS")
    assert rss[199] - rss[19] < 50 * 1024, {run: kb // 1024 for run, kb in rss.items()}
