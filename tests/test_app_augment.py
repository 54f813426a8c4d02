"""AppTest tests of the Augmentation Lab page (app_pages/augmentation_lab.py with ui/lab/pipeline_editor.py).

The page runs in this process (streamlit.testing.v1). Grids are compared byte for byte with ``camlib.augment`` called
directly; the images the page sends are read back from AppTest's in-memory media storage (see the ``media`` fixture).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from helpers.apptest import APP, TIMEOUT
from PIL import Image
from streamlit.runtime.media_file_storage import MediaFileStorageError
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as app_test_module

from camlib import drawing
from camlib.augment import (
    CIFAR10_TRAIN_PIPELINE,
    TRANSFORMS,
    GridResult,
    Pipeline,
    PipelineStep,
    augment_grid,
    pipeline_to_json,
    pipeline_to_query,
    tile_grid,
    trace_tile,
    validate_step,
)
from camlib.cifar import CLASS_NAMES, default_root, detect_source
from camlib.overlay import upscale_nearest
from camlib.samples import DEFAULT_SAMPLE, load_sample
from ui import datasets, keys
from ui.text import escape

LAB = "app_pages/augmentation_lab.py"
CAM = "app_pages/cam_explorer.py"
ROOT = default_root()
HAS_CIFAR = ROOT is not None and detect_source(ROOT) is not None
DEFAULT_TRANSFORMS = ["PadIfNeeded", "RandomCrop", "HorizontalFlip", "Affine", "ColorJitter", "CoarseDropout"]
GRID_TILE_PX = 96  # app_pages/augmentation_lab.py: tiles are shown at least this large

needs_cifar = pytest.mark.skipif(not HAS_CIFAR, reason="CIFAR-10 not found (set $CAMLIB_CIFAR10_ROOT)")


# --- helpers ---------------------------------------------------------------------------------------------------------


class _RecordingStorage(MemoryMediaFileStorage):
    """AppTest's media storage (one per run), remembered so a test can read what the page sent."""

    instances: list[_RecordingStorage] = []

    def __init__(self, media_endpoint: str) -> None:
        super().__init__(media_endpoint)
        _RecordingStorage.instances.append(self)


@pytest.fixture()
def media(monkeypatch: pytest.MonkeyPatch):
    """``media(url) -> bytes``: the content of a media URL (image, download) of the latest AppTest run."""
    _RecordingStorage.instances = []
    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", _RecordingStorage)

    def fetch(url: str) -> bytes:
        name = url.rsplit("/", 1)[-1]
        for storage in reversed(_RecordingStorage.instances):
            try:
                return storage.get_file(name).content
            except MediaFileStorageError:
                continue
        raise KeyError(f"no media file {url}")

    return fetch


