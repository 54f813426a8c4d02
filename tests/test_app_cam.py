"""AppTest tests of the CAM Explorer page (streamlit.testing.v1 runs the script in this process)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.apptest import APP, TIMEOUT, explained
from PIL import Image
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from camlib.overlay import signed_map
from ui import checkpoint_store, keys, models, overlays
from ui.explorer import cam_view, cams


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture()
def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _layers(at: AppTest):
    """The target-layer multiselect of the model in use (its key carries the model)."""
    return at.multiselect(key=keys.cam_layers(at.session_state[f"{keys.CAM}_last_model"]))


def test_default_flow_shows_chelsea_gradcam(app: AppTest) -> None:
    # With no input at all: the chelsea photo, the bundled model and its Grad-CAM on the suggested layer.
    assert app.selectbox(key="cam_sample").value == "chelsea (cat)"
    assert app.selectbox(key="cam_model").value == "efficientnet_lite0"
    assert _layers(app).value == ["bn2"]
    assert app.selectbox(key="cam_method").value == "gradcam"
    text = explained(app)
    assert any(f"class {k}:" in text for k in (281, 282, 285)), text  # tabby / tiger cat / Egyptian cat
    assert not app.error
    assert len(app.image) >= 2  # the overlay on the model's view and on the original
    assert [b.label for b in app.get("download_button")] == ["Overlay PNG", "Raw CAM (.npy)", "Settings (JSON)"]
    assert app.button(key=keys.CAM_FAITH_START).label == "Score faithfulness (1 cell)"  # scored on request


def test_overlays_are_inline_jpegs_and_the_download_a_lossless_png_made_when_clicked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The overlay fragment sends JPEG data: URLs (quick to encode on every overlay change); the "Overlay PNG"
    download is a deferred callable that encodes the same overlay losslessly when clicked."""
    deferred = []
    add_deferred = MediaFileManager.add_deferred

    def spy(self, generate, *args, **kwargs):
        deferred.append(generate)
        return add_deferred(self, generate, *args, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", spy)
    overlays._overlay_image.clear()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    images = {i.caption: i.url for element in at.image for i in element.proto.imgs}
    [layer_url] = [url for caption, url in images.items() if caption.startswith("bn2")]
    assert all(url.startswith("data:image/jpeg;base64,") for url in images.values()), list(images)
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(layer_url.split(",", 1)[1]))).convert("RGB"))

    [make_png] = deferred  # the overlay download; the .npy and the JSON are small and sent as they are
    png = make_png()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    exported = np.asarray(Image.open(io.BytesIO(png)))
    assert exported.shape == shown.shape == (cam_view.TILE_PX, cam_view.TILE_PX, 3)
    error = np.abs(exported.astype(np.int16) - shown.astype(np.int16))
    assert error.mean() < 3 and 0 < error.max() < 128  # the same overlay, JPEG's loss aside


