"""AppTest: hostile user text on every page, and camlib errors that must keep the last good result.

Every string a user controls (file names, imported pipeline contents, checkpoint key names in error messages) must reach
the page as escaped Markdown (``ui.text``): these tests put hostile names in every place a name is shown and assert
the exact escaped messages, and that no element carries a live link, image, LaTeX, directive, HTML or bidi control.
The browser side (no ``href``/``src`` the app did not create, no request to ``example.invalid``) is in
``tests/test_browser.py``.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from google.protobuf.message import Message
from helpers.apptest import APP, REPO, TIMEOUT, explained
from PIL import Image
from safetensors.torch import save as save_safetensors
from streamlit.testing.v1 import AppTest

from camlib.augment import CIFAR10_TRAIN_PIPELINE, pipeline_to_json
from camlib.cifar import default_root, detect_source
from camlib.errors import NonFiniteError
from camlib.models import load_model
from camlib.samples import DEFAULT_SAMPLE
from ui import models
from ui.explorer import cams
from ui.gallery import predictions
from ui.text import escape, md, shorten

CAM, LAB, GALLERY = "app_pages/cam_explorer.py", "app_pages/augmentation_lab.py", "app_pages/misclassifications.py"
WEIGHTS = REPO / "models/cifar10_resnet20/model.safetensors"
ROOT = default_root()
HAS_CIFAR = ROOT is not None and detect_source(ROOT) is not None

HOSTILE = {
    "link": "[x](https://example.invalid/) ![t](https://example.invalid/t.png).png",
    "html": "<img src=x onerror=alert(1)>.png",
    "latex": "$\\href{https://example.invalid}{x}$.png",
    "directive": ":red[x] :material/home: :smile:.png",
    "long": "n" * 4096 + ".png",
    "rtl": "photo\u202egnp.exe.png",
}
# The Lab's escaping test takes ~5 s per name: the first name in the quick tier, every name in the slow one.
QUICK_FIRST_HOSTILE = [
    pytest.param(value, id=key, marks=() if i == 0 else pytest.mark.slow)
    for i, (key, value) in enumerate(HOSTILE.items())
]
# What live Markdown/HTML made of the names above would need, unescaped, in an element's text.
LIVE = re.compile(r"(?<!\\)(\]\(https://|!\[|<img|\$\\href|:red\[|:material/)|\u202e|n{200}")


def _strings(message: Message) -> Iterator[str]:
    """Every string field of a protobuf message, recursively (labels, bodies, captions, help...)."""
    for _field, value in message.ListFields():
        values = [value] if isinstance(value, (str, bytes, int, float, Message)) else value  # repeated: a container
        for item in values:
            if isinstance(item, str):
                yield item
            elif isinstance(item, Message):
                yield from _strings(item)


def _nodes(node) -> Iterator:
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _nodes(child)


def assert_no_live_text(at: AppTest) -> None:
    """No element of the page (main area and sidebar) carries a hostile name unescaped."""
    assert not at.exception, [e.value for e in at.exception]
    for node in _nodes(at._tree):
        proto = getattr(node, "proto", None)
        if not isinstance(proto, Message):
            continue
        for text in _strings(proto):
            found = LIVE.search(text)
            assert not found, (type(node).__name__, found, text[:300])


def _png(*, alpha: bool = False, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 4 if alpha else 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _app(page: str = CAM) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if page != CAM:
        at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# --- hostile names ---------------------------------------------------------------------------------------------------


@pytest.mark.bad_input(20)
@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_cam_upload_name_is_escaped_and_not_named_after_removal(name: str) -> None:
    at = _app()
    default = explained(at)
    at.radio(key="cam_source").set_value("Upload").run()
    assert [c.value for c in at.caption if c.value.startswith("No upload yet")] == [
        md("No upload yet: showing {image}.", image=DEFAULT_SAMPLE)
    ]

    at.file_uploader(key="cam_upload").set_value((name, _png(alpha=True), "image/png")).run()
    assert_no_live_text(at)
    note = md("{file}: {note}", file=shorten(name), note="transparent pixels shown on a white background")
    assert note in [i.value for i in at.info]
    assert escape(shorten(name)) in note and len(note) < 400
    assert explained(at) != default

    at.file_uploader(key="cam_upload").set_value(None).run()  # removed: the page no longer names the file
    assert_no_live_text(at)
    assert [c.value for c in at.caption if c.value.startswith("No upload yet")] == [
        md("No upload yet: showing {image}.", image=DEFAULT_SAMPLE)
    ]
    assert explained(at).split(" with ")[0] == default.split(" with ")[0]  # back to the sample photo

    at.file_uploader(key="cam_upload").set_value((name, b"\x7fELF not an image", "image/png")).run()
    assert_no_live_text(at)
    assert any(e.value.startswith("Cannot use this file: ") for e in at.error)


@pytest.mark.bad_input(20)
@pytest.mark.parametrize("name", QUICK_FIRST_HOSTILE)
@pytest.mark.slow  # many seconds of AppTest; the page keeps quick tests of its main paths
def test_lab_upload_and_import_names_are_escaped(name: str) -> None:
    at = _app(LAB)
    if HAS_CIFAR:
        at.radio(key="aug_images").set_value("Sample photo or upload").run()
    at.radio(key="aug_source").set_value("Upload").run()
    at.file_uploader(key="aug_upload").set_value((name, _png(seed=1), "image/png")).run()
    assert_no_live_text(at)
    assert not at.error
    at.file_uploader(key="aug_upload").set_value(None).run()
    assert_no_live_text(at)
    assert md("No upload yet: showing {image}.", image=DEFAULT_SAMPLE) in [c.value for c in at.caption]

    json_name = name.removesuffix(".png") + ".json"
    at.file_uploader(key="aug_import").set_value(
        (json_name, pipeline_to_json(CIFAR10_TRAIN_PIPELINE).encode(), "application/json")
    ).run()
    assert_no_live_text(at)
    assert [s.value for s in at.success] == [md("Imported {file}.", file=shorten(json_name))]

    bad = json.loads(pipeline_to_json(CIFAR10_TRAIN_PIPELINE))
    bad["augmentation_lab"]["steps"][0]["transform"] = name  # a hostile step name
    at.file_uploader(key="aug_import").set_value((name + ".json", json.dumps(bad).encode(), "application/json")).run()
    assert_no_live_text(at)
    [error] = [e.value for e in at.error]
    assert error.startswith(md("Cannot import {file}: ", file=shorten(name + ".json"))), error[:300]


HOSTILE_PARAMS = [
    ("transform", HOSTILE["link"]),  # a step name
    ("param-name", {"[x](https://example.invalid/)": 1}),  # an unknown parameter
    ("param-value", {"rotate": ["<img src=x onerror=alert(1)>", "$\\href{https://example.invalid}{x}$"]}),
    ("choice-value", {"border_mode": ":red[x] ![t](https://example.invalid/t.png)"}),
    ("p", "\u202e![t](https://example.invalid/t.png)"),
]


@pytest.mark.bad_input(20)
@pytest.mark.parametrize(("where", "value"), HOSTILE_PARAMS, ids=[w for w, _ in HOSTILE_PARAMS])
def test_hostile_pipeline_contents_are_escaped(where: str, value) -> None:
    at = _app(LAB)
    document = json.loads(pipeline_to_json(CIFAR10_TRAIN_PIPELINE))
    affine = next(s for s in document["augmentation_lab"]["steps"] if s["transform"] == "Affine")
    if where == "transform":
        affine["transform"] = value
    elif where == "p":
        affine["p"] = value
    else:
        affine["params"].update(value)
    steps = [dict(s) for s in at.session_state["aug_steps"]]
    at.file_uploader(key="aug_import").set_value(("p.json", json.dumps(document).encode(), "application/json")).run()
    assert_no_live_text(at)
    [error] = [e.value for e in at.error]
    assert error.startswith(r"Cannot import p\.json: ")
    assert [dict(s) for s in at.session_state["aug_steps"]] == steps  # nothing imported


def _resnet20_state() -> dict[str, torch.Tensor]:
    model = load_model("cifar10_resnet20", allow_download=False, device=torch.device("cpu")).model
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.mark.bad_input(20)
@pytest.mark.skipif(not WEIGHTS.is_file(), reason="no CIFAR-10 ResNet-20 weights")
def test_checkpoint_file_name_and_key_names_are_escaped() -> None:
    at = _app()
    at.selectbox(key="cam_model").set_value("checkpoint").run()
    at.selectbox(key="cam_ckpt_arch").set_value("cifar10_resnet20").run()
    name = HOSTILE["link"].removesuffix(".png") + " " + HOSTILE["html"].removesuffix(".png") + ".safetensors"
    at.file_uploader(key="cam_ckpt_file").set_value((name, WEIGHTS.read_bytes(), "application/octet-stream")).run()
    assert_no_live_text(at)
    assert not at.error
    key = at.session_state["cam_last_model"]
    label = models.resolve_model(key, "cpu").spec.label

    at.file_uploader(key="cam_ckpt_file").set_value(None).run()  # the checkpoint's name is shown in "Still using"
    assert_no_live_text(at)
    assert md("Upload a checkpoint to use it. Still using: {model}", model=shorten(label)) in [i.value for i in at.info]

    hostile_keys = _resnet20_state() | {
        "[x](https://example.invalid/)": torch.zeros(1),
        "<img src=x onerror=alert(1)>": torch.zeros(1),
        "$\\href{https://example.invalid}{x}$": torch.zeros(1),
    }
    at.file_uploader(key="cam_ckpt_file").set_value(
        (HOSTILE["rtl"] + ".safetensors", save_safetensors(hostile_keys), "application/octet-stream")
    ).run()
    assert_no_live_text(at)
    assert len(at.error) == 1
    message = at.error[0].value
    assert escape("[x](https://example.invalid/)") in message or escape("<img src=x onerror=alert(1)>") in message


# --- camlib errors keep the last good result ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.bad_input(59)
def test_lab_grid_too_large_keeps_last_grid_and_export() -> None:
    # The case: a sample photo, RandomCrop off, Affine scale (2, 2) with fit_output: 8218x6490 grid image.
    at = _app(LAB)
    if HAS_CIFAR:
        at.radio(key="aug_images").set_value("Sample photo or upload").run()
    at.toggle(key="aug_s1__enabled").set_value(False).run()
    at.checkbox(key="aug_s3_fit_output").set_value(True).run()
    assert not at.error and not at.exception
    last = at.session_state["aug_last_grid"]
    images = [(i.caption, i.url) for element in at.image for i in element.proto.imgs]
    at.slider(key="aug_s3_scale").set_value((2.0, 2.0)).run()
    assert not at.exception, [e.value for e in at.exception]
    [error] = [e.value for e in at.error]
    # Refused from the sizes the pipeline declares, before any tile is made (bad-inputs row 71).
    assert re.match(r"This pipeline can make [\d,]+x[\d,]+ tiles .* grid of them is too large", error), error
    assert at.session_state["aug_last_grid"] is last
    assert [(i.caption, i.url) for element in at.image for i in element.proto.imgs] == images  # the same PNGs
    assert "Showing the last grid that worked." in [c.value for c in at.caption]
    assert [b.label for b in at.get("download_button")] == ["JSON", "YAML", "Python"]  # the export stays

    at.slider(key="aug_s3_scale").set_value((1.0, 1.0)).run()
    assert not at.error and not at.exception
    assert at.session_state["aug_last_grid"] is not last


@pytest.mark.bad_input(59)
def test_cam_error_keeps_last_cam(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app()
    before, images = explained(at), len(at.image)

    def fail(*args, **kwargs):
        raise NonFiniteError("the model produced NaN logits [x](https://example.invalid/)")

    monkeypatch.setattr(cams, "compute_cam_grid", fail)
    cams._cam_store.clear()  # a cached CAM would not reach compute_cam_grid
    at.selectbox(key="cam_method").set_value("xgradcam").run()
    assert_no_live_text(at)
    assert [e.value for e in at.error] == [
        md("Cannot compute the CAM: {error}", error="the model produced NaN logits [x](https://example.invalid/)")
    ]
    assert explained(at) == before and len(at.image) == images
    assert "Showing the last result that worked." in [c.value for c in at.caption]


def _original_overlay_size(at: AppTest) -> tuple[int, int]:
    """(height, width) of the "On the original image" overlay the page sent."""
    [url] = [i.url for element in at.image for i in element.proto.imgs if i.caption.startswith("On the original")]
    assert url.startswith("data:image/jpeg;base64,")  # sent inline by the overlay fragment (ui/explorer/cam_view.py)
    content = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(content))).shape[:2]


@pytest.mark.bad_input(59)
def test_cam_error_keeps_the_last_cam_on_its_own_image(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app()
    at.radio(key="cam_source").set_value("Upload").run()
    at.file_uploader(key="cam_upload").set_value(("wide.png", _png(seed=11), "image/png")).run()  # 48x64
    assert not at.error and _original_overlay_size(at) == (48, 64)
    before = explained(at)

    def fail(*args, **kwargs):
        raise NonFiniteError("the model produced NaN logits")

    monkeypatch.setattr(cams, "compute_cam_grid", fail)
    tall = np.random.default_rng(12).integers(0, 256, (120, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(tall).save(buffer, format="PNG")
    at.file_uploader(key="cam_upload").set_value(("tall.png", buffer.getvalue(), "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == ["Cannot compute the CAM: the model produced NaN logits"]
    assert explained(at) == before
    assert _original_overlay_size(at) == (48, 64)  # the kept map is drawn on the image it explains


@pytest.mark.bad_input(59)
def test_cam_prediction_error_keeps_last_cam(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app()
    before, images = explained(at), len(at.image)

    def fail(*args, **kwargs):
        raise NonFiniteError("the model produced NaN logits")

    monkeypatch.setattr(models, "predict_probabilities", fail)
    at.radio(key="cam_source").set_value("Upload").run()
    at.file_uploader(key="cam_upload").set_value(("new.png", _png(seed=7), "image/png")).run()  # not in the cache
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == ["Cannot compute the CAM: the model produced NaN logits"]
    assert explained(at) == before and len(at.image) == images


@pytest.mark.bad_input(59)
def test_dropped_checkpoint_falls_back_to_the_bundled_model() -> None:
    at = _app()
    at.session_state["cam_last_model"] = "checkpoint:cifar10_resnet20:0000000000000000"  # dropped from the store
    at.selectbox(key="cam_model").set_value("checkpoint").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("no longer loaded" in e.value and "upload it again" in e.value for e in at.error)
    assert at.session_state["cam_last_model"] == "efficientnet_lite0"
    assert explained(at)


@pytest.mark.bad_input(59)
@pytest.mark.skipif(not (HAS_CIFAR and WEIGHTS.is_file()), reason="needs CIFAR-10 and the ResNet-20 weights")
def test_gallery_error_keeps_last_page(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _app(GALLERY)
    assert_no_live_text(at)
    captions = [c for image in at.image for c in image.captions]
    assert len(captions) == 12

    def fail(*args, **kwargs):
        raise NonFiniteError("non-finite CAM")

    monkeypatch.setattr(predictions, "gallery_cams", fail)
    at.number_input(key="gal_page").set_value(2).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == ["Cannot compute the CAMs: non\\-finite CAM"]
    assert [c for image in at.image for c in image.captions] == captions
    assert "Showing the last page that worked." in [c.value for c in at.caption]


# --- small things ----------------------------------------------------------------------------------------------------


def test_a_cached_cam_says_so() -> None:
    cams._cam_store.clear()
    at = _app()
    fresh = next(m.value for m in at.markdown if m.value.startswith("**Explaining class"))
    match = re.search(r" in (\d+) ms on ", fresh)
    assert match and "cache" not in fresh, fresh
    at.slider(key="cam_alpha").set_value(0.8).run()  # an overlay change reuses the cached CAM
    cached = next(m.value for m in at.markdown if m.value.startswith("**Explaining class"))
    assert f" from the cache (first computed in {match[1]} ms) on " in cached, cached
    assert cached.split(" with ")[0] == fresh.split(" with ")[0]


def _encoded(fmt: str) -> bytes:
    pixels = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.bad_input(3)
@pytest.mark.parametrize(
    ("name", "fmt", "note"),
    [
        ("photo.png", "JPEG", "the file is named .png but contains JPEG data; decoded as JPEG"),
        ("photo.webp", "JPEG", "the file is named .webp but contains JPEG data; decoded as JPEG"),
        ("photo.jpg", "PNG", "the file is named .jpg but contains PNG data; decoded as PNG"),
        ("photo.jpeg", "JPEG", None),
        ("photo.PNG", "PNG", None),
    ],
)
def test_extension_that_disagrees_with_the_content_is_noted(name: str, fmt: str, note: str | None) -> None:
    at = _app()
    at.radio(key="cam_source").set_value("Upload").run()
    at.file_uploader(key="cam_upload").set_value((name, _encoded(fmt), "image/png")).run()
    assert not at.exception and not at.error
    assert [i.value for i in at.info] == ([md("{file}: {note}", file=name, note=note)] if note else [])
    assert explained(at)  # decoded and explained either way
