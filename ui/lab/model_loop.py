"""Model in the loop on the Augmentation Lab: a CIFAR-10 model's prediction on every augmented tile."""

from __future__ import annotations

import numpy as np
import streamlit as st

from camlib.errors import CamlibError
from camlib.evaluation import FlipReport, flip_report, predict_probabilities
from camlib.models import LoadedModel
from ui import jobs, keys, models, widgets
from ui.text import md


def model_loop_controls(device: str) -> LoadedModel | None:
    """The toggle (off by default) and the model choice, on ``device``; None when off or when the model cannot be
    loaded (then an ``st.error`` says why)."""
    if not st.toggle(
        "Model in the loop: predict every tile",
        value=False,
        key=keys.AUG_MODEL_LOOP,
        persist_state="session",
        help="A CIFAR-10 model labels each augmented tile; tiles whose label differs from the label it "
        "gives the original image are flagged in red.",
    ):
        return None
    key = widgets.cifar_model_select("CIFAR-10 model", keys.AUG_LOOP_MODEL)
    try:
        return models.get_model(key, device)
    except CamlibError as error:
        st.error(md("Model in the loop is off: {error}", error=error))
        return None


def tile_predictions(loaded: LoadedModel, originals: np.ndarray, tiles: np.ndarray) -> tuple[FlipReport, list[str]]:
    """The flip report of original vs augmented tiles, and one badge text per tile."""
    with jobs.model_job(heavy=True):  # two batches of tiles
        before = predict_probabilities(loaded.model, originals, loaded.spec.preprocessing)
        after = predict_probabilities(loaded.model, tiles, loaded.spec.preprocessing)
    report = flip_report(before, after)
    badges = [f"{loaded.class_names[label]} {after[k, label]:.0%}" for k, label in enumerate(report.augmented_label)]
    return report, badges


def summary(report: FlipReport) -> str:
    flips = int(report.flipped.sum())
    return (
        f"**Label flips: {flips}/{report.flipped.size} ({report.flip_rate:.0%})** · mean confidence drop "
        f"{report.mean_confidence_drop:+.1%} (probability of the label predicted on the original). "
        "Many flips mean the augmentation is too strong for what the model knows."
    )
