"""Widget groups shared by the pages (image, model, CIFAR-10 split, overlay, download buttons). Each keeps the last
good value in ``st.session_state`` so a bad input shows an ``st.error`` and the page goes on with what worked before."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import streamlit as st

from camlib.cifar import CifarData, detect_source
from camlib.drawing import npy_bytes
from camlib.errors import CamlibError, WeightsUnavailableError
from camlib.imaging import MAX_UPLOAD_BYTES, UPLOAD_TYPES
from camlib.layers import LayerInfo
from camlib.models import (
    DEFAULT_CIFAR_MODEL,
    DEFAULT_MODEL,
    MAX_CHECKPOINT_BYTES,
    MODELS,
)
from camlib.overlay import COLORMAPS
from camlib.samples import DEFAULT_SAMPLE, SAMPLES, load_sample
from ui import checkpoint_store, datasets, downloads, models
from ui.text import md, shorten

CHECKPOINT_OPTION = "checkpoint"
MAX_LAYERS = 8  # target layers at once, in the picker and in a link: each adds a map per method (and passes)
CHECKPOINT_TYPES = ("safetensors", "pt", "pth", "bin", "ckpt", "tar")  # .ckpt: Lightning; .pth.tar: timm


@dataclass(frozen=True)
class OverlaySettings:
    """How maps are drawn; changing these never re-runs the model."""

    alpha: float
    colormap: str
    threshold: float | None
    shared_scale: bool


@dataclass(frozen=True)
class ChosenImage:
    name: str
    pixels: np.ndarray
    notes: tuple[str, ...] = ()
    true_label: str | None = None
    uploaded: bool = False


def image_input(prefix: str, *, cifar: CifarData | None = None) -> ChosenImage:
    """A sample photo, an upload, or (given ``cifar``) a CIFAR-10 image by class and index; an unreadable upload
    gives an error and the last good image."""
    last_key = f"{prefix}_last_image"
    options = (["CIFAR-10 test image"] if cifar is not None else []) + ["Sample photo", "Upload"]
    source = st.radio("Image", options, horizontal=True, key=f"{prefix}_source", persist_state="session")
    if source == "CIFAR-10 test image":
        chosen = _cifar_image(prefix, cifar)
        st.session_state[last_key] = chosen
        return chosen
    if source == "Sample photo":
        name = st.selectbox(
            "Sample",
            list(SAMPLES),
            index=list(SAMPLES).index(DEFAULT_SAMPLE),
            key=f"{prefix}_sample",
            persist_state="session",
        )
        chosen = ChosenImage(name=name, pixels=load_sample(name))
        st.session_state[last_key] = chosen
        return chosen
    upload = st.file_uploader(
        "Upload an image",
        type=list(UPLOAD_TYPES),
        key=f"{prefix}_upload",
        max_upload_size=MAX_UPLOAD_BYTES // (1024 * 1024),
        help="PNG, JPEG, WebP, BMP or TIFF; up to 20 MB and 25 megapixels.",
    )
    if upload is not None:
        try:
            decoded = datasets.decode_upload(upload.getvalue(), upload.name)
        except CamlibError as error:
            st.error(md("Cannot use this file: {error}", error=error))
        else:
            chosen = ChosenImage(name=upload.name, pixels=decoded.pixels, notes=decoded.notes, uploaded=True)
            st.session_state[last_key] = chosen
            for note in chosen.notes:
                st.info(md("{file}: {note}", file=shorten(upload.name), note=note))
            return chosen
    last = st.session_state.get(last_key)
    if upload is None and last is not None and last.uploaded:  # the upload was removed: do not show a gone file
        last = None
    if last is None:
        sample = st.session_state.get(f"{prefix}_sample")
        sample = sample if sample in SAMPLES else DEFAULT_SAMPLE
        last = ChosenImage(name=sample, pixels=load_sample(sample))
        st.session_state[last_key] = last
    if upload is None:
        st.caption(md("No upload yet: showing {image}.", image=shorten(last.name)))
    return last


def _cifar_image(prefix: str, cifar: CifarData) -> ChosenImage:
    left, right = st.columns(2)
    class_name = left.selectbox("Class", cifar.class_names, key=f"{prefix}_cifar_class", persist_state="session")
    members = np.flatnonzero(cifar.labels == cifar.class_names.index(class_name))
    position = right.number_input(
        md("Index (0..{last})", last=len(members) - 1),
        0,
        len(members) - 1,
        0,
        key=f"{prefix}_cifar_index",
        persist_state="session",
    )
    index = int(members[int(position)])
    return ChosenImage(name=f"CIFAR-10 {cifar.split} #{index}", pixels=cifar.images[index], true_label=class_name)


def model_input(prefix: str, device: str) -> str:
    """Pick a registry model or upload a checkpoint; returns a model key that ``models.resolve_model`` resolves on
    ``device`` (the model that worked last, or the bundled one, after an error: shown with ``st.error``). A model whose
    weights are not cached gets a download button (``downloads.offer_weights``) and the last model stays meanwhile."""
    last_key = f"{prefix}_last_model"
    options = list(MODELS) + [CHECKPOINT_OPTION]
    labels = {key: spec.label for key, spec in MODELS.items()} | {CHECKPOINT_OPTION: "Your checkpoint..."}
    choice = st.selectbox("Model", options, format_func=labels.get, key=f"{prefix}_model", persist_state="session")
    try:
        if choice == CHECKPOINT_OPTION:
            key = _checkpoint_input(prefix, device)
            if key is None:
                key = _last_model(last_key, device)
                st.info(md("Upload a checkpoint to use it. Still using: {model}", model=_label(key, device)))
        elif downloads.weights_missing(choice):  # downloaded on the button's click only, never as a link names it
            downloads.offer_weights(choice, button_key=f"{prefix}_download_weights")
            key = _last_model(last_key, device)
            st.caption(md("Still using: {model}", model=_label(key, device)))
        else:
            models.get_model(choice, device)
            key = choice
    except CamlibError as error:
        key = _last_model(last_key, device)
        hint = " Showing the bundled model instead." if isinstance(error, WeightsUnavailableError) else ""
        st.error(md("{error}{hint}", error=error, hint=hint))
        if key != DEFAULT_MODEL or choice == CHECKPOINT_OPTION:
            st.caption(md("Still using: {model}", model=_label(key, device)))
    st.session_state[last_key] = key
    return key


def _last_model(last_key: str, device: str) -> str:
    """The session's last good model key; the bundled model when that was a checkpoint the shared store dropped."""
    key = st.session_state.get(last_key, DEFAULT_MODEL)
    try:
        models.resolve_model(key, device)
    except CamlibError as error:
        st.error(md("{error}. Showing the bundled model instead.", error=error))
        key = DEFAULT_MODEL
    return key


