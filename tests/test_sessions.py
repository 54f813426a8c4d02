"""What many sessions of one process share: a model interrupted by a rerun storm, bounded caches keyed on small
arrays, library warnings from concurrent pipeline builds, and the number of concurrent CAM jobs (bad-inputs rows 48,
49, 52, 60)."""

from __future__ import annotations

import ast
import dataclasses
import gc
import io
import os
import subprocess
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import mixed_state, registered_hooks, seeded_resnet18
from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException
from torch import nn

from camlib.augment import Pipeline, PipelineError, PipelineStep, augment_grid, build_pipeline
from camlib.cam import CamResult, compute_cams
from camlib.guard import model_lock

ROOT = Path(__file__).resolve().parents[1]
APP_FILES = [ROOT / "app.py", *sorted((ROOT / "app_pages").glob("*.py")), *sorted((ROOT / "ui").rglob("*.py"))]


# --- row 49: a rerun storm interrupts CAM runs --------------------------------------------------------------------


class _Interrupt(nn.Module):
    """Raises Streamlit's script-control exception (a BaseException, as a superseding rerun does) on chosen calls."""

    def __init__(self) -> None:
        super().__init__()
        self.raise_on: BaseException | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.raise_on is not None:
            raise self.raise_on
        return x


@pytest.mark.bad_input(49)
def test_rerun_storm_interrupting_cams_leaves_no_hooks_threads_or_locks(snapshot, one_torch_thread: None) -> None:
    """30 CAM runs, two in three interrupted mid-forward by RerunException / StopException (BaseExceptions, not
    Exceptions) at varying depths: no hook, flag, gradient or statistic changes, no thread is left behind, the
    model lock is free, and the run that follows the storm equals an undisturbed one exactly."""
    model = mixed_state(seeded_resnet18())
    interrupts = {name: _Interrupt() for name in ("layer1", "layer3", "layer4")}
    for name, interrupt in interrupts.items():
        getattr(model, name).append(interrupt)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    layers = ["layer2", "layer3"]
    reference = compute_cams(model, x, layers, method="gradcam++")
    before = snapshot(model)
    threads_before = threading.active_count()
    for run in range(30):
        where = list(interrupts)[run % 3]
        if run % 3:
            interrupts[where].raise_on = RerunException(None) if run % 2 else StopException()
            with pytest.raises((RerunException, StopException)):
                compute_cams(model, x, [layers[run % 2]], method=("gradcam", "layercam", "gradcam++")[run % 3])
            interrupts[where].raise_on = None
        else:
            compute_cams(model, x, layers[: 1 + run % 2], method="xgradcam")
        assert registered_hooks(model) == []
    before.assert_unchanged()
    assert threading.active_count() == threads_before
    lock = model_lock(model)
    assert lock.acquire(blocking=False)  # nobody holds it
    lock.release()
    after = compute_cams(model, x, layers, method="gradcam++")
    for name in layers:
        np.testing.assert_array_equal(after.maps[name], reference.maps[name])


# --- row 52: caches are bounded and keyed on small arrays ---------------------------------------------------------


def _cache_decorations() -> list[tuple[str, ast.FunctionDef, ast.Call | ast.Attribute]]:
    found = []
    for path in APP_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                for decorator in node.decorator_list:
                    target = decorator.func if isinstance(decorator, ast.Call) else decorator
                    if isinstance(target, ast.Attribute) and target.attr in ("cache_data", "cache_resource"):
                        found.append((f"{path.name}:{node.name}", node, decorator))
    return found


@pytest.mark.bad_input(52)
def test_every_cache_with_arguments_is_bounded() -> None:
    decorations = _cache_decorations()
    assert len(decorations) >= 5  # the scan sees the app's caches
    unbounded = []
    for name, function, decorator in decorations:
        takes_arguments = bool(function.args.args or function.args.kwonlyargs)
        keywords = {k.arg for k in decorator.keywords} if isinstance(decorator, ast.Call) else set()
        if takes_arguments and not keywords & {"max_entries", "ttl"}:
            unbounded.append(name)
    assert unbounded == [], f"caches without max_entries/ttl: {unbounded}"


