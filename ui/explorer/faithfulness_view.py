"""Which map to trust, as components the CAM Explorer mounts: the faithfulness grid, the deletion and
insertion curves of one cell next to the baselines', and the sanity-check panel.

Compute side (``compute_grid_scores``, ``compute_sanity``): the CAMs come from ``ui.explorer.cams.compute_cam`` (the
page's own cached maps; models from ``ui.models.resolve_model``, i.e. ``get_model`` for registry keys), the numbers
from ``camlib.metrics``, run inside ``ui.jobs.model_job``. Both run outside any ``st.cache_*`` function, so their
``progress(done, total)`` callback may draw (an ``st.progress`` bar: ``progress_bar``) and a rerun or a closed tab stops
them between cells or steps; finished results are then put in a bounded ``st.cache_data`` store through ``ui.stores``
(``max_entries``, ``ui.stores.CACHE_TTL``), so later reruns find them with ``cached_grid_scores``/``cached_sanity`` and
nothing is computed until the user asks.

Drawing side (``faithfulness_table``, ``curves_figure``, ``sanity_panel``) renders results and never computes.
``faithfulness_section`` is the whole thing in one call: buttons, progress, errors (``st.error``, never a traceback),
table, curves and sanity panel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots
from skimage.transform import resize

from camlib.cam import METHODS, ProgressCallback, compute_cams
from camlib.drawing import fast_png
from camlib.errors import CamlibError, MethodError
from camlib.layers import default_layer
from camlib.metrics import (
    BASELINE_KINDS,
    BaselineComparison,
    FaithfulnessScores,
    RandomLogitResult,
    SanityResult,
    baseline_maps,
    cascading_randomization,
    compare_with_baselines,
    faithfulness_scores,
    random_logit,
    rank_by_faithfulness,
)
from camlib.models import prepare_input
from camlib.overlay import overlay_heatmap
from ui import jobs, keys, models, stores
from ui.explorer import cams
from ui.text import html_text, md

Cell = tuple[str, str]  # (method, layer)
SURVIVAL_SPEARMAN = 0.5  # a map whose rank correlation after randomising every layer is at least this survived it
STRIP_PX = 64  # the randomisation strip's maps, px per side at most
STRIP_MAPS = 8  # maps shown in the strip (evenly spaced depths, the first and the last included)
BEST_STYLE = "background-color: #fde68a; font-weight: bold"
BASELINE_DASH = {"random": "dot", "gaussian": "dash", "edges": "dashdot"}


# --- results -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridScores:
    """Faithfulness of every (method, layer) cell on one image, and of the baseline maps.

    Attributes:
        cells: ``{(method, layer): FaithfulnessScores}`` (batch of 1), in the grid's order.
        baselines: ``{kind: FaithfulnessScores}`` of ``camlib.metrics.baseline_maps`` (seed 0).
        class_idx: the explained class.
        elapsed_s: wall time of the computation, s.
    """

    cells: dict[Cell, FaithfulnessScores]
    baselines: dict[str, FaithfulnessScores]
    class_idx: int
    elapsed_s: float

    def means(self) -> dict[Cell, dict[str, float]]:
        """``{cell: {metric: score}}`` (one image: the score itself)."""
        return {cell: {m: float(v.mean()) for m, v in s.summary.items()} for cell, s in self.cells.items()}

    def best(self) -> Cell:
        """The most faithful cell: the best mean rank over deletion, insertion and ROAD
        (``camlib.metrics.rank_by_faithfulness``)."""
        return rank_by_faithfulness(self.means())[0]

    def against_baselines(self, cell: Cell) -> BaselineComparison:
        """``camlib.metrics.compare_with_baselines`` of one cell."""
        return compare_with_baselines(self.cells[cell], self.baselines)


@dataclass(frozen=True)
class SanityChecks:
    """The sanity checks of one (method, layer) on one image.

    Attributes:
        cell: the (method, layer) checked.
        cascading: ``camlib.metrics.cascading_randomization``'s result (batch of 1).
        strip: ``[(label, map)]``: the trained model's map and the maps at evenly spaced randomisation depths, float32
            in [0, 1], at most ``STRIP_PX`` per side.
        random_logit: ``camlib.metrics.random_logit``'s result (seed 0).
    """

    cell: Cell
    cascading: SanityResult
    strip: list[tuple[str, np.ndarray]]
    random_logit: RandomLogitResult

    @property
    def survives(self) -> bool:
        """True when the map after randomising every layer still ranks pixels like the trained model's (Spearman at
        least ``SURVIVAL_SPEARMAN``): the method is not explaining the model (Adebayo et al., NeurIPS 2018)."""
        final = float(np.nan_to_num(self.cascading.spearman[0, -1], nan=0.0))  # a constant map did not survive
        return final >= SURVIVAL_SPEARMAN


# --- compute side: outside st.cache_*, stored in bounded caches ------------------------------------------------------


@st.cache_data(max_entries=16, ttl=stores.CACHE_TTL, show_spinner=False)
def _grid_store(model_key: str, device: str, image: str, cells: tuple[Cell, ...], class_idx: int) -> GridScores:
    """Finished grids by (model, device, ``stores.image_key``, cells, class), through ``ui.stores``."""
    return stores.handed()


@st.cache_data(max_entries=16, ttl=stores.CACHE_TTL, show_spinner=False)
def _sanity_store(model_key: str, device: str, image: str, cell: Cell, class_idx: int) -> SanityChecks:
    """Finished sanity checks, as ``_grid_store``."""
    return stores.handed()


def _cells(methods: tuple[str, ...], layers: tuple[str, ...]) -> tuple[Cell, ...]:
    return tuple((method, layer) for method in methods for layer in layers)


def cached_grid_scores(
    model_key: str, device: str, image: np.ndarray, *, layers: tuple[str, ...], methods: tuple[str, ...], class_idx: int
) -> GridScores | None:
    """The stored grid for these inputs, or None; never computes."""
    key = stores.image_key(image)
    return stores.probe(_grid_store, model_key, device, key, _cells(methods, layers), int(class_idx))


def compute_grid_scores(
    model_key: str,
    device: str,
    image: np.ndarray,
    *,
    layers: tuple[str, ...],
    methods: tuple[str, ...],
    class_idx: int,
    progress: ProgressCallback | None = None,
) -> GridScores:
    """Deletion AUC, insertion AUC and ROAD (``camlib.metrics.faithfulness_scores``: 20 steps, blur baseline; ROAD
    combined, noise 0.01, seed 0) of every method x layer map of ``image`` (uint8 ``(H, W, 3)``), and of the three
    baseline maps; the stored grid when there is one.

    ``progress(done, total)`` is called after each CAM method and each cell (``total = methods + cells + baselines``);
    an exception it raises (Streamlit's rerun or stop request) stops the work there and nothing is stored.

    Raises:
        CamlibError: from ``ui.models.resolve_model``, ``ui.explorer.cams.compute_cam`` or ``camlib.metrics``.
    """
    cells, class_idx = _cells(methods, layers), int(class_idx)
    key = stores.image_key(image)
    if (stored := stores.probe(_grid_store, model_key, device, key, cells, class_idx)) is not None:
        return stored
    start = time.perf_counter()
    loaded = models.resolve_model(model_key, device)
    x = prepare_input(image, loaded.spec.preprocessing).tensor.to(loaded.device)
    total, done = len(methods) + len(cells) + len(BASELINE_KINDS), 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    maps = {}
    for method in methods:
        view = cams.compute_cam(model_key, device, image, tuple(layers), method=method, class_idx=class_idx)
        maps.update({(method, layer): view.result.maps[layer] for layer in layers})
        step()
    scores, baselines = {}, {}
    with jobs.model_job(heavy=True):  # 20 steps of blurred and noised copies per map
        for cell in cells:
            scores[cell] = faithfulness_scores(loaded.model, x, maps[cell], class_idx)
            step()
        for kind in BASELINE_KINDS:
            baselines[kind] = faithfulness_scores(loaded.model, x, baseline_maps(x, kind, seed=0), class_idx)
            step()
    grid = GridScores(scores, baselines, class_idx, time.perf_counter() - start)
    stores.store(_grid_store, grid, model_key, device, key, cells, class_idx)
    return grid


def cached_sanity(model_key: str, device: str, image: np.ndarray, *, cell: Cell, class_idx: int) -> SanityChecks | None:
    """The stored sanity checks for these inputs, or None; never computes."""
    return stores.probe(_sanity_store, model_key, device, stores.image_key(image), tuple(cell), int(class_idx))


def _thumbnail(cam: np.ndarray) -> np.ndarray:
    scale = min(1.0, STRIP_PX / max(cam.shape))
    size = (max(1, round(cam.shape[0] * scale)), max(1, round(cam.shape[1] * scale)))
    return np.clip(resize(cam, size, anti_aliasing=scale < 1), 0, 1).astype(np.float32)


def compute_sanity(
    model_key: str,
    device: str,
    image: np.ndarray,
    *,
    cell: Cell,
    class_idx: int,
    progress: ProgressCallback | None = None,
) -> SanityChecks:
    """Cascading randomisation (``camlib.metrics.cascading_randomization``, seed 0) and the random-logit test
    (``camlib.metrics.random_logit``, seed 0) of one (method, layer) on ``image``, on a deep copy of the shared model;
    the stored result when there is one.

    ``progress(done, total)`` after each randomisation step (one CAM each); raising stops it, nothing stored.

    Raises:
        MethodError: a perturbation method (one forward per channel at every depth: too slow here).
        CamlibError: from ``ui.models.resolve_model`` or ``camlib.metrics``.
    """
    method, layer = cell = (str(cell[0]), str(cell[1]))
    class_idx, key = int(class_idx), stores.image_key(image)
    if (stored := stores.probe(_sanity_store, model_key, device, key, cell, class_idx)) is not None:
        return stored
    if method in METHODS and METHODS[method].family == "perturbation":
        raise MethodError(
            f"{METHODS[method].label} runs one forward pass per channel at every randomisation depth: too slow for "
            "the sanity check here; check a gradient or activation method"
        )
    loaded = models.resolve_model(model_key, device)
    x = prepare_input(image, loaded.spec.preprocessing).tensor.to(loaded.device)
    depths: list[np.ndarray] = []

    def explain(model, inputs, classes):
        maps = compute_cams(model, inputs, [layer], method=method, class_idx=classes).maps[layer]
        depths.append(_thumbnail(maps[0]))
        return maps

    with jobs.model_job(heavy=True):  # one CAM per randomisation depth, on a deep copy of the model
        cascading = cascading_randomization(loaded.model, x, class_idx, explain, seed=0, progress=progress)
        picks = np.unique(np.linspace(0, len(depths) - 1, min(STRIP_MAPS, len(depths))).round().astype(int))
        strip = [("trained" if i == 0 else f"{i} random: {cascading.layers[i - 1]}", depths[i]) for i in picks]
        logit = random_logit(loaded.model, x, class_idx, explain, seed=0)
    view = SanityChecks(cell, cascading, strip, logit)
    stores.store(_sanity_store, view, model_key, device, key, cell, class_idx)
    return view


def progress_bar(text: str) -> tuple[ProgressCallback, Callable[[], None]]:
    """An ``st.progress`` bar, the ``(done, total)`` callback that moves it, and a function that removes it."""
    bar = st.progress(0.0, text=md("{text}...", text=text))

    def report(done: int, total: int) -> None:
        bar.progress(
            min(1.0, done / max(total, 1)), text=md("{text} {done}/{total}", text=text, done=done, total=total)
        )

    return report, bar.empty


# --- drawing side ----------------------------------------------------------------------------------------------------


def _label(method: str) -> str:
    return METHODS[method].label if method in METHODS else method


def _cell_text(scores: dict[str, float]) -> str:
    return f"del {scores['deletion_auc']:.3f} · ins {scores['insertion_auc']:.3f} · ROAD {scores['road']:+.3f}"


def faithfulness_frame(grid: GridScores) -> tuple[pd.DataFrame, Cell]:
    """The grid as a method x layer table of cell texts (deletion AUC, insertion AUC, ROAD; "⚠" where the cell does
    not beat every baseline), and the best cell."""
    means = grid.means()
    methods = list(dict.fromkeys(m for m, _ in grid.cells))
    layers = list(dict.fromkeys(layer for _, layer in grid.cells))
    table = pd.DataFrame(index=[_label(m) for m in methods], columns=layers, dtype=object)
    for (method, layer), scores in means.items():
        flag = " ⚠" if grid.against_baselines((method, layer)).flagged else ""
        table.loc[_label(method), layer] = _cell_text(scores) + flag
    return table, grid.best()


def faithfulness_table(grid: GridScores, *, suggested: str | None = None) -> Cell:
    """Draw the method x layer table (deletion AUC ↓, insertion AUC ↑, ROAD ↑ per cell) with the best cell
    highlighted, the baselines' scores, and the "most faithful layer on this image" answer next to the layer the 7x7
    rule suggests (``suggested``, ``camlib.layers.default_layer``). Returns the best cell."""
    table, best = faithfulness_frame(grid)
    row, column = _label(best[0]), best[1]

    def highlight(frame: pd.DataFrame) -> pd.DataFrame:
        styles = pd.DataFrame("", index=frame.index, columns=frame.columns)
        styles.loc[row, column] = BEST_STYLE
        return styles

    st.dataframe(table.style.apply(highlight, axis=None), width="stretch")
    st.caption(
        "Each cell: deletion AUC (lower is better), insertion AUC (higher), ROAD combined (higher), for this image's "
        "explained class. ⚠: does not beat every baseline map below on every score. Highlighted: the best mean rank."
    )
    st.markdown(
        md(
            "**Most faithful layer on this image: {layer}** (with {method}; {text})."
            + (" The 7x7 rule suggests {rule}." if suggested else ""),
            layer=best[1],
            method=_label(best[0]),
            text=_cell_text(grid.means()[best]),
            rule=suggested,
        )
    )
    baselines = "; ".join(
        f"{kind}: {_cell_text({m: float(v.mean()) for m, v in s.summary.items()})}"  # escaped once, by md below
        for kind, s in grid.baselines.items()
    )
    st.caption(md("Baseline maps that explain nothing: {b}. Computed in {s:.1f} s.", b=baselines, s=grid.elapsed_s))
    return best


def curves_figure(grid: GridScores, cell: Cell) -> go.Figure:
    """Deletion (left) and insertion (right) curves of ``cell``, solid, with each baseline map's curves beside them
    (dashed, named "baseline: <kind>")."""
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("Deletion (lower is better)", "Insertion (higher is better)")
    )
    method_name = html_text(f"{_label(cell[0])} · {cell[1]}")
    series = [(method_name, grid.cells[cell], dict(color="#e4572e", width=3))]
    series += [
        (f"baseline: {kind}", scores, dict(color="#7f7f7f", dash=BASELINE_DASH.get(kind, "dot")))
        for kind, scores in grid.baselines.items()
    ]
    for name, scores, line in series:
        curves = scores.curves
        for column, (curve, auc) in enumerate(
            [(curves.deletion[0], curves.deletion_auc[0]), (curves.insertion[0], curves.insertion_auc[0])], 1
        ):
            figure.add_trace(
                go.Scatter(
                    x=curves.fractions,
                    y=curve,
                    name=name,
                    legendgroup=name,
                    showlegend=column == 1,
                    mode="lines",
                    line=line,
                    hovertemplate=f"{name} (AUC {auc:.3f})<br>%{{x:.0%}} of pixels: p = %{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=column,
            )
    figure.update_xaxes(title_text="share of pixels", tickformat=".0%", range=[0, 1])
    figure.update_yaxes(title_text="class probability", range=[0, 1.02], row=1, col=1)
    figure.update_yaxes(range=[0, 1.02], row=1, col=2)
    figure.update_layout(height=320, margin=dict(l=0, r=10, t=30, b=0), legend=dict(orientation="h", y=-0.25))
    return figure


def sanity_figure(view: SanityChecks) -> go.Figure:
    """Spearman and SSIM of the map against the trained model's, as layers are randomised from the logits down."""
    depth = list(range(len(view.cascading.layers) + 1))
    figure = go.Figure()
    for name, values in (("Spearman", view.cascading.spearman[0]), ("SSIM", view.cascading.ssim[0])):
        figure.add_trace(
            go.Scatter(
                x=depth,
                y=[1.0, *values.tolist()],
                name=name,
                mode="lines+markers",
                text=["trained", *(html_text(layer) for layer in view.cascading.layers)],
                hovertemplate="%{text}: %{y:.3f}<extra>" + name + "</extra>",
            )
        )
    figure.add_hline(y=SURVIVAL_SPEARMAN, line_dash="dot", line_color="#7f7f7f")
    figure.update_layout(
        height=280,
        margin=dict(l=0, r=10, t=10, b=0),
        xaxis_title="layers randomised (from the logits down)",
        yaxis=dict(title="similarity to the trained map", range=[-1.05, 1.05]),
    )
    return figure


def sanity_panel(view: SanityChecks) -> None:
    """Draw the "Sanity check" panel: the cascading-randomisation curve, the maps at each depth as a strip, the
    random-logit similarity, and the flag "not explaining the model" for a map that survives randomising every layer."""
    st.markdown("**Sanity check** (Adebayo et al., NeurIPS 2018)")
    method, layer = view.cell
    if view.survives:  # a finding about the method, not an error of the app
        st.warning(
            md(
                "⚠ {method} at {layer} is **not explaining the model**: with every layer re-initialised its map still "
                "ranks pixels like the trained model's (Spearman {r:.2f} >= {t}).",
                method=_label(method),
                layer=layer,
                r=float(view.cascading.spearman[0, -1]),
                t=SURVIVAL_SPEARMAN,
            )
        )
    else:
        st.success(
            md(
                "{method} at {layer} depends on the weights: after re-initialising every layer its map's Spearman "
                "correlation with the trained map is {r:.2f}.",
                method=_label(method),
                layer=layer,
                r=float(np.nan_to_num(view.cascading.spearman[0, -1], nan=0.0)),
            )
        )
    st.plotly_chart(sanity_figure(view), key=keys.CAM_SANITY_CURVE)
    columns = st.columns(len(view.strip))
    for column, (caption, cam) in zip(columns, view.strip):
        column.image(
            fast_png(overlay_heatmap(np.zeros((*cam.shape, 3), np.uint8), cam, alpha=1.0)),
            width="stretch",
            output_format="PNG",
        )
        column.caption(md("{c}", c=caption))
    logit = view.random_logit
    st.caption(
        md(
            "Random-logit test (Sixt et al., ICML 2020): the map for class {other} against class {k}'s: Spearman "
            "{r:.2f}, SSIM {s:.2f} (near 1: the map does not depend on the class).",
            other=logit.other_class_idx[0],
            k=logit.class_idx[0],
            r=float(np.nan_to_num(logit.spearman[0], nan=0.0)),
            s=float(np.nan_to_num(logit.ssim[0], nan=0.0)),
        )
    )


def _run(label: str, compute: Callable[[ProgressCallback], object]) -> object | None:
    """``compute(progress)`` under a progress bar, removed when done; a camlib error is shown with ``st.error`` (None
    returned). Streamlit's rerun and stop requests are not errors: they propagate."""
    report, remove = progress_bar(label)
    try:
        value = compute(report)
    except CamlibError as error:
        remove()
        st.error(md("Cannot compute the {what}: {error}", what=label.lower(), error=error))
        return None
    remove()
    return value


def faithfulness_section(
    model_key: str, device: str, image: np.ndarray, *, layers: tuple[str, ...], methods: tuple[str, ...], class_idx: int
) -> None:
    """The whole faithfulness view for the CAM Explorer: a button computes the grid (progress bar; a stored grid is
    shown at once), then the table, a cell picker (best cell first), that cell's curves with the baselines', and a
    button for its sanity checks. Errors are shown with ``st.error``."""
    try:
        _section(model_key, device, image, layers=tuple(layers), methods=tuple(methods), class_idx=class_idx)
    except CamlibError as error:  # a failure outside the computations (looking up or drawing a stored result)
        st.error(md("Cannot show the faithfulness scores: {error}", error=error))


def _section(
    model_key: str, device: str, image: np.ndarray, *, layers: tuple[str, ...], methods: tuple[str, ...], class_idx: int
) -> None:
    grid = cached_grid_scores(model_key, device, image, layers=layers, methods=methods, class_idx=class_idx)
    if grid is None:
        if not st.button(
            md(
                "Score faithfulness ({n} cell{s})",
                n=len(methods) * len(layers),
                s="" if len(methods) * len(layers) == 1 else "s",
            ),
            key=keys.CAM_FAITH_START,
            help="Deletion, insertion and ROAD of every method x layer map, against baseline maps.",
        ):
            return
        grid = _run(
            "Faithfulness",
            lambda report: compute_grid_scores(
                model_key, device, image, layers=layers, methods=methods, class_idx=class_idx, progress=report
            ),
        )
        if grid is None:
            return
    loaded = models.resolve_model(model_key, device)
    suggested = default_layer(models.get_layers(model_key, device), loaded.spec.default_layers).name
    best = faithfulness_table(grid, suggested=suggested)
    cells = {f"{_label(c[0])} · {c[1]}": c for c in sorted(grid.cells, key=lambda cell: cell != best)}  # best first
    cell = cells[st.selectbox("Cell (curves and sanity check)", list(cells), key=keys.CAM_FAITH_CELL)]
    st.plotly_chart(curves_figure(grid, cell), key=keys.CAM_FAITH_CURVES)
    sanity = cached_sanity(model_key, device, image, cell=cell, class_idx=class_idx)
    if sanity is None:
        if not st.button("Run the sanity checks", key=keys.CAM_SANITY_START):
            return
        sanity = _run(
            "Sanity check",
            lambda report: compute_sanity(model_key, device, image, cell=cell, class_idx=class_idx, progress=report),
        )
        if sanity is None:
            return
    sanity_panel(sanity)