def _lab(*, via_navigation: bool = False) -> AppTest:
    """A new session on the Augmentation Lab (through the default page and ``switch_page`` when asked)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if via_navigation:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    at.switch_page(LAB).run()
    _assert_clean(at)
    return at


def _assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _grid(at: AppTest) -> GridResult:
    return at.session_state["aug_last_grid"]


def _steps(at: AppTest) -> list[dict]:
    """The canonical editor state, copied (ids included)."""
    return [dict(s, params=dict(s["params"])) for s in at.session_state["aug_steps"]]


def _without_ids(steps: list[dict]) -> list[tuple]:
    """Steps as comparable values: normalised params (a colour is '#000000' in a widget, (0, 0, 0) in a file)."""
    return [
        (
            s["transform"],
            validate_step(PipelineStep(s["transform"], s["params"], s["p"], s["enabled"]), i),
            s["p"],
            s["enabled"],
        )
        for i, s in enumerate(steps)
    ]


def _pipeline(at: AppTest) -> Pipeline:
    steps = [PipelineStep(s["transform"], s["params"], s["p"], s["enabled"]) for s in at.session_state["aug_steps"]]
    return Pipeline(tuple(steps), int(at.session_state["aug_seed"]))


def _step(at: AppTest, step_id: int) -> dict:
    return next(s for s in at.session_state["aug_steps"] if s["id"] == step_id)


def _cifar():
    """The split the page shows (the same process-wide cached object the page reads)."""
    return datasets.get_cifar(str(ROOT), "test")


def _page_indices(seed: int, pool: np.ndarray, count: int = 64) -> list[int]:
    """How the page draws the images of a "many" grid (independent of augment_grid's own default)."""
    return np.random.default_rng(seed).choice(pool, size=count, replace=False).tolist()


def _images_by_caption(at: AppTest, *, steps: bool = False) -> dict[str, str]:
    """Caption -> media URL of every image on the page (the step-by-step view's only when ``steps``)."""
    shown = {}
    for element in at.image:
        for image in element.proto.imgs:
            if steps or not (image.caption[:1].isdigit() or image.caption.startswith("source image,")):
                shown[image.caption] = image.url
    return shown


def _augmented_url(at: AppTest) -> str:
    urls = [url for caption, url in _images_by_caption(at).items() if caption.startswith("Augmented")]
    assert len(urls) == 1, _images_by_caption(at)
    return urls[0]


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _expected_augmented_image(grid: GridResult, labels: list[str] | None) -> np.ndarray:
    tiles = drawing.upscale_tiles(grid.tiles, GRID_TILE_PX)
    if labels:
        tiles = drawing.label_tiles(tiles, labels)
    return tile_grid(tiles, grid.rows, grid.cols)


def _download(at: AppTest, key: str, media) -> bytes:
    button = next(b for b in at.get("download_button") if b.proto.id.endswith(f"-{key}"))
    return media(button.proto.url)


# --- 1. default flow -------------------------------------------------------------------------------------------------


@needs_cifar
def test_default_flow_cifar_grid_matches_camlib(media) -> None:
    at = _lab(via_navigation=True)
    assert [t.value for t in at.title] == ["Augmentation Lab"]
    assert at.radio(key="aug_images").value == "CIFAR-10"
    assert at.radio(key="aug_split").value == "test"
    assert at.number_input(key="aug_rows").value == 8 and at.number_input(key="aug_cols").value == 8
    assert at.selectbox(key="aug_mode").value == "many"
    assert [s["transform"] for s in at.session_state["aug_steps"]] == DEFAULT_TRANSFORMS
    assert [e.label for e in at.expander][:6] == [f"{i + 1}. {name}" for i, name in enumerate(DEFAULT_TRANSFORMS)]
    assert _without_ids(_steps(at)) == [
        (s.transform, validate_step(s, i), s.p, s.enabled) for i, s in enumerate(CIFAR10_TRAIN_PIPELINE.steps)
    ]
    assert at.session_state["aug_seed"] == 0 and at.number_input(key="aug_seed_input").value == 0

    grid = _grid(at)
    assert (grid.mode, grid.rows, grid.cols, grid.seed) == ("many", 8, 8, 0)
    assert grid.tiles.shape == (64, 32, 32, 3) and grid.tiles.dtype == np.uint8
    data = _cifar()
    indices = _page_indices(0, np.arange(len(data.images)))
    assert list(grid.indices) == indices and len(set(indices)) == 64
    direct = augment_grid(data.images, CIFAR10_TRAIN_PIPELINE, mode="many", rows=8, cols=8, seed=0, indices=indices)
    assert direct.tiles.tobytes() == grid.tiles.tobytes()
    assert direct.applied == grid.applied

    # both grids are shown, at the size of the grid, and the augmented one is this grid
    shown = _images_by_caption(at)
    assert set(shown) == {"Original", "Augmented (seed 0)"}, shown
    labels = [CLASS_NAMES[data.labels[i]] for i in grid.indices]
    expected = _expected_augmented_image(grid, labels)
    augmented = _decode(media(shown["Augmented (seed 0)"]))
    assert augmented.shape == expected.shape == (8 * (GRID_TILE_PX + 2) + 2,) * 2 + (3,)
    np.testing.assert_array_equal(augmented, expected)  # sent losslessly (PNG), pixel for pixel
    original = _decode(media(shown["Original"]))
    originals = tile_grid(drawing.label_tiles(drawing.upscale_tiles(data.images[indices], GRID_TILE_PX), labels), 8, 8)
    np.testing.assert_array_equal(original, originals)

    assert [b.label for b in at.get("download_button")] == ["JSON", "YAML", "Python"]
    assert _download(at, "aug_dl_json", media).decode() == pipeline_to_json(CIFAR10_TRAIN_PIPELINE)
    assert at.toggle(key="aug_show_labels").value is True


@needs_cifar
def test_grid_images_are_sent_lossless(media) -> None:
    at = _lab()
    grid = _grid(at)
    labels = [CLASS_NAMES[_cifar().labels[i]] for i in grid.indices]
    url = _augmented_url(at)
    sent = media(url)
    assert url.endswith(".png") and sent.startswith(b"\x89PNG")
    assert np.array_equal(_decode(sent), _expected_augmented_image(grid, labels))


# --- 2. editing keeps the other steps' settings ---------------------------------------------------------------------


@needs_cifar
def test_add_remove_move_keep_other_steps_and_survive_page_switch() -> None:
    at = _lab()
    ids = [s["id"] for s in at.session_state["aug_steps"]]
    assert ids == [0, 1, 2, 3, 4, 5]

    at.slider(key="aug_s3_rotate").set_value((-30.0, 30.0)).run()
    at.slider(key="aug_s4__p").set_value(0.3).run()
    at.number_input(key="aug_seed_input").set_value(7).run()
    _assert_clean(at)
    changed = {3: ("rotate", (-30.0, 30.0)), 4: ("p", 0.3)}

    def assert_changed_kept() -> None:
        assert _step(at, 3)["params"]["rotate"] == (-30.0, 30.0)
        assert at.slider(key="aug_s3_rotate").value == (-30.0, 30.0)
        assert _step(at, 4)["p"] == 0.3
        assert at.slider(key="aug_s4__p").value == 0.3
        assert at.session_state["aug_seed"] == 7 and at.number_input(key="aug_seed_input").value == 7

    assert_changed_kept()
    untouched = {s["id"]: s for s in _steps(at) if s["id"] not in changed}

    # add: the new step gets a fresh id, its own widgets, and changing it touches nothing else
    at.selectbox(key="aug_add_choice").set_value("Solarize")
    at.button(key="aug_add").click().run()
    _assert_clean(at)
    assert [s["id"] for s in at.session_state["aug_steps"]] == [0, 1, 2, 3, 4, 5, 6]
    assert _step(at, 6)["transform"] == "Solarize"
    at.slider(key="aug_s6__p").set_value(0.9).run()
    assert_changed_kept()

    # remove step 2 (RandomCrop, id 1): nobody's key shifts
    at.button(key="aug_s1__remove").click().run()
    _assert_clean(at)
    assert [s["id"] for s in at.session_state["aug_steps"]] == [0, 2, 3, 4, 5, 6]
    assert "aug_s1__p" not in [s.key for s in at.slider]
    assert_changed_kept()
    assert _step(at, 6)["p"] == 0.9 and at.slider(key="aug_s6__p").value == 0.9

    # move Affine up, then PadIfNeeded down
    at.button(key="aug_s3__up").click().run()
    assert [s["id"] for s in at.session_state["aug_steps"]] == [0, 3, 2, 4, 5, 6]
    at.button(key="aug_s0__down").click().run()
    _assert_clean(at)
    expected_ids = [3, 0, 2, 4, 5, 6]
    assert [s["id"] for s in at.session_state["aug_steps"]] == expected_ids
    assert [e.label for e in at.expander][:6] == [
        "1. Affine",
        "2. PadIfNeeded",
        "3. HorizontalFlip",
        "4. ColorJitter",
        "5. CoarseDropout",
        "6. Solarize",
    ]
    assert_changed_kept()
    assert _step(at, 6)["p"] == 0.9
    for step_id, before in untouched.items():
        if step_id != 1:
            assert _step(at, step_id) == before, step_id
    for step_id in expected_ids:  # every remaining step still draws its own widgets under its id
        assert at.slider(key=f"aug_s{step_id}__p").value == _step(at, step_id)["p"]
        assert at.toggle(key=f"aug_s{step_id}__enabled").value is True

    # the grid is the pipeline the editor shows
    pipeline = _pipeline(at)
    assert [s.transform for s in pipeline.steps] == [
        "Affine",
        "PadIfNeeded",
        "HorizontalFlip",
        "ColorJitter",
        "CoarseDropout",
        "Solarize",
    ]
    grid = _grid(at)
    direct = augment_grid(_cifar().images, pipeline, rows=8, cols=8, indices=list(grid.indices))
    assert grid.seed == 7 and direct.tiles.tobytes() == grid.tiles.tobytes()
    before_switch = _steps(at)

    # to the CAM Explorer and back: the pipeline, its widgets, the seed and the grid are restored
    at.switch_page(CAM).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] != ["Augmentation Lab"]
    at.switch_page(LAB).run()
    _assert_clean(at)
    assert _steps(at) == before_switch
    assert_changed_kept()
    assert at.slider(key="aug_s6__p").value == 0.9
    assert _grid(at).tiles.tobytes() == grid.tiles.tobytes()