@pytest.mark.parametrize(("height", "width", "drawn"), [(1200, 1600, (768, 1024)), (1100, 700, (1024, 652))])
def test_a_large_upload_is_drawn_at_most_original_px_on_its_longer_side(height: int, width: int, drawn) -> None:
    """The detailed overlay "On the original image" is redrawn on every overlay change: a large upload is drawn
    area-averaged to ``ORIGINAL_PX`` on its longer side (its aspect kept), with the heat placed by the scaled crop
    box, so the cropped-away margins are still dimmed."""
    photo = np.full((height, width, 3), 128, np.uint8)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.radio(key="cam_source").set_value("Upload").run()
    at.file_uploader(key="cam_upload").set_value(("large.png", _png(photo), "image/png")).run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    [url] = [i.url for element in at.image for i in element.proto.imgs if i.caption.startswith("On the original")]
    drawn_image = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    assert drawn_image.shape[:2] == drawn and max(drawn) == cam_view.ORIGINAL_PX
    # EfficientNet-Lite0 centre-crops the shorter side: the long side's margins are outside the crop, dimmed to 45%
    # with no heat; inside, half grey plus half heat is at least 64
    long_axis = int(np.argmax(drawn))
    middle = drawn_image.take(range(drawn[long_axis] // 2 - 5, drawn[long_axis] // 2 + 5), axis=long_axis)
    edge = drawn_image.take(range(0, 3), axis=long_axis)
    assert abs(edge.mean() - 0.45 * 128) < 3 and middle.mean() > 62


def _heatmap_trace(at: AppTest) -> dict:
    """The detailed view's interactive heatmap (the last chart of the page), as plotly JSON."""
    return json.loads(at.get("plotly_chart")[-1].proto.spec)["data"][0]


def _plotly_array(encoded: dict) -> np.ndarray:
    """A numpy array plotly sent as a typed array (``dtype``, base64 ``bdata``, ``shape``)."""
    shape = tuple(int(n) for n in encoded["shape"].split(","))
    return np.frombuffer(base64.b64decode(encoded["bdata"]), dtype=encoded["dtype"]).reshape(shape)


def test_the_signed_map_shows_evidence_against_the_class_on_a_diverging_scale(app: AppTest) -> None:
    plain = _heatmap_trace(app)
    assert (plain["zmin"], plain["zmax"]) == (0, 1) and "zmid" not in plain
    app.radio(key=keys.CAM_CLASS_MODE).set_value("Choose a class").run()
    app.selectbox(key=keys.cam_class("efficientnet_lite0")).set_value(0).run()  # tench: a cat is evidence against
    app.toggle(key=keys.CAM_SIGNED).set_value(True).run()
    assert not app.exception and not app.error
    trace = _heatmap_trace(app)
    assert (trace["zmin"], trace["zmid"], trace["zmax"]) == (-1, 0, 1)
    view = app.session_state[keys.CAM_LAST_VIEW][0]
    raw = view.result.raw["bn2"][0]
    expected = cam_view.hover_map(signed_map(raw, view.result.maps["bn2"][0].shape))
    shown = _plotly_array(trace["z"])
    np.testing.assert_allclose(shown, expected, atol=1e-6)
    assert (raw < 0).any() and shown.min() < 0  # what the ReLU drops is shown


@pytest.mark.bad_input(1, 2)
def test_bad_upload_keeps_last_good_image(app: AppTest) -> None:
    app.radio(key="cam_source").set_value("Upload").run()
    good = np.zeros((64, 96, 3), np.uint8)
    good[:, 48:] = 255
    app.file_uploader(key="cam_upload").set_value(("good.png", _png(good), "image/png")).run()
    assert not app.exception and not app.error
    before = explained(app)

    app.file_uploader(key="cam_upload").set_value(("evil.png", b"MZ\x90\x00 not an image", "image/png")).run()
    assert not app.exception
    assert any("Cannot use this file" in e.value and "not a valid image" in e.value for e in app.error)
    assert explained(app) == before  # the page goes on with the last good image

    app.file_uploader(key="cam_upload").set_value(("empty.png", b"", "image/png")).run()
    assert any("empty file" in e.value for e in app.error)
    assert explained(app) == before


def test_change_of_layer(app: AppTest) -> None:
    _layers(app).set_value(["blocks.5"]).run()
    assert not app.exception and not app.error
    assert app.selectbox(key="cam_detail_layer").value == "blocks.5"
    assert app.selectbox(key="cam_detail_layer").options == ["blocks.5"]


def test_several_layers_side_by_side_and_shared_scale(app: AppTest) -> None:
    _layers(app).set_value(["bn2", "blocks.5", "blocks.3"]).run()
    assert not app.exception and not app.error
    assert app.selectbox(key="cam_detail_layer").options == ["bn2", "blocks.5", "blocks.3"]
    images_per_layer = len(app.image)
    assert images_per_layer >= 4  # three layer overlays plus the original-image overlay
    app.toggle(key="cam_shared_scale").set_value(True).run()
    assert not app.exception and not app.error


def test_small_layer_warns(app: AppTest) -> None:
    options = _layers(app).options
    tiny = [o for o in options if "x 1 x 1" in o]
    assert tiny, "the layer list shows each layer's C x H x W"
    _layers(app).set_value([tiny[0].split("  [")[0]]).run()
    assert any("always blank" in w.value for w in app.warning)


@pytest.mark.slow  # many seconds of AppTest; the page keeps quick tests of its main paths
def test_overlay_changes_do_not_rerun_the_model(app: AppTest) -> None:
    cams._cam_store.clear()  # Eigen-CAM below must be computed, whatever other tests of this process cached
    app.run()  # the default CAM again, cached
    model = models.get_model("efficientnet_lite0", "cpu").model
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        app.slider(key="cam_alpha").set_value(0.8).run()
        app.selectbox(key="cam_colormap").set_value("viridis").run()
        app.slider(key="cam_threshold").set_value(0.3).run()
        app.toggle(key="cam_shared_scale").set_value(True).run()
        assert not app.exception and not app.error
        assert calls == [], "overlay settings must reuse the cached CAM"
        app.selectbox(key="cam_method").set_value("hirescam").run()
        assert calls == [], "a gradient method was computed with the default one's pass (cams.grid_partners)"
        app.selectbox(key="cam_method").set_value("eigencam").run()
        assert calls, "a method of another pass does run the model (the counter works)"
    finally:
        handle.remove()


def test_choose_a_class_by_name(app: AppTest) -> None:
    app.radio(key="cam_class_mode").set_value("Choose a class").run()
    app.selectbox(key=keys.cam_class("efficientnet_lite0")).set_value(207).run()  # golden retriever
    assert not app.exception
    assert "class 207: golden retriever" in explained(app)


def test_shared_model_left_clean_after_page_runs(app: AppTest) -> None:
    model = models.get_model("efficientnet_lite0", "cpu").model
    _layers(app).set_value(["bn2", "blocks.4"]).run()
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()


def test_user_checkpoint_upload_and_refusal(app: AppTest, tmp_path) -> None:
    import pickle

    weights = (Path(APP).parent / "models" / "cifar10_resnet20" / "model.safetensors").read_bytes()
    app.selectbox(key="cam_model").set_value("checkpoint").run()
    assert not app.exception
    assert any("Upload a checkpoint" in i.value for i in app.info)
    app.selectbox(key="cam_ckpt_arch").set_value("cifar10_resnet20").run()
    app.file_uploader(key="cam_ckpt_file").set_value(("mine.safetensors", weights, "application/octet-stream")).run()
    assert not app.exception and not app.error
    assert _layers(app).value == ["layer3"]  # the CIFAR ResNet-20's suggested layer
    assert explained(app)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    app.file_uploader(key="cam_ckpt_file").set_value(("evil.pt", pickle.dumps(Evil()), "application/octet-stream"))
    app.run()
    assert not app.exception
    assert any(r"Only safetensors \/ weights\-only checkpoints are accepted" in e.value for e in app.error)
    assert not marker.exists()
    assert explained(app)  # the last good model goes on working


# --- checkpoint uploads: which reading was used, and the checkpoint size cap ----------------------------------------


def _saved_state(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_uploaders_have_their_own_size_caps(app: AppTest) -> None:
    # server.maxUploadSize is the checkpoint cap (the server has one cap for all uploads); images keep 20 MB.
    from camlib.imaging import MAX_UPLOAD_BYTES
    from camlib.models import MAX_CHECKPOINT_BYTES

    app.radio(key="cam_source").set_value("Upload").run()
    assert app.file_uploader(key="cam_upload").proto.max_upload_size_mb == MAX_UPLOAD_BYTES // 2**20 == 20
    app.selectbox(key="cam_model").set_value("checkpoint").run()
    assert app.file_uploader(key="cam_ckpt_file").proto.max_upload_size_mb == MAX_CHECKPOINT_BYTES // 2**20 == 600
    assert {"ckpt", "tar"} <= {t.lstrip(".") for t in app.file_uploader(key="cam_ckpt_file").allowed_type}


@pytest.mark.bad_input(66)
def test_checkpoint_upload_says_which_container_and_prefix(app: AppTest) -> None:
    from safetensors.torch import load

    weights = load((Path(APP).parent / "models" / "cifar10_resnet20" / "model.safetensors").read_bytes())
    lightning = {
        "epoch": 3,
        "state_dict": {f"model._orig_mod.{k}": v for k, v in weights.items()},
        "optimizer_states": [],
        "hyper_parameters": {"lr": 0.1},
    }
    app.selectbox(key="cam_model").set_value("checkpoint").run()
    app.selectbox(key="cam_ckpt_arch").set_value("cifar10_resnet20").run()
    app.file_uploader(key="cam_ckpt_file").set_value(("last.ckpt", _saved_state(lightning), "application/octet-stream"))
    app.run()
    assert not app.exception and not app.error
    shown = [t.value for t in app.text]
    assert "Your checkpoint: loaded from checkpoint['state_dict'], prefix 'model._orig_mod.' removed" in shown
    assert _layers(app).value == ["layer3"] and explained(app)


def test_resnet50_sized_checkpoint_is_uploaded_and_used(app: AppTest) -> None:
    """A ResNet-50 state dict (random weights, 102 MB) goes through the checkpoint uploader and is used."""
    from camlib.models import MODELS, build_architecture

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        data = _saved_state(build_architecture(MODELS["resnet50"]).state_dict())
    assert 100 * 2**20 > len(data) > 20 * 2**20  # 97.7 MB: over the image cap, under the checkpoint cap
    try:
        app.selectbox(key="cam_model").set_value("checkpoint").run()
        app.selectbox(key="cam_ckpt_arch").set_value("resnet50").run()
        app.file_uploader(key="cam_ckpt_file").set_value(("resnet50.pt", data, "application/octet-stream"))
        del data
        app.run()
        assert not app.exception, [e.value for e in app.exception]
        assert not app.error, [e.value for e in app.error]
        assert "Your checkpoint: loaded from the file's top level, no prefix" in [t.value for t in app.text]
        used = [m for key, m in checkpoint_store._checkpoint_models().items() if key.startswith("checkpoint:resnet50:")]
        assert len(used) == 1 and used[0].spec.label == "ResNet-50 (your checkpoint: resnet50.pt)"
        assert _layers(app).value == ["layer4"] and explained(app)
    finally:
        checkpoint_store._checkpoint_models().clear()  # 100 MB of weights: not kept for the other tests of this process


def test_checkpoint_store_is_bounded_by_bytes_and_a_rerun_does_not_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    from camlib.cifar_models import build_cifar_model

    bundled = (Path(APP).parent / "models" / "cifar10_resnet20" / "model.safetensors").read_bytes()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        other = _saved_state(build_cifar_model("resnet20").state_dict())
    store = checkpoint_store._checkpoint_models()
    store.clear()
    try:
        first = checkpoint_store.register_checkpoint(
            "cifar10_resnet20", bundled, "a.safetensors", device="cpu", upload_id="upload-1"
        )
        assert (
            list(store) == [f"{first}@cpu"]
            and store[f"{first}@cpu"].spec.notes == "loaded from the file's top level, no prefix"
        )
        size = sum(t.numel() * t.element_size() for t in store[f"{first}@cpu"].model.state_dict().values())
        with monkeypatch.context() as patch:  # the same upload again (a rerun): neither hashed nor loaded
            patch.setattr(checkpoint_store, "load_checkpoint", lambda *args: pytest.fail("loaded again"))
            assert (
                checkpoint_store.register_checkpoint(
                    "cifar10_resnet20", b"not read", "a.safetensors", device="cpu", upload_id="upload-1"
                )
                == first
            )
        # room for one ResNet-20, not two
        monkeypatch.setattr(checkpoint_store, "CHECKPOINT_STORE_BYTES", size * 3 // 2)
        second = checkpoint_store.register_checkpoint(
            "cifar10_resnet20", other, "b.pt", device="cpu", upload_id="upload-2"
        )
        assert second != first and list(store) == [f"{second}@cpu"]  # the oldest went
        # A dropped model is loaded again when its upload comes back.
        again = checkpoint_store.register_checkpoint(
            "cifar10_resnet20", bundled, "a.safetensors", device="cpu", upload_id="upload-1"
        )
        assert again == first
        assert list(store) == [f"{first}@cpu"]
    finally:
        store.clear()


@pytest.mark.bad_input(64)
def test_layer_inspector_shows_each_layers_feature_map_and_layout(app: AppTest) -> None:
    """The inspector table: the true C x H x W and how the output was read (all channels-first for the default
    EfficientNet-Lite0; the channels-last and token readings are tested on ConvNeXt, Swin, ViT and DeiT in
    tests/test_layers.py)."""
    table = app.dataframe[0].value
    assert {"layer", "type", "feature map (C x H x W)", "layout", "note"} <= set(table.columns)
    bn2 = table[table["layer"] == "bn2"].iloc[0]
    assert bn2["feature map (C x H x W)"] == "1280 x 7 x 7"
    assert bn2["layout"] == "channels-first (B, C, H, W)"