def _label(key: str, device: str) -> str:
    return shorten(models.resolve_model(key, device).spec.label)


def _checkpoint_input(prefix: str, device: str) -> str | None:
    arch = st.selectbox(
        "Architecture",
        list(MODELS),
        format_func=lambda k: MODELS[k].label.split(" (")[0],
        key=f"{prefix}_ckpt_arch",
        persist_state="session",
    )
    upload = st.file_uploader(
        "Checkpoint (.safetensors, or a weights-only .pt/.pth/.ckpt state dict or training checkpoint)",
        type=list(CHECKPOINT_TYPES),
        key=f"{prefix}_ckpt_file",
        # Streamlit checks this in the browser; the server's cap is server.maxUploadSize (.streamlit/config.toml), and
        # camlib.models.read_checkpoint checks MAX_CHECKPOINT_BYTES again before parsing.
        max_upload_size=MAX_CHECKPOINT_BYTES // (1024 * 1024),
        help=md(
            "Up to {mb} MB. A state dict, also with the prefixes of DataParallel / DDP (`module.`), "
            "`torch.compile` (`_orig_mod.`) or a Lightning attribute, or a training checkpoint holding one under "
            "`state_dict`, `model`, `model_state_dict`, `state_dict_ema` or `model_ema`. Nothing but tensors and plain "
            "values is ever unpickled.",
            mb=MAX_CHECKPOINT_BYTES // (1024 * 1024),
        ),
    )
    if upload is None:
        return None
    key = checkpoint_store.register_checkpoint(
        arch, upload.getvalue(), upload.name, device=device, upload_id=upload.file_id
    )
    st.text(
        f"Your checkpoint: {models.resolve_model(key, device).spec.notes}"
    )  # plain text: its key names are user data
    return key


def cifar_test_images(root: str, dataset: str) -> CifarData | None:
    """The CIFAR-10 test split under ``root`` for a CIFAR-10 model (``dataset == "cifar10"``), else None. A copy that
    cannot be read is shown as a warning and the page goes on with sample photos and uploads."""
    if dataset != "cifar10":
        return None
    try:
        return datasets.cifar_test_set(root)
    except CamlibError as error:
        st.warning(md("CIFAR-10 test images are unavailable: {error}", error=error))
        return None


def cifar_input(root: str, prefix: str) -> CifarData | None:
    """The CIFAR-10 split under ``root``, or None (with a message, and a download button when a root is given)."""
    if root and detect_source(root):
        split = st.radio("Split", ["test", "train"], horizontal=True, key=f"{prefix}_split", persist_state="session")
        try:
            return datasets.get_cifar(root, split)
        except CamlibError as error:
            st.error(md("{error}", error=error))
            return None
    st.warning(
        md(
            "No CIFAR-10 found under '{root}'. Set the data root in the sidebar, or download the official "
            "release (170 MB) there. Meanwhile the grid uses a sample photo.",
            root=shorten(root),
        )
    )
    if root:
        downloads.cifar_download_button(root, key=f"{prefix}_download")
    return None