@needs_cifar
def test_grid_settings_survive_page_switch() -> None:
    at = _lab()
    at.number_input(key="aug_rows").set_value(4).run()
    at.number_input(key="aug_cols").set_value(5).run()
    at.multiselect(key="aug_classes").set_value(["cat"]).run()
    _assert_clean(at)
    at.switch_page(CAM).run()
    at.switch_page(LAB).run()
    _assert_clean(at)
    assert at.number_input(key="aug_rows").value == 4
    assert at.number_input(key="aug_cols").value == 5
    assert at.multiselect(key="aug_classes").value == ["cat"]


# --- 3. invalid values ------------------------------------------------------------------------------------------------


@needs_cifar
@pytest.mark.parametrize(
    ("key", "bad", "good", "transform", "param"),
    [
        ("aug_s4_brightness", (1.2, 0.8), (0.8, 1.2), "ColorJitter", "brightness"),
        ("aug_s3_rotate", (20.0, -20.0), (-15.0, 15.0), "Affine", "rotate"),
        ("aug_s5_num_holes_range", (3, 1), (1, 1), "CoarseDropout", "num_holes_range"),
    ],
)
@pytest.mark.bad_input(53)
def test_reversed_range_shows_one_line_error_and_keeps_last_grid(key, bad, good, transform, param) -> None:
    at = _lab()
    last = _grid(at)
    images_before = _images_by_caption(at)

    at.slider(key=key).set_value(bad).run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1, [e.value for e in at.error]
    message = at.error[0].value
    assert "\n" not in message and len(message) < 200, message
    assert escape(f"{transform}.{param}") in message and "reversed range" in message, message
    assert "validation error" not in message.lower() and "Traceback" not in message
    assert _grid(at) is last  # the last good grid stays, and is still shown
    assert _images_by_caption(at) == images_before
    assert any(c.value == "Showing the last grid that worked." for c in at.caption)
    assert any(c.value.startswith("Export is disabled") for c in at.caption)

    at.slider(key=key).set_value(good).run()
    _assert_clean(at)
    assert _grid(at) is not last
    assert _grid(at).tiles.tobytes() == last.tiles.tobytes()  # the same settings as before: the same grid
    assert [b.label for b in at.get("download_button")] == ["JSON", "YAML", "Python"]


