"""Plotly figures for the pages (top-k bars, CAM heatmap, layer magnitudes, confusion matrix, per-class accuracy).

Each is built once per distinct input and shared (``st.cache_resource``): building a figure validates every
property (20-30 ms for a heatmap), while ``st.plotly_chart`` only copies it to JSON; no caller mutates a figure.

Pixel drawing (PNG bytes, tile grids) is in ``camlib.drawing``. No model calls in here."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from ui.text import html_text


def top_k_figure(
    probabilities: np.ndarray, class_names: tuple[str, ...], *, k: int = 5, highlight: int | None = None
) -> go.Figure:
    """Horizontal bar chart of the top-k classes (highest at the top); class names shown as text (``html_text``)."""
    top = tuple(int(i) for i in np.argsort(-probabilities)[:k][::-1])
    names = {i: class_names[i] for i in top}  # the cache key holds k names, not the 1,000 (hashing them: ~100 ms)
    return _top_k_bars(probabilities[list(top)], top, names, highlight)


@st.cache_resource(max_entries=64, show_spinner=False)
def _top_k_bars(
    values: np.ndarray, top: tuple[int, ...], class_names: dict[int, str], highlight: int | None
) -> go.Figure:
    probabilities = dict(zip(top, values.tolist(), strict=True))
    colors = ["#e4572e" if int(i) == highlight else "#4c78a8" for i in top]
    fig = go.Figure(
        go.Bar(
            x=[float(probabilities[i]) for i in top],
            y=[f"{html_text(class_names[i])} ({i})" for i in top],
            orientation="h",
            marker_color=colors,
            text=[f"{probabilities[i]:.1%}" for i in top],
            textposition="auto",
            hovertemplate="%{y}: %{x:.2%}<extra></extra>",
        )
    )
    fig.update_layout(height=230, margin=dict(l=0, r=10, t=10, b=0), xaxis=dict(range=[0, 1], tickformat=".0%"))
    return fig


PLOTLY_COLORSCALES = {
    "jet": "Jet",
    "turbo": "Turbo",
    "viridis": "Viridis",
    "inferno": "Inferno",
    "magma": "Magma",
    "plasma": "Plasma",
    "hot": "Hot",
    "bone": "gray",
}


@st.cache_resource(max_entries=64, show_spinner=False)
def heatmap_figure(
    cam: np.ndarray,
    *,
    colormap: str = "jet",
    title: str = "",
    size: tuple[int, int] | None = None,
    signed: bool = False,
) -> go.Figure:
    """Interactive heatmap of a CAM map with hover values (row 0 at the top, like the image).

    ``size`` ``(H, W)``, px: the map's full size when ``cam`` is a reduced copy; x and y then read in those pixels
    (each cell at its centre), so hover coordinates match the image whatever the reduction. ``signed``: ``cam`` is a
    signed map in [-1, 1] (``camlib.overlay.signed_map``), drawn on a diverging scale centred on 0 (red: evidence
    for the class, blue: against), whatever ``colormap``."""
    height, width = size or cam.shape
    scale = {"colorscale": "RdBu_r", "zmin": -1, "zmid": 0, "zmax": 1} if signed else {"zmin": 0, "zmax": 1}
    fig = go.Figure(
        go.Heatmap(
            z=cam,
            x=(np.arange(cam.shape[1]) + 0.5) * width / cam.shape[1] - 0.5,
            y=(np.arange(cam.shape[0]) + 0.5) * height / cam.shape[0] - 0.5,
            **{"colorscale": PLOTLY_COLORSCALES.get(colormap, "Jet"), **scale},
            hovertemplate="x=%{x:.0f}, y=%{y:.0f}<br>" + ("signed " if signed else "") + "CAM=%{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=html_text(title),
        height=420,
        margin=dict(l=0, r=0, t=30 if title else 0, b=0),
        yaxis=dict(autorange="reversed", scaleanchor="x"),
        xaxis=dict(constrain="domain"),
    )
    return fig


@st.cache_resource(max_entries=64, show_spinner=False)
def magnitude_figure(magnitudes: dict[str, float]) -> go.Figure:
    """Bar chart of each layer's peak positive raw CAM value (the scale per-layer normalisation hides)."""
    names = [html_text(name) for name in magnitudes]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=list(magnitudes.values()),
            marker_color="#4c78a8",
            hovertemplate="%{x}: %{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(height=260, margin=dict(l=0, r=0, t=10, b=0), yaxis_title="peak raw CAM (ReLU)")
    return fig


@st.cache_resource(max_entries=64, show_spinner=False)
def confusion_figure(matrix: np.ndarray, class_names: tuple[str, ...]) -> go.Figure:
    """Confusion matrix as square markers (a scatter, so a click selects a cell): rows true, columns predicted.

    Class names are shown as text: the axes carry ``html_text(name)``, which a click reports back."""
    class_names = tuple(html_text(name) for name in class_names)
    true_idx, pred_idx = np.meshgrid(np.arange(len(class_names)), np.arange(len(class_names)), indexing="ij")
    counts = matrix[true_idx, pred_idx].ravel()
    fig = go.Figure(
        go.Scatter(
            x=[class_names[i] for i in pred_idx.ravel()],
            y=[class_names[i] for i in true_idx.ravel()],
            mode="markers+text",
            text=[str(c) if c else "" for c in counts],
            textfont=dict(size=10),
            marker=dict(
                symbol="square",
                size=34,
                color=np.log1p(counts),
                colorscale="Blues",
                showscale=False,
                line=dict(width=1, color="white"),
            ),
            customdata=counts,
            hovertemplate="true %{y}, predicted %{x}: %{customdata}<extra></extra>",
        )
    )
    fig.update_layout(
        height=470,
        margin=dict(l=0, r=0, t=30, b=0),
        title="Confusion matrix (click a cell)",
        xaxis=dict(title="predicted", side="top", categoryorder="array", categoryarray=class_names),
        yaxis=dict(title="true", autorange="reversed", categoryorder="array", categoryarray=class_names),
        dragmode=False,
    )
    return fig


@st.cache_resource(max_entries=64, show_spinner=False)
def per_class_figure(accuracy: np.ndarray, class_names: tuple[str, ...]) -> go.Figure:
    fig = go.Figure(
        go.Bar(
            x=list(accuracy),
            y=[html_text(name) for name in class_names],
            orientation="h",
            marker_color="#4c78a8",
            text=[f"{a:.1%}" for a in accuracy],
            textposition="auto",
            hovertemplate="%{y}: %{x:.2%}<extra></extra>",
        )
    )
    fig.update_layout(
        height=470,
        margin=dict(l=0, r=10, t=30, b=0),
        title="Per-class accuracy",
        xaxis=dict(range=[0, 1], tickformat=".0%"),
        yaxis=dict(autorange="reversed"),
    )
    return fig
