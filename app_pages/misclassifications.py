"""Misclassification gallery: the CIFAR-10 test images a model gets wrong, with the CAM of the predicted and of the
true class side by side, a clickable confusion matrix and per-class accuracy."""

from __future__ import annotations

import numpy as np
import streamlit as st

from camlib.cifar import detect_source
from camlib.drawing import fast_png
from camlib.errors import CamlibError
from camlib.evaluation import confusion_matrix, per_class_accuracy
from camlib.layers import default_layer
from camlib.models import MODELS
from camlib.overlay import overlay_heatmap, upscale_nearest
from ui import app_inputs, datasets, figures, keys, models, widgets
from ui.gallery import predictions
from ui.last_good import keep_last_good
from ui.text import html_text, md

PAGE_SIZE = 12

st.title("Misclassification gallery")
st.caption(
    "Where the CIFAR-10 model goes wrong, and what it looked at: Grad-CAM for the predicted class (left) and "
    "for the true class (right)."
)

root, device = app_inputs.data_root_input(), app_inputs.device_input()  # app-wide: the sidebar of every page
if st.radio("Source", ["This model on the test set", "A batch table"], horizontal=True) == "A batch table":
    from ui.gallery import (
        batch_table,  # here: it imports pandas and pyarrow's Parquet reader, a second on a fresh server
    )

    batch_out = st.text_input(
        "Batch output directory (the --out of python -m camlib.batch)",
        help="A folder inside one of the folders this server shares for batch tables (by default the project's "
        "runs/ folder; the operator sets them with CAMLIB_BATCH_ROOTS): a name such as cams for runs/cams.",
    )
    if batch_out:
        batch_table.render(batch_out)
    st.stop()
if not root or detect_source(root) is None:
    st.warning("No CIFAR-10 test set found: set the CIFAR-10 data root in the sidebar (or CAMLIB_CIFAR10_ROOT).")
    st.stop()
chosen = widgets.cifar_model_select("Model", keys.GAL_MODEL)


def load_model() -> str:
    models.get_model(chosen, device)
    return chosen


model_key, failed = keep_last_good(keys.GAL_LAST_MODEL, load_model)  # keep the last model that worked
if model_key is None:
    st.stop()
if failed is not None:
    st.caption(md("Still using: {model}", model=MODELS[model_key].label))
bar = st.empty()  # filled only while the predictions are computed (the first open for these weights and data)


def show_progress(done: int, total: int) -> None:
    fraction = done / total
    bar.progress(
        fraction,
        text=md("Predicting the {total:,} test images (once for these weights): {done:,} done", total=total, done=done),
    )


try:
    data = datasets.get_cifar(root, "test")
    probabilities = predictions.dataset_predictions(model_key, device, root, progress=show_progress)
    candidates = models.get_layers(model_key, device)
except CamlibError as error:
    st.error(md("{error}", error=error))
    st.stop()
finally:
    bar.empty()
predicted = probabilities.argmax(axis=1)
matrix = confusion_matrix(data.labels, predicted, len(data.class_names))
accuracy = float(np.trace(matrix) / matrix.sum())
st.markdown(
    md(
        "**Test accuracy {accuracy:.2%}** on {n:,} images ({source} copy in the data root); {mistakes:,} mistakes.",
        accuracy=accuracy,
        n=len(data.labels),
        source=data.source,
        mistakes=int((predicted != data.labels).sum()),
    )
)

left, right = st.columns([3, 2])
with left:
    event = st.plotly_chart(
        figures.confusion_figure(matrix, data.class_names),
        key=keys.GAL_CONFUSION,
        on_select="rerun",
        selection_mode="points",
    )
    points = event.selection.points if event and event.selection else []
    by_label = {html_text(name): name for name in data.class_names}  # the figure shows HTML-escaped names
    clicked = (by_label.get(points[0]["y"]), by_label.get(points[0]["x"])) if points else None
    if clicked and clicked != st.session_state.get(keys.GAL_CLICKED):  # apply a new click once, then let filters rule
        st.session_state[keys.GAL_CLICKED] = clicked
        st.session_state[keys.GAL_TRUE], st.session_state[keys.GAL_PRED] = [clicked[0]], [clicked[1]]
with right:
    st.plotly_chart(figures.per_class_figure(per_class_accuracy(matrix), data.class_names), key=keys.GAL_PER_CLASS)

filters = st.columns(3)
true_filter = filters[0].multiselect(
    "True class", data.class_names, key=keys.GAL_TRUE, persist_state="session", placeholder="any"
)
pred_filter = filters[1].multiselect(
    "Predicted class", data.class_names, key=keys.GAL_PRED, persist_state="session", placeholder="any"
)
layer = filters[2].selectbox(
    "Layer",
    [c.name for c in candidates],
    key=keys.GAL_LAYER,
    persist_state="session",
    index=[c.name for c in candidates].index(default_layer(candidates).name),
    format_func=lambda n: f"{n} [{next(c.shape_label for c in candidates if c.name == n)}]",
)

wrong = np.flatnonzero(predicted != data.labels)
if true_filter:
    wrong = wrong[np.isin(data.labels[wrong], [data.class_names.index(c) for c in true_filter])]
if pred_filter:
    wrong = wrong[np.isin(predicted[wrong], [data.class_names.index(c) for c in pred_filter])]
if len(wrong) == 0:
    st.info("No misclassified images match these filters.")
    st.stop()
pages = -(-len(wrong) // PAGE_SIZE)
page = st.number_input(
    md("Page (1..{pages}) of {n} images", pages=pages, n=len(wrong)),
    1,
    pages,
    1,
    key=keys.GAL_PAGE,
    persist_state="session",
)
shown = tuple(int(i) for i in wrong[(page - 1) * PAGE_SIZE : page * PAGE_SIZE])


def draw_page() -> list[tuple[bytes, str]]:
    """One PNG per shown image (CAM of the predicted class, gap, CAM of the true class) with its caption."""
    for_predicted, for_true = predictions.gallery_cams(model_key, device, root, shown, layer=layer)
    tiles = []
    for k, index in enumerate(shown):
        image = upscale_nearest(data.images[index], 128)
        gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
        pair = np.hstack([overlay_heatmap(image, for_predicted[k]), gap, overlay_heatmap(image, for_true[k])])
        caption = md(
            "#{index}: {truth} → {guess} ({p:.0%})",
            index=index,
            truth=data.class_names[data.labels[index]],
            guess=data.class_names[predicted[index]],
            p=probabilities[index, predicted[index]],
        )
        tiles.append((fast_png(pair), caption))
    return tiles


tiles, _ = keep_last_good(  # keep the last page of CAMs that worked
    keys.GAL_LAST_TILES,
    draw_page,
    failure="Cannot compute the CAMs: {error}",
    stale="Showing the last page that worked.",
)
columns = st.columns(4)
for k, (png, caption) in enumerate(tiles or []):
    columns[k % 4].image(png, width="stretch", output_format="PNG", caption=caption)