@needs_cifar
@pytest.mark.bad_input(54)
def test_out_of_domain_values_never_reach_albumentations() -> None:
    # The browser cannot send these; AppTest (or a hostile websocket client) can. Streamlit puts an out-of-bounds
    # widget value back to the widget's default; the page must never crash and the pipeline must stay valid.
    at = _lab()
    at.slider(key="aug_s4__p").set_value(1.5).run()
    at.slider(key="aug_s2__p").set_value(float("nan")).run()
    at.slider(key="aug_s0_min_height").set_value(1000).run()
    at.slider(key="aug_s3_rotate").set_value((-500.0, 10.0)).run()
    at.number_input(key="aug_rows").set_value(40).run()
    at.number_input(key="aug_seed_input").set_value(-5).run()
    _assert_clean(at)
    for i, step in enumerate(_steps(at)):
        validate_step(PipelineStep(step["transform"], step["params"], step["p"], step["enabled"]), i)
    grid = _grid(at)
    assert 1 <= grid.rows <= 16 and 0 <= grid.seed < 2**32
    assert len(_images_by_caption(at)) == 2


@needs_cifar
def test_missing_data_root_falls_back_to_the_sample_photo() -> None:
    at = _lab()
    at.text_input(key=keys.DATA_ROOT).set_value("/nonexistent/cifar").run()
    assert not at.exception and not at.error
    assert any("No CIFAR-10 found" in w.value for w in at.warning)
    grid = _grid(at)
    assert set(grid.indices) == {0} and grid.tiles.shape == (64, 32, 32, 3)
    assert len(_images_by_caption(at)) == 2


# --- 4. export and import --------------------------------------------------------------------------------------------


def _upload(at: AppTest, name: str, data: bytes) -> AppTest:
    return at.file_uploader(key="aug_import").set_value((name, data, "application/json")).run()