@pytest.mark.bad_input(52)
def test_only_the_decoder_is_keyed_on_upload_bytes_and_it_returns_a_small_array() -> None:
    """Upload bytes key one cache, the decoder, whose result is at most MAX_SIDE on its longest side; every other
    cache (CAMs, predictions) is keyed on that small decoded array."""
    from PIL import Image

    from camlib.imaging import MAX_SIDE
    from ui import datasets

    keyed_on_bytes = [
        name
        for name, function, _ in _cache_decorations()
        if any(isinstance(a.annotation, ast.Name) and a.annotation.id == "bytes" for a in function.args.args)
    ]
    assert keyed_on_bytes == ["datasets.py:decode_upload"]
    for width, height in [(3000, 2000), (1500, 4000), (1025, 1025)]:
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), (200, 30, 60)).save(buffer, format="JPEG", quality=50)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "No runtime found": st.cache_data outside a Streamlit server
            decoded = datasets.decode_upload(buffer.getvalue())
        assert max(decoded.pixels.shape[:2]) == MAX_SIDE
        assert decoded.pixels.nbytes <= MAX_SIDE * MAX_SIDE * 3


# --- row 60: library warnings in concurrent sessions ----------------------------------------------------------------


@pytest.mark.bad_input(60)
def test_app_code_never_captures_warnings_with_catch_warnings() -> None:
    """``warnings.catch_warnings`` swaps the process-wide filter list: not thread-safe across sessions."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in [*APP_FILES, *sorted((ROOT / "camlib").rglob("*.py"))]
        if "catch_warnings" in path.read_text()
    ]
    assert offenders == []


@pytest.mark.bad_input(60)
@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"blur_limit": (4, 6)}, "4 is not one of 3, 5"),
        ({"blur_limit": (3, 8)}, "8 is not one of"),
        ({"blur_limit": (3, 7)}, None),
        ({"blur_limit": (5, 5)}, None),
    ],
    ids=["even-low", "even-high", "odd", "odd-single"],
)
def test_values_albumentations_would_adjust_with_a_warning_are_validated_beforehand_in_threads(
    params: dict, problem: str | None
) -> None:
    """Albumentations turns an even MotionBlur kernel into the next odd one with only a UserWarning. camlib refuses
    it before building (or builds the valid ones) from 8 threads at once: each thread gets the same typed error or
    the same grid as a serial call, no warning is emitted, and the process's warning filters are untouched."""
    pipeline = Pipeline(steps=(PipelineStep(transform="MotionBlur", params=params, p=1.0),), seed=5)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)

    def attempt() -> str | bytes:
        try:
            build_pipeline(pipeline)
            return augment_grid(images, pipeline, rows=2, cols=2).tiles.tobytes()
        except PipelineError as error:
            return str(error)

    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:  # the test's own capture: records, never hides
        warnings.simplefilter("always")
        serial = attempt()
        results: list[str | bytes] = []
        barrier = threading.Barrier(8)

        def worker() -> None:
            barrier.wait(timeout=30)
            results.append(attempt())

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert list(warnings.filters) == filters_before
    assert [str(w.message) for w in caught if "albumentations" in (w.filename or "")] == []
    assert results == [serial] * 8
    if problem is None:
        assert isinstance(serial, bytes)
    else:
        assert isinstance(serial, str) and problem in serial and "MotionBlur.blur_limit" in serial


# --- row 48: a bound on concurrent CAM jobs -----------------------------------------------------------------------


