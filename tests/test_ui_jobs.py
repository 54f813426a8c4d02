"""ui.jobs: every model run of the app goes through the same job limits.

The entries are found, not listed: every public function of a ui module that hands a model (``<x>.model``) to a call,
directly or through the module's private functions, runs a model. Each is called on a real CIFAR-10 network while a
forward pre-hook on every ``nn.Module`` records whether the running thread holds a job slot (``jobs.in_model_job``).
A new entry without an invocation here fails ``test_every_entry_that_runs_a_model_is_called_here``; one that runs a
model outside ``jobs.model_job`` fails ``test_each_entry_runs_its_model_inside_a_job``.
"""

from __future__ import annotations

import ast
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from camlib.augment import Pipeline, PipelineStep
from camlib.cifar import CLASS_NAMES, CifarData
from camlib.stability import Sweep
from ui import jobs, models
from ui.explorer import cam_view, cams, faithfulness_view
from ui.gallery import predictions
from ui.lab import model_loop
from ui.lab import stability as lab_stability

ROOT = Path(__file__).resolve().parents[1]
MODEL = "cifar10_resnet20"
LAYER = "layer3"
# Reads the model's structure only (MethodSpec.refusal): it must run no forward at all.
STRUCTURE_ONLY = {"ui.models.method_refusals"}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _hands_a_model(node: ast.AST) -> bool:
    """Whether ``node`` contains a call with an argument ``<x>.model`` (a loaded model handed to camlib)."""
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            arguments = [*call.args, *(k.value for k in call.keywords)]
            if any(isinstance(a, ast.Attribute) and a.attr == "model" for a in arguments):
                return True
    return False