@needs_cifar
@pytest.mark.slow  # many seconds of AppTest; the page keeps quick tests of its main paths
def test_exported_json_imports_to_the_same_editor_and_grid(media) -> None:
    at = _lab()
    at.slider(key="aug_s3_rotate").set_value((-40.0, 25.0)).run()
    at.slider(key="aug_s4__p").set_value(0.35).run()
    at.slider(key="aug_s4_hue").set_value((-0.2, 0.1)).run()
    at.toggle(key="aug_s2__enabled").set_value(False).run()
    at.selectbox(key="aug_add_choice").set_value("Posterize")
    at.button(key="aug_add").click().run()
    at.number_input(key="aug_seed_input").set_value(1234).run()
    _assert_clean(at)
    exported_steps = _without_ids(_steps(at))
    grid_before = _grid(at)
    assert grid_before.seed == 1234
    exported = _download(at, "aug_dl_json", media)
    assert exported.decode() == pipeline_to_json(_pipeline(at))
    document = json.loads(exported)
    assert document["augmentation_lab"]["seed"] == 1234
    assert [s["enabled"] for s in document["augmentation_lab"]["steps"]] == [True, True, False, True, True, True, True]

    # another session, altered: fewer steps, another seed; then import the file
    other = _lab()
    other.button(key="aug_s1__remove").click().run()
    other.slider(key="aug_s5__p").set_value(1.0).run()
    other.number_input(key="aug_seed_input").set_value(5).run()
    _assert_clean(other)
    assert _grid(other).tiles.tobytes() != grid_before.tiles.tobytes()

    _upload(other, "pipeline.json", exported)
    _assert_clean(other)
    assert [s.value for s in other.success] == [r"Imported pipeline\.json."]
    assert _without_ids(_steps(other)) == exported_steps
    assert other.session_state["aug_seed"] == 1234 and other.number_input(key="aug_seed_input").value == 1234
    steps = _steps(other)
    affine = next(s for s in steps if s["transform"] == "Affine")
    jitter = next(s for s in steps if s["transform"] == "ColorJitter")
    flip = next(s for s in steps if s["transform"] == "HorizontalFlip")
    assert other.slider(key=f"aug_s{affine['id']}_rotate").value == (-40.0, 25.0)
    assert other.slider(key=f"aug_s{jitter['id']}__p").value == 0.35
    assert other.slider(key=f"aug_s{jitter['id']}_hue").value == (-0.2, 0.1)
    assert other.toggle(key=f"aug_s{flip['id']}__enabled").value is False
    assert [e.label for e in other.expander][2] == "3. HorizontalFlip (off)"
    grid_after = _grid(other)
    assert grid_after.seed == 1234
    assert grid_after.indices == grid_before.indices
    assert grid_after.tiles.tobytes() == grid_before.tiles.tobytes()
    assert _download(other, "aug_dl_json", media) == exported

    # the import is applied once: editing afterwards is not undone by the file still in the uploader
    other.slider(key=f"aug_s{jitter['id']}__p").set_value(0.6).run()
    _assert_clean(other)
    assert next(s for s in _steps(other) if s["transform"] == "ColorJitter")["p"] == 0.6


def _hand_edited_export() -> bytes:
    document = json.loads(pipeline_to_json(CIFAR10_TRAIN_PIPELINE))
    document["augmentation_lab"]["steps"][4]["params"]["brightness"] = [1.2, 0.8]
    return json.dumps(document).encode()


@needs_cifar
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{this is not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"transform": {"transforms": []}}', "not an Augmentation Lab export"),
        (
            json.dumps({"augmentation_lab": {"format": 1, "seed": 0, "steps": [{"transform": "Explode"}]}}).encode(),
            "Explode",
        ),
        (_hand_edited_export(), "ColorJitter.brightness"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
    ],
    ids=["syntax", "empty", "foreign", "unknown-transform", "reversed-range", "binary"],
)
def test_bad_import_shows_error_and_changes_nothing(data: bytes, expected: str) -> None:
    at = _lab()
    at.slider(key="aug_s4__p").set_value(0.45).run()
    steps, grid = _steps(at), _grid(at)

    _upload(at, "bad.json", data)
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1, [e.value for e in at.error]
    message = at.error[0].value
    assert message.startswith(r"Cannot import bad\.json:") and escape(expected) in message, message
    assert "\n" not in message
    assert not at.success
    assert _steps(at) == steps and at.session_state["aug_seed"] == 0
    assert _grid(at).tiles.tobytes() == grid.tiles.tobytes()
    assert len(_images_by_caption(at)) == 2


@needs_cifar
def test_import_keeps_grid_settings() -> None:
    at = _lab()
    at.toggle(key="aug_show_labels").set_value(False).run()
    at.multiselect(key="aug_classes").set_value(["ship"]).run()
    assert at.toggle(key="aug_show_labels").value is False
    _upload(at, "pipeline.json", pipeline_to_json(CIFAR10_TRAIN_PIPELINE).encode())
    _assert_clean(at)
    assert at.multiselect(key="aug_classes").value == ["ship"]  # survives (key does not start with 'aug_s')
    assert at.toggle(key="aug_show_labels").value is False