@pytest.mark.bad_input(48)
def test_concurrent_cam_jobs_on_different_models_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight sessions ask for CAMs on four different models at once. Each job holds its model's lock (as camlib
    does); a process-wide bound should keep the number of jobs running at once at most the CPU-thread budget
    (here 2), so torch threads x jobs do not oversubscribe the CPU."""
    from ui import jobs
    from ui import models as ui_models
    from ui.explorer import cams

    running, peak, guard = 0, 0, threading.Lock()
    models = {f"model{i}": nn.Identity() for i in range(4)}

    class Loaded:
        def __init__(self, key: str, device: str) -> None:
            self.model = models[key]
            self.device = "cpu"
            self.spec = type("Spec", (), {"preprocessing": None})()

    def fake_compute(model, x, layers, methods, *, class_idx, progress=None, **options):  # options: CamOptions
        nonlocal running, peak
        with model_lock(model):
            with guard:
                running += 1
                peak = max(peak, running)
            time.sleep(0.2)
            with guard:
                running -= 1
        empty = {"maps": {}, "raw": {}, "degenerate": {}, "logits": np.zeros((1, 1), np.float32)}
        return {m: CamResult(method=m, layers=tuple(layers), class_idx=[0], **empty) for m in methods}

    assert jobs.MAX_CAM_JOBS >= 2
    monkeypatch.setattr(jobs, "_CAM_JOBS", threading.BoundedSemaphore(2))  # this 2-core machine's bound, anywhere
    monkeypatch.setattr(ui_models, "resolve_model", Loaded)
    prepared = type("P", (), {"tensor": torch.zeros(1), "model_view": None, "crop_box": None})
    monkeypatch.setattr(cams, "prepare_input", lambda image, pre: prepared())
    monkeypatch.setattr(cams, "compute_cam_grid", fake_compute)
    monkeypatch.setattr(cams, "CamOutcome", lambda **kw: ("view", kw["result"]))  # picklable, as st.cache_data needs
    errors: list[BaseException] = []

    def session(*args) -> None:
        try:
            cams.compute_cam(*args, method="gradcam", class_idx=0)
        except Exception as error:  # noqa: BLE001 - re-raised below, outside the expected failure
            errors.append(error)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        threads = [
            threading.Thread(target=session, args=(f"model{i % 4}", "cpu", np.full((4, 4, 3), i, np.uint8), ("l",)))
            for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    if errors or running:
        raise RuntimeError(f"the harness failed, not the bound: {errors}")
    assert 1 <= peak <= 2, f"{peak} CAM jobs ran at once"


@pytest.mark.bad_input(48)
def test_heavy_cam_jobs_have_their_own_bound_and_never_block_one_pass_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three sessions start Score-CAM (a heavy job) and a fourth asks for Grad-CAM while they run: at most
    ``_HEAVY_JOBS`` heavy jobs run at once, and the Grad-CAM finishes while the heavy ones are still running (it
    neither waits for them nor queues behind the third). Ordering, not timing: the heavy jobs run until released."""
    from ui import jobs, models
    from ui.explorer import cams

    assert 1 <= jobs.MAX_HEAVY_JOBS < jobs.MAX_CAM_JOBS
    assert jobs.is_heavy(["scorecam"], cams.DEFAULT_OPTIONS) and jobs.is_heavy(["sscam"], cams.DEFAULT_OPTIONS)
    assert jobs.is_heavy(["smoothgradcam++"], cams.DEFAULT_OPTIONS)
    assert not jobs.is_heavy(cams.grid_partners("gradcam"), cams.DEFAULT_OPTIONS)
    assert jobs.is_heavy(["gradcam"], dataclasses.replace(cams.DEFAULT_OPTIONS, aug_smooth=True))
    release, events, guard = threading.Event(), [], threading.Lock()
    heavy_running, heavy_peak = 0, 0

    class Loaded:
        def __init__(self, key: str, device: str) -> None:
            self.model, self.device = nn.Identity(), "cpu"
            self.spec = type("Spec", (), {"preprocessing": None})()

    def fake_compute(model, x, layers, methods, *, class_idx, progress=None, **options):
        nonlocal heavy_running, heavy_peak
        if "scorecam" in methods:
            with guard:
                heavy_running += 1
                heavy_peak = max(heavy_peak, heavy_running)
            release.wait(timeout=30)
            with guard:
                heavy_running -= 1
                events.append("heavy done")
        else:
            events.append("one-pass done")
        empty = {"maps": {}, "raw": {}, "degenerate": {}, "logits": np.zeros((1, 1), np.float32)}
        return {m: CamResult(method=m, layers=tuple(layers), class_idx=[0], **empty) for m in methods}

    monkeypatch.setattr(jobs, "_CAM_JOBS", threading.BoundedSemaphore(8))  # this 2-core machine's bounds
    monkeypatch.setattr(jobs, "_HEAVY_JOBS", threading.BoundedSemaphore(2))
    monkeypatch.setattr(models, "resolve_model", Loaded)
    prepared = type("P", (), {"tensor": torch.zeros(1), "model_view": None, "crop_box": None})
    monkeypatch.setattr(cams, "prepare_input", lambda image, pre: prepared())
    monkeypatch.setattr(cams, "compute_cam_grid", fake_compute)
    monkeypatch.setattr(cams, "CamOutcome", lambda **kw: ("view", kw["result"]))

    def session(index: int, method: str) -> None:
        cams.compute_cam("m", "cpu", np.full((4, 4, 3), index, np.uint8), ("l",), method=method, class_idx=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        heavy = [threading.Thread(target=session, args=(i, "scorecam")) for i in range(3)]
        for thread in heavy:
            thread.start()
        deadline = time.monotonic() + 30
        while heavy_running < 2 and time.monotonic() < deadline:  # two heavy jobs inside, the third waiting
            time.sleep(0.01)
        light = threading.Thread(target=session, args=(9, "gradcam"))
        light.start()
        light.join(timeout=30)
        running_when_light_finished = heavy_running
        release.set()
        for thread in heavy:
            thread.join(timeout=30)
    assert events[0] == "one-pass done" and running_when_light_finished == 2
    assert events.count("heavy done") == 3 and heavy_peak == 2


def test_cam_jobs_running_together_divide_torch_threads_between_them() -> None:
    """A CAM job that starts while another runs gets half of torch's intra-op threads (``ui.jobs._share_cores``), so
    jobs x threads stay nearer the budget set at startup; a job alone gets all of them, and each job puts the budget
    back when it ends (torch keeps the count per thread)."""
    from ui import jobs

    before = torch.get_num_threads()
    torch.set_num_threads(4)
    share_cores = jobs._CoreShare(4)
    try:
        seen: dict[str, int] = {}
        first_inside, second_done = threading.Event(), threading.Event()

        def first() -> None:
            with share_cores():
                seen["first"] = torch.get_num_threads()
                first_inside.set()
                second_done.wait(timeout=10)
            seen["first after"] = torch.get_num_threads()

        def second() -> None:
            first_inside.wait(timeout=10)
            with share_cores():
                seen["second"] = torch.get_num_threads()
            seen["second after"] = torch.get_num_threads()
            second_done.set()

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert seen == {"first": 4, "second": 2, "second after": 4, "first after": 4}
        torch.set_num_threads(1)  # a thread whose count is a share (it started while a job ran) ...
        with share_cores():
            alone = torch.get_num_threads()
        assert alone == 4 and torch.get_num_threads() == 4  # ... still gets the whole budget when alone
    finally:
        torch.set_num_threads(before)


# --- long-lived objects out of the full collections ----------------------------------------------------------------


class _Node:
    """A gc-tracked object that can sit in a reference cycle."""

    link: object = None


def test_freeze_long_lived_collects_garbage_first_then_freezes_what_lives() -> None:
    """``ui.server.memory.freeze_long_lived``: cyclic garbage made before it is collected (not frozen for ever), and
    what is alive leaves the generations the full collections traverse (``gc.get_objects`` lists none of it)."""
    from ui.server import memory

    garbage = _Node()
    garbage.link = garbage
    gone = weakref.ref(garbage)
    del garbage
    alive = _Node()
    try:
        memory.freeze_long_lived()
        assert gone() is None
        assert gc.get_freeze_count() > 0 and not any(obj is alive for obj in gc.get_objects())
        later = _Node()
        assert any(obj is later for obj in gc.get_objects())  # made after: collected as usual
    finally:
        gc.unfreeze()  # the rest of this test process collects as before


def test_freezes_happen_after_the_imports_and_after_the_first_model_load_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """``freeze_at_run_start`` (app.py, every run) freezes on the first run and on the first run after a model load,
    never again: each freeze keeps the script runs then in flight, so it must stay bounded."""
    from ui import models
    from ui.server import memory

    frozen: list[int] = []
    monkeypatch.setattr(memory, "freeze_long_lived", lambda: frozen.append(1))
    monkeypatch.setattr(memory, "_freezes", 0)
    monkeypatch.setattr(memory, "_model_loaded", False)
    assert memory.freeze_at_run_start() and not memory.freeze_at_run_start() and frozen == [1]  # the imports
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no Streamlit runtime here
        models.get_model.clear("cifar10_resnet20", "cpu")
        models.get_model("cifar10_resnet20", "cpu")
    assert memory.freeze_at_run_start() and frozen == [1, 1]  # the first run after the model load
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models.get_model.clear("cifar10_resnet20", "cpu")
        models.get_model("cifar10_resnet20", "cpu")
    assert not memory.freeze_at_run_start() and frozen == [1, 1]  # a later load: no more freezes


@pytest.mark.parametrize(
    ("jobs", "heavy", "expected"),
    [
        ("0", "9", "2 1"),
        # a fresh interpreter each, ~3 s: the other bounds in the slow tier
        *(
            pytest.param(*case, marks=pytest.mark.slow)
            for case in [("1", "", "2 1"), ("8", "0", "8 1"), ("8", "20", "8 7"), ("6", "3", "6 3")]
        ),
    ],
)
def test_cam_job_bounds_from_the_environment_are_clamped(jobs: str, heavy: str, expected: str) -> None:
    """``CAMLIB_MAX_CAM_JOBS`` is at least 2 (0 would make every job wait for ever) and ``CAMLIB_MAX_HEAVY_JOBS``
    1 to ``MAX_CAM_JOBS - 1`` (a heavy job never holds every slot)."""
    env = {**os.environ, "CAMLIB_MAX_CAM_JOBS": jobs, "CAMLIB_MAX_HEAVY_JOBS": heavy}
    if not heavy:
        env.pop("CAMLIB_MAX_HEAVY_JOBS")
    code = "from ui import jobs; print(jobs.MAX_CAM_JOBS, jobs.MAX_HEAVY_JOBS)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == expected


def test_an_unknown_method_is_not_heavy_so_camlib_refuses_it() -> None:
    from ui import jobs
    from ui.explorer import cams

    assert not jobs.is_heavy(["no such method"], cams.DEFAULT_OPTIONS)