def _called_names(node: ast.AST) -> set[str]:
    names = set()
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            names.add(call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", ""))
    return names


def model_entries() -> set[str]:
    """``module.function`` for every public top-level function of ``ui`` that runs a model, directly or through the
    private functions of its own module (a public function calling another entry is not one: the callee is)."""
    found = set()
    for path in sorted((ROOT / "ui").rglob("*.py")):
        functions = {n.name: n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        runs = {name for name, node in functions.items() if _hands_a_model(node)}
        while True:  # close over the module's own calls
            more = {name for name, node in functions.items() if {n for n in _called_names(node) & runs if n[0] == "_"}}
            more -= runs
            if not more:
                break
            runs |= more
        found |= {f"{_module_name(path)}.{name}" for name in runs if not name.startswith("_")}
    return found


@pytest.fixture
def forwards() -> Iterator[list[bool]]:
    """Whether a job slot was held, at every forward pass of any module, in any thread, while the fixture lives."""
    seen: list[bool] = []
    lock = threading.Lock()

    def hook(module: torch.nn.Module, inputs: object) -> None:
        with lock:
            seen.append(jobs.in_model_job())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def _image(seed: int = 0, size: tuple[int, int] = (40, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _cifar(n: int = 6) -> CifarData:
    images = np.stack([_image(i, (32, 32)) for i in range(n)])
    images.setflags(write=False)
    labels = np.arange(n, dtype=np.int64) % 10
    return CifarData(images, labels, CLASS_NAMES, "folder", "root", "test")


FLIP = Pipeline((PipelineStep("HorizontalFlip", p=1.0),), seed=0)
BRIGHT = Pipeline((PipelineStep("RandomBrightnessContrast", {"brightness_limit": (0.2, 0.2)}, p=1.0),), seed=0)
SETTINGS = lab_stability.Settings(MODEL, "cpu", LAYER, "gradcam", 2, "", 0)


def _gallery(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[], object]:
    data = _cifar()
    monkeypatch.setattr("ui.datasets.get_cifar", lambda root, split: data)
    monkeypatch.setenv("CAMLIB_CACHE_DIR", str(tmp_path))  # no prediction file from another test
    predictions.gallery_cams.clear()
    return lambda: predictions.gallery_cams(MODEL, "cpu", f"root-{tmp_path.name}", (0, 2), layer=LAYER)


def _predictions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[], object]:
    data = _cifar()
    monkeypatch.setattr("ui.datasets.get_cifar", lambda root, split: data)
    monkeypatch.setenv("CAMLIB_CACHE_DIR", str(tmp_path))
    return lambda: predictions.dataset_predictions(MODEL, "cpu", f"root-{tmp_path.name}")


def _cleared(function: Callable, call: Callable[[], object]) -> Callable[[], object]:
    """``call`` after emptying ``function``'s Streamlit cache, so it runs the model again."""

    def run() -> object:
        function.clear()
        return call()

    return run


def _cams_cleared(call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        cams._cam_store.clear()
        cams._prepared_store.clear()
        return call()

    return run


# One way to call each entry: ``(monkeypatch, tmp_path) -> a function that runs it``.
CALLS: dict[str, Callable[[pytest.MonkeyPatch, Path], Callable[[], object]]] = {
    "ui.models.get_layers": lambda mp, tmp: _cleared(models.get_layers, lambda: models.get_layers(MODEL, "cpu")),
    "ui.models.method_refusals": lambda mp, tmp: _cleared(
        models.method_refusals, lambda: models.method_refusals(MODEL, "cpu", (LAYER,))
    ),
    "ui.models.predict": lambda mp, tmp: _cleared(models.predict, lambda: models.predict(MODEL, "cpu", _image())),
    "ui.models.forward_seconds": lambda mp, tmp: _cleared(
        models.forward_seconds, lambda: models.forward_seconds(MODEL, "cpu")
    ),
    "ui.explorer.cams.compute_cam": lambda mp, tmp: _cams_cleared(
        lambda: cams.compute_cam(MODEL, "cpu", _image(), (LAYER,), method="gradcam", class_idx=3)
    ),
    "ui.explorer.cams.compute_grid": lambda mp, tmp: _cams_cleared(
        lambda: cams.compute_grid(
            cams.CamRequest(MODEL, "cpu", _image(), (LAYER,)), methods=("scorecam", "eigencam"), class_idx=3
        )
    ),
    "ui.explorer.cams.compute_pixel_maps": lambda mp, tmp: _cleared(
        cams.compute_pixel_maps,
        lambda: cams.compute_pixel_maps(MODEL, "cpu", _image(), (LAYER,), method="guided_gradcam", class_idx=3),
    ),
    "ui.explorer.cam_view.pass_seconds": lambda mp, tmp: _cleared(
        cam_view.pass_seconds, lambda: cam_view.pass_seconds(MODEL, "cpu")
    ),
    "ui.explorer.faithfulness_view.compute_grid_scores": lambda mp, tmp: _cleared(
        faithfulness_view._grid_store,
        lambda: faithfulness_view.compute_grid_scores(
            MODEL, "cpu", _image(), layers=(LAYER,), methods=("gradcam",), class_idx=3
        ),
    ),
    "ui.explorer.faithfulness_view.compute_sanity": lambda mp, tmp: _cleared(
        faithfulness_view._sanity_store,
        lambda: faithfulness_view.compute_sanity(MODEL, "cpu", _image(), cell=("gradcam", LAYER), class_idx=3),
    ),
    "ui.gallery.predictions.dataset_predictions": _predictions,
    "ui.gallery.predictions.gallery_cams": _gallery,
    "ui.lab.model_loop.tile_predictions": lambda mp, tmp: (
        lambda: model_loop.tile_predictions(models.get_model(MODEL, "cpu"), _cifar().images[:3], _cifar().images[3:])
    ),
    "ui.lab.stability.compute_views": lambda mp, tmp: (
        lambda: lab_stability.compute_views(models.get_model(MODEL, "cpu"), _cifar().images[0], FLIP, SETTINGS)
    ),
    "ui.lab.stability.compute_summary": lambda mp, tmp: (
        lambda: lab_stability.compute_summary(models.get_model(MODEL, "cpu"), _cifar().images[:3], FLIP, SETTINGS)
    ),
    "ui.lab.stability.compute_curve": lambda mp, tmp: (
        lambda: lab_stability.compute_curve(
            models.get_model(MODEL, "cpu"),
            _cifar().images[:3],
            BRIGHT,
            SETTINGS,
            Sweep(0, "brightness_limit", (0.0, 0.2)),
        )
    ),
}


@pytest.mark.bad_input(48)
def test_every_entry_that_runs_a_model_is_called_here() -> None:
    """The scan finds the entries (at least the CAM, grid, pixel, faithfulness, sanity, prediction, gallery and Lab
    ones), and each has a call in ``CALLS``: a new one fails here until it is called (and so checked) below."""
    found = model_entries()
    assert {"ui.explorer.cams.compute_cam", "ui.gallery.predictions.gallery_cams", "ui.models.predict"} <= found
    assert found - set(CALLS) == set(), "call these in CALLS, so their model runs are checked for a job slot"
    assert set(CALLS) - found == set(), "CALLS names functions the scan no longer finds: remove them"


@pytest.mark.bad_input(48)
@pytest.mark.parametrize("entry", sorted(CALLS))
def test_each_entry_runs_its_model_inside_a_job(
    entry: str, forwards: list[bool], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every forward pass an entry makes happens while its thread holds a job slot (``jobs.model_job``), and the
    slots are all free again afterwards."""
    run = CALLS[entry](monkeypatch, tmp_path)
    models.get_model(MODEL, "cpu")  # loading is not a model run: keep its forwards (none) out of the record
    forwards.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No runtime found": st.cache_* outside a Streamlit server
        run()
    if entry in STRUCTURE_ONLY:
        assert forwards == []
    else:
        assert forwards, f"{entry} ran no forward pass: the check would pass for nothing"
        assert all(forwards), f"{entry}: {forwards.count(False)} of {len(forwards)} forward passes outside a job"
    assert not jobs.in_model_job()
    assert jobs._CAM_JOBS._value == jobs.MAX_CAM_JOBS and jobs._HEAVY_JOBS._value == jobs.MAX_HEAVY_JOBS


def test_a_forward_outside_a_job_is_seen(forwards: list[bool]) -> None:
    """The record tells a run outside a job from one inside (the check above can fail)."""
    model = torch.nn.Conv2d(3, 1, 1)
    model(torch.zeros(1, 3, 2, 2))
    with jobs.model_job(heavy=False):
        model(torch.zeros(1, 3, 2, 2))
    assert forwards == [False, True]


def test_model_job_is_reentrant_and_takes_one_slot_per_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job inside a job (a faithfulness grid asking for a CAM) runs in the outer slot: with one slot left, nesting
    never waits on itself; another thread waits until the outer job ends."""
    monkeypatch.setattr(jobs, "_CAM_JOBS", threading.BoundedSemaphore(1))
    monkeypatch.setattr(jobs, "_HEAVY_JOBS", threading.BoundedSemaphore(1))
    entered = threading.Event()

    def other() -> None:
        with jobs.model_job(heavy=False):
            entered.set()

    with jobs.model_job(heavy=True):
        with jobs.model_job(heavy=True), jobs.model_job(heavy=False):
            assert jobs.in_model_job()
        assert jobs.in_model_job()
        thread = threading.Thread(target=other)
        thread.start()
        assert not entered.wait(0.2)  # the only slot is this thread's
    thread.join(5)
    assert entered.is_set() and not jobs.in_model_job()