@pytest.mark.slow  # many seconds of AppTest; the page keeps quick tests of its main paths
def test_import_keeps_chosen_sample_photo() -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page(LAB).run()
    if HAS_CIFAR:
        at.radio(key="aug_images").set_value("Sample photo or upload").run()
    at.selectbox(key="aug_sample").set_value("coffee (cup)").run()
    _upload(at, "pipeline.json", pipeline_to_json(CIFAR10_TRAIN_PIPELINE).encode())
    _assert_clean(at)
    assert [s.value for s in at.success] == [r"Imported pipeline\.json."]
    assert at.selectbox(key="aug_sample").value == "coffee (cup)"


# --- 5. seeds, modes, classes, sources -------------------------------------------------------------------------------


@needs_cifar
def test_new_samples_changes_seed_and_grid_and_seed_is_reproducible() -> None:
    at = _lab()
    first = _grid(at)
    at.button(key="aug_new_samples").click().run()
    _assert_clean(at)
    assert at.session_state["aug_seed"] == 1 and at.number_input(key="aug_seed_input").value == 1
    second = _grid(at)
    assert second.seed == 1 and "Augmented (seed 1)" in _images_by_caption(at)
    assert second.indices != first.indices and second.tiles.tobytes() != first.tiles.tobytes()

    at.number_input(key="aug_seed_input").set_value(0).run()
    _assert_clean(at)
    again = _grid(at)
    assert again.seed == 0 and again.indices == first.indices
    assert again.tiles.tobytes() == first.tiles.tobytes()

    # the same seed in a new session gives the same grid too
    assert _grid(_lab()).tiles.tobytes() == first.tiles.tobytes()


@needs_cifar
def test_one_image_many_augmentations(media) -> None:
    at = _lab()
    at.number_input(key="aug_rows").set_value(3).run()
    at.number_input(key="aug_cols").set_value(5).run()
    at.selectbox(key="aug_mode").set_value("one").run()
    at.number_input(key="aug_image_index").set_value(17).run()
    _assert_clean(at)
    grid = _grid(at)
    assert (grid.mode, grid.rows, grid.cols) == ("one", 3, 5)
    assert grid.indices == (17,) * 15 and grid.tiles.shape == (15, 32, 32, 3)
    assert len({tile.tobytes() for tile in grid.tiles}) > 1  # many augmentations of one image
    direct = augment_grid(_cifar().images, _pipeline(at), mode="one", rows=3, cols=5, indices=[17])
    assert direct.tiles.tobytes() == grid.tiles.tobytes()

    shown = _images_by_caption(at)
    assert set(shown) == {"Original", "Augmented (seed 0)"}
    original = _decode(media(shown["Original"]))
    assert original.shape == (256, 256, 3)  # one image, upscaled, not a grid
    assert np.abs(original.astype(int) - np.repeat(np.repeat(_cifar().images[17], 8, 0), 8, 1)).mean() < 4
    augmented = _decode(media(shown["Augmented (seed 0)"]))
    assert augmented.shape == (3 * (GRID_TILE_PX + 2) + 2, 5 * (GRID_TILE_PX + 2) + 2, 3)


@needs_cifar
def test_class_filter_restricts_labels() -> None:
    at = _lab()
    at.multiselect(key="aug_classes").set_value(["cat", "ship"]).run()
    _assert_clean(at)
    data = _cifar()
    grid = _grid(at)
    labels = {CLASS_NAMES[data.labels[i]] for i in grid.indices}
    assert labels == {"cat", "ship"}
    pool = np.flatnonzero(np.isin(data.labels, [3, 8]))
    assert list(grid.indices) == _page_indices(0, pool)
    direct = augment_grid(data.images, _pipeline(at), rows=8, cols=8, indices=list(grid.indices))
    assert direct.tiles.tobytes() == grid.tiles.tobytes()

    at.selectbox(key="aug_mode").set_value("one").run()
    at.number_input(key="aug_image_index").set_value(999).run()
    _assert_clean(at)
    assert _grid(at).indices == (int(pool[999]),) * 64