@st.cache_resource(max_entries=16, show_spinner=False)
def _inspector_table(model: str, _candidates: tuple[LayerInfo, ...]) -> pa.Table:
    """The layer inspector's rows as an Arrow table, built once per ``model`` (a key naming the model; the candidates
    themselves are not hashed: hashing 262 dataclasses costs more than the table): ``st.dataframe`` sends an Arrow
    table as it is, where a list of 262 dicts would be converted on every rerun (about 20 ms)."""
    return pa.Table.from_pylist(
        [
            {
                "layer": c.name,
                "type": c.type_name,
                "feature map (C x H x W)": c.shape_label,
                "layout": c.layout.label,
                "note": c.warning or "",
            }
            for c in _candidates
        ]
    )


@st.cache_resource(max_entries=16, show_spinner=False)
def _layer_labels(model: str, _candidates: tuple[LayerInfo, ...]) -> dict[str, str]:
    """Each candidate's option label, ``"name  [C x h x w]"``, built once per ``model`` (a key naming the model, as for
    ``_inspector_table``): the picker formats every option on every rerun, 500 calls for 262 layers."""
    return {c.name: f"{c.name}  [{c.shape_label}]" for c in _candidates}


def layer_picker(candidates: list[LayerInfo], *, default: str, key: str) -> list[str]:
    """Target layers (a multiselect starting at ``default``, at most ``MAX_LAYERS``), a warning per chosen layer that
    has one, and the layer inspector (every candidate's type, output shape and note). ``key`` carries the model, so a
    new model gets its own widget and its own suggested layer."""
    by_name, labels = {c.name: c for c in candidates}, _layer_labels(key, tuple(candidates))
    layers = st.multiselect(
        "Target layers (one pass for all)",
        list(by_name),
        default=[default],
        format_func=labels.__getitem__,
        key=key,
        persist_state="session",
        max_selections=MAX_LAYERS,
    )
    for name in layers:
        if by_name[name].warning:
            st.warning(md("{name}: {warning}", name=name, warning=by_name[name].warning))
    with st.expander(md("Layer inspector ({count} candidate layers)", count=len(candidates))):
        st.dataframe(_inspector_table(key, tuple(candidates)), hide_index=True, height=300)
        st.caption(
            "Modules with a 4-D output that run once per forward pass, in forward order. Suggested: the last "
            "layer whose map is at least 7x7."
        )
    return layers


def overlay_controls(prefix: str, *, columns: int = 1) -> OverlaySettings:
    """Opacity, colormap, threshold and shared scale, side by side in ``columns`` columns (1: stacked)."""
    slots = st.columns(columns) * (4 // columns + 1)
    alpha = slots[0].slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key=f"{prefix}_alpha", persist_state="session")
    colormap = slots[1].selectbox("Colormap", list(COLORMAPS), key=f"{prefix}_colormap", persist_state="session")
    threshold = slots[2].slider(
        "Hide heat below",
        0.0,
        1.0,
        0.0,
        0.05,
        key=f"{prefix}_threshold",
        persist_state="session",
        help="Pixels whose CAM value is below this show the plain image.",
    )
    shared = slots[3].toggle(
        "Shared scale across layers",
        key=f"{prefix}_shared_scale",
        persist_state="session",
        help="Off: each layer's map is scaled to [0, 1]. On: one scale for all layers, so raw "
        "magnitudes are comparable (weak layers look weak).",
    )
    return OverlaySettings(alpha=alpha, colormap=colormap, threshold=threshold or None, shared_scale=shared)


def cam_downloads(
    prefix: str, *, overlay_png: bytes | Callable[[], bytes], raw: np.ndarray, layer: str, settings: dict
) -> None:
    """Download buttons: the overlay (PNG bytes, or a callable that returns them when the button is clicked), the raw
    signed CAM (.npy) and the settings (JSON)."""
    a, b, c = st.columns(3)
    a.download_button("Overlay PNG", overlay_png, f"cam_{layer}.png", "image/png", key=f"{prefix}_dl_png")
    b.download_button(
        "Raw CAM (.npy)",
        npy_bytes(raw),
        f"cam_raw_{layer}.npy",
        "application/octet-stream",
        key=f"{prefix}_dl_npy",
    )
    c.download_button(
        "Settings (JSON)",
        json.dumps(settings, indent=2, default=list),
        "cam_settings.json",
        "application/json",
        key=f"{prefix}_dl_json",
    )


def cifar_model_select(label: str, key: str) -> str:
    """Pick one of the registry's CIFAR-10 models (default: the bundled one)."""
    choices = [k for k, spec in MODELS.items() if spec.dataset == "cifar10"]
    return st.selectbox(
        label,
        choices,
        index=choices.index(DEFAULT_CIFAR_MODEL),
        format_func=lambda k: MODELS[k].label,
        key=key,
        persist_state="session",
    )
