"""AppTest tests of the Augmentation Lab's "Does the explanation survive this pipeline?" panel (ui/lab/stability.py):
each part computes only on its button, equals camlib.stability called directly, is cached, and an error keeps the last
good result."""

from __future__ import annotations

import numpy as np
import pytest
import streamlit as st
import torch
from helpers.apptest import APP, TIMEOUT
from streamlit.testing.v1 import AppTest

from camlib.augment import CIFAR10_TRAIN_PIPELINE, TRANSFORMS, pick_images
from camlib.cifar import default_root, detect_source
from camlib.errors import PipelineError
from camlib.models import load_model
from camlib.stability import Sweep, augmentation_stability, flip_curve, stability_views
from ui import datasets
from ui.lab import stability as lab_stability

LAB = "app_pages/augmentation_lab.py"
ROOT = default_root()
HAS_CIFAR = ROOT is not None and detect_source(ROOT) is not None

pytestmark = [
    pytest.mark.skipif(not HAS_CIFAR, reason="CIFAR-10 not found (set $CAMLIB_CIFAR10_ROOT)"),
    pytest.mark.usefixtures("one_torch_thread"),
]


@pytest.fixture()
def lab() -> AppTest:
    st.cache_data.clear()  # the panel's result stores are process-wide
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.switch_page(LAB).run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    at.slider(key="aug_stab_views").set_value(4).run()
    at.number_input(key="aug_stab_k").set_value(6).run()
    return at


@pytest.fixture(scope="module")
def resnet20():
    return load_model("cifar10_resnet20", device=torch.device("cpu"))


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _images() -> np.ndarray:
    return datasets.get_cifar(str(ROOT), "test").images


def test_nothing_is_computed_before_a_button(lab) -> None:
    for slot in ("aug_stab_last_one", "aug_stab_last_summary", "aug_stab_last_curve"):
        assert slot not in lab.session_state
    assert [b.label for b in lab.button if b.key and b.key.startswith("aug_stab")] == [
        "Compute the views' CAMs",
        "Compute the summary",
        "Compute the flip curve",
    ]


def test_one_image_strip_equals_stability_views(lab, resnet20) -> None:
    lab.button(key="aug_stab_run_one").click().run()
    _clean(lab)
    _, views = lab.session_state["aug_stab_last_one"]
    layer = lab.selectbox(key="aug_stab_layer").value
    direct = stability_views(
        resnet20.model,
        _images()[0],
        CIFAR10_TRAIN_PIPELINE,
        layer,
        preprocessing=resnet20.spec.preprocessing,
        n_views=4,
    )
    assert len(views.images) == 4 and all(
        np.array_equal(a, b) for a, b in zip(views.images, direct.images, strict=True)
    )
    np.testing.assert_allclose(views.scores.correlation, direct.scores.correlation, atol=1e-6)
    captions = [img.caption for element in lab.image for img in element.proto.imgs if img.caption.startswith("view")]
    assert len(captions) == 4 and captions[0].startswith(f"view 1: r {direct.scores.correlation[0, 0]:.2f}")


def test_summary_table_and_chart_equal_augmentation_stability(lab, resnet20) -> None:
    lab.button(key="aug_stab_run_summary").click().run()
    _clean(lab)
    table = lab.dataframe[-1].value
    steps = [f"{i + 1}. {s.transform}" for i, s in enumerate(CIFAR10_TRAIN_PIPELINE.steps)]
    assert list(table.index) == ["whole pipeline", *steps]
    images = _images()[pick_images(np.arange(len(_images())), 6, 0)]
    layer = lab.selectbox(key="aug_stab_layer").value
    direct = augmentation_stability(
        resnet20.model, images, CIFAR10_TRAIN_PIPELINE, layer, preprocessing=resnet20.spec.preprocessing, n_views=4
    )
    expected = lab_stability.summary_table(direct)
    np.testing.assert_allclose(table.to_numpy(dtype=float), expected.to_numpy(dtype=float), atol=1e-6)
    assert lab.get("arrow_vega_lite_chart") or lab.get("vega_lite_chart")  # the bar chart


def test_flip_curve_marks_where_flips_pass_and_equals_flip_curve(lab, resnet20) -> None:
    assert "4. Affine.rotate" in lab.selectbox(key="aug_stab_param").options
    lab.selectbox(key="aug_stab_param").set_value((3, "rotate")).run()
    lab.slider(key="aug_stab_share").set_value(0.2).run()
    lab.button(key="aug_stab_run_curve").click().run()
    _clean(lab)
    _, curve = lab.session_state["aug_stab_last_curve"]
    spec = TRANSFORMS["Affine"].param("rotate")
    values = lab_stability.sweep_values(spec.low, spec.high, spec.kind, 8)
    assert curve.sweep == Sweep(3, "rotate", values) and values[0] == (-0.0, 0.0) and values[-1] == (-180.0, 180.0)
    images = _images()[pick_images(np.arange(len(_images())), 6, 0)]
    layer = lab.selectbox(key="aug_stab_layer").value
    direct = flip_curve(
        resnet20.model,
        images,
        CIFAR10_TRAIN_PIPELINE,
        layer,
        preprocessing=resnet20.spec.preprocessing,
        sweep=curve.sweep,
        n_views=4,
    )
    np.testing.assert_allclose(curve.flip_rate, direct.flip_rate)
    passing = lab_stability.first_passing(direct, 0.2)
    layers = lab_stability.curve_chart(direct, 0.2).to_dict()["layer"]
    assert len(layers) == (3 if passing is not None else 2)  # lines, the share's rule, the value where flips pass
    if passing is not None:
        assert lab_stability.sweep_axis(passing) in [lab_stability.sweep_axis(v) for v in values]
        assert passing == values[int(np.flatnonzero(direct.flip_rate >= 0.2)[0])]
    texts = [m.value for m in lab.markdown] + [c.value for c in lab.caption]
    assert any(("Flips pass 20%" if passing is not None else "Flips stay below 20%") in t for t in texts), texts


def test_results_are_cached_and_an_error_keeps_the_last_good_one(lab, monkeypatch) -> None:
    lab.button(key="aug_stab_run_summary").click().run()
    first = lab.session_state["aug_stab_last_summary"][1]

    def broken(*args, **kwargs):
        raise PipelineError("the model refused")

    monkeypatch.setattr(lab_stability, "augmentation_stability", broken)
    lab.button(key="aug_stab_run_summary").click().run()  # same settings: from the store, nothing computed
    _clean(lab)
    assert lab.session_state["aug_stab_last_summary"][1] is not None
    lab.slider(key="aug_stab_views").set_value(3).run()
    lab.button(key="aug_stab_run_summary").click().run()  # new settings: computed, and it fails
    assert not lab.exception
    assert any("the model refused" in e.value for e in lab.error), [e.value for e in lab.error]
    assert lab.session_state["aug_stab_last_summary"][1].n_views == first.n_views == 4  # the last good one stays
    assert any("earlier settings" in c.value for c in lab.caption)