@pytest.mark.slow  # many seconds of AppTest; the page keeps quick tests of its main paths
def test_sample_photo_source() -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page(LAB).run()
    assert not at.exception, [e.value for e in at.exception]
    if HAS_CIFAR:
        at.radio(key="aug_images").set_value("Sample photo or upload").run()
    _assert_clean(at)
    assert at.radio(key="aug_source").value == "Sample photo"
    assert at.selectbox(key="aug_sample").value == DEFAULT_SAMPLE
    assert "aug_show_labels" not in [t.key for t in at.toggle]  # no class labels on a photo
    grid = _grid(at)
    assert grid.indices == (0,) * 64 and grid.tiles.shape == (64, 32, 32, 3)
    photo = load_sample(DEFAULT_SAMPLE)
    direct = augment_grid(photo, CIFAR10_TRAIN_PIPELINE, rows=8, cols=8, indices=[0] * 64)
    assert direct.tiles.tobytes() == grid.tiles.tobytes()
    assert set(_images_by_caption(at)) == {"Original", "Augmented (seed 0)"}

    at.selectbox(key="aug_sample").set_value("coffee (cup)").run()
    _assert_clean(at)
    coffee = augment_grid(load_sample("coffee (cup)"), CIFAR10_TRAIN_PIPELINE, rows=8, cols=8, indices=[0] * 64)
    assert _grid(at).tiles.tobytes() == coffee.tiles.tobytes()


# --- 6. disabled steps -----------------------------------------------------------------------------------------------


@needs_cifar
def test_disabled_step_has_no_effect() -> None:
    at = _lab()
    enabled = _grid(at)
    at.toggle(key="aug_s4__enabled").set_value(False).run()
    _assert_clean(at)
    assert _step(at, 4)["enabled"] is False
    grid = _grid(at)
    without = Pipeline(tuple(s for s in CIFAR10_TRAIN_PIPELINE.steps if s.transform != "ColorJitter"), 0)
    direct = augment_grid(_cifar().images, without, rows=8, cols=8, indices=list(grid.indices))
    assert direct.tiles.tobytes() == grid.tiles.tobytes()
    assert grid.tiles.tobytes() != enabled.tiles.tobytes()
    assert all(a["transform"] != "ColorJitter" for tile in grid.applied for a in tile)

    # a disabled step's settings can still be edited and are kept for when it is enabled again
    at.slider(key="aug_s4_brightness").set_value((0.5, 1.5)).run()
    _assert_clean(at)
    assert _grid(at).tiles.tobytes() == direct.tiles.tobytes()
    at.toggle(key="aug_s4__enabled").set_value(True).run()
    _assert_clean(at)
    assert _step(at, 4)["params"]["brightness"] == (0.5, 1.5)
    assert _grid(at).tiles.tobytes() != direct.tiles.tobytes()


@needs_cifar
def test_disabled_step_label_updates_at_once() -> None:
    at = _lab()
    at.toggle(key="aug_s2__enabled").set_value(False).run()
    assert [e.label for e in at.expander][2] == "3. HorizontalFlip (off)"


def test_catalogue_has_the_transforms_the_tests_use() -> None:
    assert {"Solarize", "Posterize", *DEFAULT_TRANSFORMS} <= set(TRANSFORMS)


# --- step by step ----------------------------------------------------------------------------------------------------


@needs_cifar
def test_step_by_step_view_shows_each_step_of_the_chosen_tile(media) -> None:
    at = _lab()
    at.number_input(key="aug_tile").set_value(5).run()
    _assert_clean(at)
    grid, pipeline = _grid(at), _pipeline(at)
    trace = trace_tile(_cifar().images, pipeline, grid, 5)
    shown = _images_by_caption(at, steps=True)
    steps = [c for c in shown if c[0].isdigit()]
    assert steps == [
        f"{k + 1}. {name}{'' if applied else ' (not applied)'}, {image.shape[1]}x{image.shape[0]}"
        for k, (name, image, applied) in enumerate(zip(trace.transforms, trace.images, trace.applied, strict=True))
    ]
    assert steps[0] == "1. PadIfNeeded, 40x40"
    last = _decode(media(shown[steps[-1]]))
    np.testing.assert_array_equal(last, upscale_nearest(grid.tiles[5], 96))  # the last step is the tile itself
    original = _decode(media(shown["source image, 32x32"]))
    np.testing.assert_array_equal(original, upscale_nearest(_cifar().images[grid.indices[5]], 96))


# --- shareable state: the URL query ----------------------------------------------------------------------------------


