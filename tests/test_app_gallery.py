"""AppTest tests of the Misclassification gallery and of the Augmentation Lab's model-in-the-loop badges.

Both pages use the real CIFAR-10 test split and the project's ResNet-20 weights; the whole-test-set predictions are
cached by ``camlib.prediction_cache`` (in memory, and on disk in the session's temporary ``CAMLIB_CACHE_DIR``, see
conftest.py), so only the first test pays for them.
"""

from __future__ import annotations

import copy
import os
import re
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from helpers.apptest import APP, REPO, TIMEOUT
from PIL import Image
from streamlit.testing.v1 import AppTest

from camlib import prediction_cache
from camlib.cifar import CLASS_NAMES, default_root, load_cifar10
from camlib.evaluation import confusion_matrix, flip_report, predict_probabilities
from camlib.models import MODELS, load_model
from ui import datasets, models
from ui.gallery import predictions
from ui.lab import model_loop
from ui.text import escape

DATA = Path(__file__).resolve().parents[2] / "shared/data/cifar10"
WEIGHTS = REPO / "models/cifar10_resnet20/model.safetensors"
CAPTION = re.compile(r"^#(\d+): (\w+) → (\w+) \((\d+)%\)$")
ACCURACY = re.compile(r"^\*\*Test accuracy ([\d.]+)%\*\* on ([\d,]+) images .*; ([\d,]+) mistakes\.$")

pytestmark = [
    pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared CIFAR-10 image-folder copy is not at {DATA}"),
    pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"no CIFAR-10 ResNet-20 weights at {WEIGHTS}"),
    pytest.mark.usefixtures("one_torch_thread"),
]


@pytest.fixture(scope="module")
def root() -> str:
    found = default_root()
    if found is None:
        pytest.skip("no CIFAR-10 data root for the app (default_root() is None)")
    return str(found)


@pytest.fixture(scope="module")
def test_set(root: str):
    return load_cifar10(root, "test")


@pytest.fixture(scope="module")
def probabilities(root: str) -> np.ndarray:
    """What the page uses: the app's cached whole-test-set predictions (checked against the model below)."""
    return predictions.dataset_predictions("cifar10_resnet20", "cpu", root)


@pytest.fixture(scope="module")
def model():
    return load_model("cifar10_resnet20", allow_download=False, device=torch.device("cpu"))