@needs_cifar
def test_a_link_reproduces_the_grid() -> None:
    at = _lab()
    at.slider(key="aug_s3_rotate").set_value((-30.0, 30.0)).run()
    at.number_input(key="aug_seed_input").set_value(11).run()
    at.number_input(key="aug_rows").set_value(3).run()
    at.number_input(key="aug_cols").set_value(5).run()
    at.multiselect(key="aug_classes").set_value(["cat", "ship"]).run()
    _assert_clean(at)
    shared = {k: at.query_params[k] for k in ("pipeline", "seed", "rows", "cols", "mode", "classes", "split")}
    shared = {k: v[0] if isinstance(v, list) else v for k, v in shared.items()}
    assert shared["seed"] == "11" and shared["classes"] == "cat,ship" and shared["rows"] == "3"
    grid = _grid(at)

    other = AppTest.from_file(APP, default_timeout=TIMEOUT)  # a new session opening the link
    for key, value in shared.items():
        other.query_params[key] = value
    other.switch_page(LAB).run()
    _assert_clean(other)
    again = _grid(other)
    assert (again.rows, again.cols, again.seed, again.indices) == (3, 5, 11, grid.indices)
    assert again.tiles.tobytes() == grid.tiles.tobytes() and again.applied == grid.applied
    assert _without_ids(_steps(other)) == _without_ids(_steps(at))
    # the page keeps its own edits afterwards: the link is applied once, not on every rerun
    other.number_input(key="aug_seed_input").set_value(12).run()
    assert _grid(other).seed == 12


@needs_cifar
def test_a_bad_link_says_what_is_wrong_and_applies_the_rest() -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["pipeline"] = '[["Sharpen",{"alpha":[0.9,0.1]},1.0,true]]'
    at.query_params["rows"] = "2"
    at.switch_page(LAB).run()
    assert not at.exception
    assert any(escape("Sharpen.alpha") in e.value and "reversed range" in e.value for e in at.error), [
        e.value for e in at.error
    ]
    assert _grid(at).rows == 2


# --- strict link values, and the cost check before a slow grid (catalogue rows 73 and 71) ----------------------------


@needs_cifar
@pytest.mark.bad_input(73, kind="AT")
@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"seed": "²", "rows": "9" * 5000}, ("seed", "rows")),  # isdigit() says yes, int() says no; past 4,300 digits
        ({"rows": "٣", "seed": " 7 "}, ("rows", "seed")),  # int() accepts both; a link never writes them
        ({"pipeline": '[["Sharpen",{"alpha":[' + "9" * 400 + ",0.5]},1.0,true]]"}, ("Sharpen.alpha", "400 digits")),
        ({"pipeline": "[" * 3000 + "]" * 3000}, ("nests",)),
    ],
)
def test_link_values_int_refuses_are_named_and_the_rest_applies(query: dict, named: tuple) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in {**query, "cols": "3"}.items():
        at.query_params[key] = value
    at.switch_page(LAB).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = " ".join(e.value for e in at.error)
    assert all(escape(name) in errors for name in named), errors
    assert len(errors) < 2000  # a 5,000-digit value is not echoed whole
    assert _grid(at).cols == 3  # the rest of the link applied


@needs_cifar
@pytest.mark.bad_input(73, kind="AT")
def test_an_out_of_range_image_index_in_a_link_is_refused_not_silently_image_0() -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in {"mode": "one", "split": "test", "classes": "cat", "image": "59999", "rows": "2"}.items():
        at.query_params[key] = value
    at.switch_page(LAB).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("59999" in e.value and "out of range" in e.value for e in at.error), [e.value for e in at.error]
    grid = _grid(at)
    cats = np.flatnonzero(np.asarray(_cifar().labels) == CLASS_NAMES.index("cat"))
    assert grid.rows == 2 and set(grid.indices) == {int(cats[0])}  # image 0 of the cats, said so in the error


@needs_cifar
@pytest.mark.bad_input(71, kind="AT")
def test_a_link_over_the_budget_shows_the_estimate_and_waits_for_the_button() -> None:
    slow = Pipeline(
        tuple(PipelineStep("Superpixels", {"p_replace": (1.0, 1.0), "n_segments": (256, 256)}) for _ in range(8)), 0
    )
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in {"pipeline": pipeline_to_query(slow), "rows": "16", "cols": "16"}.items():
        at.query_params[key] = value
    at.switch_page(LAB).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("256 tiles" in i.value for i in at.info), [i.value for i in at.info]
    assert [b.label for b in at.button if b.key == "aug_start"][0].startswith("Draw the grid (about")
    assert "aug_last_grid" not in at.session_state  # nothing was augmented
    # a cheap pipeline needs no button
    at.query_params.clear()
    cheap = AppTest.from_file(APP, default_timeout=TIMEOUT)
    cheap.switch_page(LAB).run()
    assert not [b for b in cheap.button if b.key == "aug_start"]