def _page(path: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page(path).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture()
def gallery() -> AppTest:
    return _page("app_pages/misclassifications.py")


def _shown(at: AppTest) -> list[tuple[int, str, str, int]]:
    """(test index, true class, predicted class, confidence %) of every gallery image, in page order."""
    shown = []
    for image in at.image:
        for caption in image.captions:
            match = CAPTION.match(caption)
            assert match, caption
            shown.append((int(match[1]), match[2], match[3], int(match[4])))
    return sorted(shown)


def _wrong(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.flatnonzero(probabilities.argmax(axis=1) != labels)


def _page_total(at: AppTest) -> int:
    return int(re.search(r"of (\d+) images", at.number_input(key="gal_page").label)[1])


def test_app_predictions_are_the_models(probabilities: np.ndarray, test_set, model) -> None:
    assert probabilities.shape == (10_000, 10)
    sample = np.random.default_rng(0).choice(10_000, 300, replace=False)
    direct = predict_probabilities(model.model, test_set.images[sample], model.spec.preprocessing)
    np.testing.assert_allclose(probabilities[sample], direct, rtol=1e-4, atol=1e-5)


def test_gallery_shows_accuracy_and_the_first_twelve_mistakes(
    gallery: AppTest, probabilities: np.ndarray, test_set
) -> None:
    assert not gallery.error
    assert gallery.selectbox(key="gal_model").value == "cifar10_resnet20"
    assert gallery.selectbox(key="gal_layer").value == "layer3"  # the default layer: last map >= 7x7
    line = next(m.value for m in gallery.markdown if m.value.startswith("**Test accuracy"))
    match = ACCURACY.match(line)
    assert match, line
    wrong = _wrong(probabilities, test_set.labels)
    assert int(match[2].replace(",", "")) == 10_000
    assert int(match[3].replace(",", "")) == len(wrong)
    assert float(match[1]) == pytest.approx(100 * (1 - len(wrong) / 10_000), abs=0.005)
    assert len(gallery.image) == 12
    shown = _shown(gallery)
    assert [s[0] for s in shown] == wrong[:12].tolist()
    for index, truth, guess, confidence in shown:
        assert truth == CLASS_NAMES[test_set.labels[index]]
        assert guess == CLASS_NAMES[probabilities[index].argmax()] and guess != truth
        assert confidence == round(100 * float(probabilities[index].max()))
    assert _page_total(gallery) == len(wrong)


def test_filter_by_true_class_shows_only_cats(gallery: AppTest, probabilities: np.ndarray, test_set) -> None:
    gallery.multiselect(key="gal_true").set_value(["cat"]).run()
    assert not gallery.exception and not gallery.error
    shown = _shown(gallery)
    assert len(shown) == 12
    assert all(truth == "cat" and test_set.labels[index] == 3 for index, truth, _, _ in shown)
    cats = [i for i in _wrong(probabilities, test_set.labels) if test_set.labels[i] == 3]
    assert [s[0] for s in shown] == cats[:12]
    assert _page_total(gallery) == len(cats)


def test_paging_changes_the_images(gallery: AppTest, probabilities: np.ndarray, test_set) -> None:
    first = _shown(gallery)
    first_urls = [url for image in gallery.image for url in image.value]
    gallery.number_input(key="gal_page").set_value(2).run()
    assert not gallery.exception and not gallery.error
    second = _shown(gallery)
    assert len(second) == 12
    assert [s[0] for s in second] == _wrong(probabilities, test_set.labels)[12:24].tolist()
    assert not {s[0] for s in first} & {s[0] for s in second}
    assert [url for image in gallery.image for url in image.value] != first_urls


def test_last_page_and_filters_reset_the_page(gallery: AppTest, probabilities: np.ndarray, test_set) -> None:
    wrong = _wrong(probabilities, test_set.labels)
    last = -(-len(wrong) // 12)
    gallery.number_input(key="gal_page").set_value(last).run()
    assert not gallery.exception
    assert [s[0] for s in _shown(gallery)] == wrong[(last - 1) * 12 :].tolist()
    gallery.multiselect(key="gal_true").set_value(["truck"]).run()  # fewer pages than the current page number
    assert not gallery.exception and not gallery.error
    assert gallery.number_input(key="gal_page").value == 1
    assert all(truth == "truck" for _, truth, _, _ in _shown(gallery))


@pytest.mark.parametrize("layer", ["layer1", "layer2", "layer2.0.conv1"])
def test_changing_the_layer_redraws_the_cams(layer: str, gallery: AppTest, root: str) -> None:
    before_urls = [url for image in gallery.image for url in image.value]
    before = _shown(gallery)
    gallery.selectbox(key="gal_layer").set_value(layer).run()
    assert not gallery.exception and not gallery.error
    assert gallery.selectbox(key="gal_layer").value == layer
    assert _shown(gallery) == before  # the same mistakes...
    assert [url for image in gallery.image for url in image.value] != before_urls  # ...with other maps
    indices = tuple(s[0] for s in before)
    for_predicted, for_true = predictions.gallery_cams("cifar10_resnet20", "cpu", root, indices, layer=layer)
    assert for_predicted.shape == for_true.shape == (12, 32, 32)
    assert np.isfinite(for_predicted).all() and for_predicted.min() >= 0 and for_predicted.max() <= 1


def test_confusion_cell_filters(gallery: AppTest, probabilities: np.ndarray, test_set) -> None:
    # A click on the confusion matrix sets gal_true/gal_pred (AppTest cannot click a plotly chart): set them directly.
    gallery.session_state["gal_true"] = ["cat"]
    gallery.session_state["gal_pred"] = ["dog"]
    gallery.run()
    assert not gallery.exception and not gallery.error
    assert gallery.multiselect(key="gal_true").value == ["cat"]
    assert gallery.multiselect(key="gal_pred").value == ["dog"]
    shown = _shown(gallery)
    assert shown and all((truth, guess) == ("cat", "dog") for _, truth, guess, _ in shown)
    matrix = confusion_matrix(test_set.labels, probabilities.argmax(axis=1), 10)
    assert _page_total(gallery) == matrix[3, 5]  # the cell's count


def test_predicted_class_filter_alone(gallery: AppTest, probabilities: np.ndarray, test_set) -> None:
    gallery.multiselect(key="gal_pred").set_value(["ship", "truck"]).run()
    assert not gallery.exception
    assert all(guess in ("ship", "truck") for _, _, guess, _ in _shown(gallery))
    predicted = probabilities.argmax(axis=1)
    wrong = _wrong(probabilities, test_set.labels)
    assert _page_total(gallery) == int(np.isin(predicted[wrong], [8, 9]).sum())


def test_an_empty_filter_says_so(gallery: AppTest, probabilities: np.ndarray, test_set) -> None:
    matrix = confusion_matrix(test_set.labels, probabilities.argmax(axis=1), 10)
    off_diagonal = [(t, p) for t in range(10) for p in range(10) if t != p and matrix[t, p] == 0]
    if not off_diagonal:
        pytest.skip("this model confuses every pair of classes at least once")
    t, p = off_diagonal[0]
    gallery.session_state["gal_true"] = [CLASS_NAMES[t]]
    gallery.session_state["gal_pred"] = [CLASS_NAMES[p]]
    gallery.run()
    assert not gallery.exception
    assert any("No misclassified images match" in i.value for i in gallery.info)
    assert len(gallery.image) == 0


@pytest.mark.skipif(
    (REPO / "models/cifar10_resnet18/model.safetensors").exists(),
    reason="CIFAR ResNet-18 weights exist here, so the missing-weights case cannot be shown",
)
@pytest.mark.bad_input(29)
def test_model_without_weights_shows_an_error_then_recovers(gallery: AppTest) -> None:
    assert MODELS["cifar10_resnet18"].dataset == "cifar10"
    before = _shown(gallery)
    gallery.selectbox(key="gal_model").set_value("cifar10_resnet18").run()
    assert not gallery.exception
    assert len(gallery.error) == 1
    message = gallery.error[0].value
    assert "no weights file" in message and r"cifar10\_resnet18" in message and "Traceback" not in message
    assert "Still using: " + escape(MODELS["cifar10_resnet20"].label) in [c.value for c in gallery.caption]
    assert _shown(gallery) == before  # the last good model's gallery stays
    gallery.selectbox(key="gal_model").set_value("cifar10_resnet20").run()
    assert not gallery.exception and not gallery.error
    assert len(gallery.image) == 12


# --- the on-disk prediction cache ----------------------------------------------------------------------------------


def _new_process() -> None:
    """What a restart forgets: Streamlit's caches and camlib's in-memory predictions (the disk cache stays)."""
    st.cache_resource.clear()
    st.cache_data.clear()
    prediction_cache.clear_memory_cache()


@pytest.mark.slow  # many seconds of AppTest; the page keeps quick tests of its main paths
def test_gallery_predictions_are_read_from_disk_on_a_second_start_and_rebuilt_for_new_weights(
    test_set, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """First start: the predictions are computed (with the page's progress bar) and stored; a second start (caches
    cleared) reads them without a forward; other weights give another file, computed once. 1,200 test images keep
    the three builds short; the page and the cache code are the real ones."""
    monkeypatch.setenv("CAMLIB_CACHE_DIR", str(tmp_path))
    subset = replace(test_set, images=test_set.images[:1200].copy(), labels=test_set.labels[:1200].copy())
    subset.images.setflags(write=False)
    monkeypatch.setattr(datasets, "get_cifar", lambda root, split: subset)
    builds, reported = [], []
    original_predict, original_cached = prediction_cache.predict_probabilities, predictions.cached_predictions

    def counting_predict(model, images, *args, **kwargs):
        builds.append(len(images))
        return original_predict(model, images, *args, **kwargs)

    def spying_cached(*args, progress=None, **kwargs):
        def spy(done: int, total: int) -> None:
            reported.append((done, total))
            progress(done, total)  # the page's bar

        return original_cached(*args, progress=None if progress is None else spy, **kwargs)

    monkeypatch.setattr(prediction_cache, "predict_probabilities", counting_predict)
    monkeypatch.setattr(predictions, "cached_predictions", spying_cached)
    files = tmp_path / "predictions"

    _new_process()
    first = _page("app_pages/misclassifications.py")
    assert builds == [1200] and reported == [(500, 1200), (1000, 1200), (1200, 1200)]
    [stored] = sorted(files.glob("predictions-*.npy"))
    line = next(m.value for m in first.markdown if m.value.startswith("**Test accuracy"))
    assert " on 1,200 images " in line
    shown = _shown(first)

    builds.clear()
    reported.clear()
    _new_process()
    second = _page("app_pages/misclassifications.py")
    assert builds == [] and reported == []  # read from disk: no forward, no progress bar
    assert next(m.value for m in second.markdown if m.value.startswith("**Test accuracy")) == line
    assert _shown(second) == shown
    assert sorted(files.glob("predictions-*.npy")) == [stored]

    loaded = models.get_model("cifar10_resnet20", "cpu")
    changed = copy.deepcopy(loaded.model)
    with torch.no_grad():
        changed.fc.bias[3] += 2.0  # favour "cat": other predictions
    monkeypatch.setattr(models, "get_model", lambda key, device: replace(loaded, model=changed))
    _new_process()
    third = _page("app_pages/misclassifications.py")
    assert builds == [1200] and len(reported) == 3
    assert len(list(files.glob("predictions-*.npy"))) == 2
    expected = predict_probabilities(changed, subset.images, loaded.spec.preprocessing)
    wrong = _wrong(expected, subset.labels)
    assert f"; {len(wrong):,} mistakes." in next(m.value for m in third.markdown if m.value.startswith("**Test"))
    assert [s[0] for s in _shown(third)] == wrong[:12].tolist()

    builds.clear()
    _new_process()
    _page("app_pages/misclassifications.py")
    assert builds == []  # the changed weights' file is read too


# --- Augmentation Lab: model in the loop ---------------------------------------------------------------------------

FLIPS = re.compile(r"^\*\*Label flips: (\d+)/(\d+) \((\d+)%\)\*\*")


def test_label_flips_match_a_direct_flip_report(root: str, test_set, model) -> None:
    at = _page("app_pages/augmentation_lab.py")
    assert not at.error
    assert at.toggle(key="aug_model_loop").value is False  # off by default: no predictions, no flip line
    assert not any(FLIPS.match(m.value) for m in at.markdown)

    at.toggle(key="aug_model_loop").set_value(True).run()
    assert not at.exception and not at.error
    line = next(m.value for m in at.markdown if FLIPS.match(m.value))
    flips, tiles, _ = map(int, FLIPS.match(line).groups())
    grid = at.session_state["aug_last_grid"]
    assert tiles == 64 == len(grid.tiles) and grid.mode == "many"
    originals = test_set.images[list(grid.indices)]
    report = flip_report(
        predict_probabilities(model.model, originals, model.spec.preprocessing),
        predict_probabilities(model.model, grid.tiles, model.spec.preprocessing),
    )
    assert flips == int(report.flipped.sum())
    assert line == model_loop.summary(report)  # rate and mean confidence drop too

    at.toggle(key="aug_model_loop").set_value(False).run()
    assert not at.exception
    assert not any(FLIPS.match(m.value) for m in at.markdown)


class _Superseded(Exception):
    """Stands for Streamlit's rerun request, raised by the page's progress bar in a superseded run."""


@pytest.mark.slow  # many seconds of AppTest; the page keeps quick tests of its main paths
def test_a_rerun_during_the_first_build_ends_the_wait_not_the_build(
    test_set, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The predictions are built in the process's builder thread: a run that stops waiting (its progress bar raised
    the rerun request) leaves the build going, and the next run gets its result; the model predicts the set once."""
    monkeypatch.setenv("CAMLIB_CACHE_DIR", str(tmp_path))
    subset = replace(test_set, images=test_set.images[:1500].copy(), labels=test_set.labels[:1500].copy())
    monkeypatch.setattr(datasets, "get_cifar", lambda root, split: subset)
    monkeypatch.setattr(predictions, "BUILD_POLL_S", 0.01)
    builds, started = [], threading.Event()
    original_predict = prediction_cache.predict_probabilities

    def slow_predict(model, images, *args, **kwargs):
        builds.append(len(images))
        started.set()
        return original_predict(model, images, *args, **kwargs)

    monkeypatch.setattr(prediction_cache, "predict_probabilities", slow_predict)
    _new_process()

    def superseded(done: int, total: int) -> None:
        raise _Superseded

    with pytest.raises(_Superseded):
        predictions.dataset_predictions("cifar10_resnet20", "cpu", "root", progress=superseded)
    assert started.wait(30)
    probabilities = predictions.dataset_predictions("cifar10_resnet20", "cpu", "root")
    assert builds == [1500] and probabilities.shape == (1500, 10)
    model = models.get_model("cifar10_resnet20", "cpu")
    expected = original_predict(model.model, subset.images, model.spec.preprocessing)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


# --- the batch-table view: folders and stored paths confined (rows 79 and 80) --------------------------------------


def _batch_output(out: Path, *, images: str, map_paths: list[str], png_paths: list[str | None]) -> None:
    """A batch job's output written by hand, as a crafted or copied one could be: run.json, one table file whose
    rows are misclassified images (label 3 predicted as 5) with the stored paths given, one maps file."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from camlib.batch import TABLE_SCHEMA

    spec = MODELS["cifar10_resnet20"]
    record = {
        "settings": {"images": images, "cifar10": None, "data": None, "limit": None},
        "model": {"label": spec.label, "preprocessing": vars(spec.preprocessing), "classes": list(CLASS_NAMES)},
        "inputs": {"images": len(map_paths)},
    }
    (out / "table").mkdir(parents=True)
    (out / "maps").mkdir()
    (out / "run.json").write_text(json.dumps(record))
    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float16).reshape(1, 32, 32)
    np.save(out / "maps" / "shard-00000.npy", np.repeat(ramp, len(map_paths), axis=0))
    rows = [
        {
            "image_id": f"photo{k}.png",
            "position": k,
            "shard": 0,
            "label": 3,
            "label_name": "cat",
            "predicted": 5,
            "predicted_name": "dog",
            "probability": 0.9,
            "method": "gradcam",
            "layer": "layer3",
            "class_idx": 5,
            "class_name": "dog",
            "class_probability": 0.9,
            "peak": 1.0,
            "peak_y": 0,
            "peak_x": 0,
            "degenerate": False,
            "map_path": map_path,
            "map_index": k,
            "png_path": png_path,
            "error": None,
        }
        for k, (map_path, png_path) in enumerate(zip(map_paths, png_paths))
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=TABLE_SCHEMA), out / "table" / "part-00000.parquet")


def _open_batch_view(monkeypatch, roots: list[Path] | None, typed: str) -> AppTest:
    if roots is None:
        monkeypatch.delenv("CAMLIB_BATCH_ROOTS", raising=False)
    else:
        monkeypatch.setenv("CAMLIB_BATCH_ROOTS", os.pathsep.join(map(str, roots)))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page("app_pages/misclassifications.py").run()
    at.radio[0].set_value("A batch table").run()
    next(t for t in at.text_input if t.label.startswith("Batch output directory")).input(typed).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _shown_text(at: AppTest) -> str:
    return "\n".join(
        [e.value for e in at.error] + [m.value for m in at.markdown] + [c for image in at.image for c in image.captions]
    )


def _secret_files(secret: Path) -> None:
    """Files outside every shared folder: an image and a map a crafted table points at."""
    secret.mkdir()
    Image.fromarray(np.full((32, 32, 3), (255, 0, 255), np.uint8)).save(secret / "photo0.png")
    Image.fromarray(np.full((32, 32, 3), (255, 0, 255), np.uint8)).save(secret / "overlay.png")
    np.save(secret / "secret.npy", np.ones((2, 32, 32), np.float16))


@pytest.mark.bad_input(80, kind="AT")
def test_a_batch_table_inside_a_shared_folder_is_shown(tmp_path, monkeypatch) -> None:
    """The control: stored paths inside the table's folder, opened by its name in the shared folder."""
    runs = tmp_path / "runs"
    _batch_output(runs / "cams", images="images", map_paths=["maps/shard-00000.npy"] * 2, png_paths=[None, None])
    at = _open_batch_view(monkeypatch, [runs], "cams")
    assert not at.error and len(at.image) == 2
    assert any(m.value.startswith("**2 images** in cams (") for m in at.markdown)
    assert str(tmp_path) not in _shown_text(at)


@pytest.mark.bad_input(80, kind="AT")
@pytest.mark.parametrize("leak", ["absolute", "dot-dot", "symlink"])
def test_stored_paths_leading_out_of_the_table_folder_are_refused(tmp_path, monkeypatch, leak) -> None:
    """A crafted table whose map and overlay paths point outside its folder (absolute, ``..``, a symlink in the
    folder): each tile says it is refused, nothing outside is shown, and no message names a server path."""
    runs, secret = tmp_path / "runs", tmp_path / "secret"
    _secret_files(secret)
    if leak == "absolute":
        maps, pngs = [str(secret / "secret.npy")] * 2, [str(secret / "overlay.png")] * 2
    elif leak == "dot-dot":
        maps, pngs = ["../../secret/secret.npy", "maps/../../../secret/secret.npy"], ["../../secret/overlay.png"] * 2
    else:
        maps, pngs = ["link/secret.npy"] * 2, ["link/overlay.png"] * 2
    _batch_output(runs / "evil", images=str(secret), map_paths=maps, png_paths=pngs)
    if leak == "symlink":
        (runs / "evil" / "link").symlink_to(secret, target_is_directory=True)
    at = _open_batch_view(monkeypatch, [runs], "evil")
    assert len(at.image) == 0  # no tile drawn from a file outside the table's folder
    tiles = [e.value for e in at.error]
    assert len(tiles) == 2 and all("refused" in tile for tile in tiles)
    assert str(tmp_path) not in _shown_text(at)


@pytest.mark.bad_input(80, kind="U")  # ui.gallery.batch_table's own functions, without an AppTest
def test_an_image_folder_outside_the_shared_folders_is_not_read(tmp_path, monkeypatch) -> None:
    """Maps inside the table's folder but images recorded in a folder that is not shared: the tiles are the maps
    alone (the same tile as a table with no image source), never the outside image."""
    from ui.gallery import batch_table

    runs, secret = tmp_path / "runs", tmp_path / "secret"
    _secret_files(secret)
    _batch_output(runs / "evil", images=str(secret), map_paths=["maps/shard-00000.npy"] * 2, png_paths=[None, None])
    monkeypatch.setenv("CAMLIB_BATCH_ROOTS", str(runs))
    table = batch_table.open_batch_table(str((runs / "evil").resolve()), 0)
    assert batch_table._image(table, "photo0.png") is None
    for escape_id in ("../secret/photo0.png", str(secret / "photo0.png")):
        assert batch_table._image(table, escape_id) is None
    shared = replace(table, record={**table.record, "settings": {**table.record["settings"], "images": "../secret"}})
    assert batch_table._image(shared, "photo0.png") is None  # relative, but it leaves the table's folder
    monkeypatch.setenv("CAMLIB_BATCH_ROOTS", os.pathsep.join([str(runs), str(secret)]))  # the operator shares it
    assert batch_table._image(table, "photo0.png") is not None


@pytest.mark.bad_input(80, kind="AT")
@pytest.mark.parametrize("how", ["absolute-outside", "dot-dot", "symlink-out", "default-root"])
def test_only_folders_the_operator_shares_can_be_opened(tmp_path, monkeypatch, how) -> None:
    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    runs.mkdir()
    _batch_output(elsewhere / "job", images="images", map_paths=["maps/shard-00000.npy"], png_paths=[None])
    (runs / "link").symlink_to(elsewhere / "job", target_is_directory=True)
    typed = {
        "absolute-outside": str(elsewhere / "job"),
        "dot-dot": "../elsewhere/job",
        "symlink-out": "link",
        "default-root": str(elsewhere / "job"),
    }[how]
    at = _open_batch_view(monkeypatch, None if how == "default-root" else [runs], typed)
    assert len(at.error) == 1 and "among the folders this server shares" in at.error[0].value
    assert "CAMLIB\\_BATCH\\_ROOTS" in at.error[0].value and not at.image
    assert str(runs) not in _shown_text(at) and str(REPO) not in _shown_text(at)


@pytest.mark.bad_input(79, kind="AT")
@pytest.mark.parametrize("tear", ["zero-bytes", "cut-short"])
def test_a_torn_table_file_is_an_error_in_the_page(tmp_path, monkeypatch, tear) -> None:
    runs = tmp_path / "runs"
    _batch_output(runs / "cams", images="images", map_paths=["maps/shard-00000.npy"] * 2, png_paths=[None, None])
    part = runs / "cams" / "table" / "part-00000.parquet"
    part.write_bytes(b"" if tear == "zero-bytes" else part.read_bytes()[:100])
    at = _open_batch_view(monkeypatch, [runs], "cams")
    assert len(at.error) == 1 and escape("part-00000.parquet is torn or not Parquet") in at.error[0].value
    assert "rerun the job" in at.error[0].value and str(tmp_path) not in at.error[0].value


def test_a_cifar_image_id_is_its_position_in_the_split_strictly_read(tmp_path, monkeypatch) -> None:
    """A stored CIFAR-10 id names the image's position in the split ("test/00002"): a negative or non-digit position
    draws no image (``int()`` would read "test/-1" as the split's last image, shown under another image's map)."""
    from camlib.models import prepare_input
    from ui.gallery import batch_table

    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    monkeypatch.setattr(batch_table, "_cifar_images", lambda root, split, limit: images)
    monkeypatch.setenv("CAMLIB_BATCH_ROOTS", str(tmp_path))
    spec = MODELS["cifar10_resnet20"]
    record = {
        "settings": {"cifar10": "test", "data": str(tmp_path), "limit": None},
        "model": {"preprocessing": vars(spec.preprocessing)},
    }
    table = batch_table.BatchTable(str(tmp_path), None, record, tuple(CLASS_NAMES))
    expected = prepare_input(images[2], spec.preprocessing).model_view
    np.testing.assert_array_equal(batch_table._image(table, "test/00002"), expected)
    for image_id in ("test/-1", "test/-3", "test/3", "test/²", "test/+1"):
        assert batch_table._image(table, image_id) is None, image_id
