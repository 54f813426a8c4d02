"""The CPU job limits: every model run in the app (a CAM, a grid, a pixel attribution, a prediction, a timing, a
faithfulness or sanity check, the Lab's stability and model loop, the gallery's CAMs and predictions, a layer probe)
happens inside ``model_job``, so the runs of all sessions share the cores under one bound.

CAM jobs share the cores, so two semaphores bound how many run at once in the process, whatever the model (each
model's own lock only serialises jobs on that model); the others wait under the spinner.

- Every job (``MAX_CAM_JOBS``): a one-pass job on one image spends much of its time in Python, holding the GIL
  (per-op dispatch, hooks), so more jobs than cores overlap one job's kernels with the others' Python, and
  ``_share_cores`` gives each 1/k of torch's threads. Four per core, at most 16 (``benchmarks/bench_load.py
  --sessions 8`` on 2 cores: the method/layer p95 falls as the bound rises from 2 to 8). Such a job holds one image's
  activations and gradients (a few MB).
- Heavy jobs (``MAX_HEAVY_JOBS``: perturbation and sampling methods, aug_smooth, batches of images): kernel-bound and
  hundreds of MB each, so at most one per core's worth of torch threads, at least 2, and fewer than ``MAX_CAM_JOBS``.
  They also take a slot of the first bound, so they never hold all of them: a slow job (Score-CAM) leaves the
  one-pass methods free to run.

``$CAMLIB_MAX_CAM_JOBS`` and ``$CAMLIB_MAX_HEAVY_JOBS`` override both, within those limits (at least 2; 1 to
``MAX_CAM_JOBS - 1``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import torch

from camlib.cam import METHODS

if TYPE_CHECKING:
    from camlib.cam import CamOptions

# torch's intra-op threads for this process (app.py sets them once): torch's own default, or fewer with
# $CAMLIB_TORCH_THREADS. Read here, at import, before any job has set a share of it.
TORCH_THREADS = max(1, min(torch.get_num_threads(), int(os.environ.get("CAMLIB_TORCH_THREADS", os.cpu_count() or 1))))

MAX_CAM_JOBS = max(2, int(os.environ.get("CAMLIB_MAX_CAM_JOBS", min(16, 4 * (os.cpu_count() or 1)))))
MAX_HEAVY_JOBS = min(
    MAX_CAM_JOBS - 1,
    max(1, int(os.environ.get("CAMLIB_MAX_HEAVY_JOBS", max(2, (os.cpu_count() or 1) // TORCH_THREADS)))),
)
_CAM_JOBS = threading.BoundedSemaphore(MAX_CAM_JOBS)
_HEAVY_JOBS = threading.BoundedSemaphore(MAX_HEAVY_JOBS)
_held = threading.local()  # depth: how many model_job blocks this thread is inside


@contextmanager
def _job_slots(heavy: bool) -> Iterator[None]:
    """A slot of ``_HEAVY_JOBS`` (heavy jobs only, taken first), then one of ``_CAM_JOBS``; both released on exit."""
    with _HEAVY_JOBS if heavy else nullcontext(), _CAM_JOBS:
        yield


class _CoreShare:
    """Torch's intra-op threads (``budget``) divided among the jobs running at once: a job that starts alone uses all
    of them, one that starts while k others run uses 1/(k+1) of them. Torch keeps the count per thread (each thread's
    OpenMP setting, first taken from the last ``set_num_threads``), so a job sets its own thread's count when it
    starts and puts the budget back when it ends; a running job keeps its count."""

    def __init__(self, budget: int) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._budget = budget

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
            share = max(1, self._budget // self._active)
        torch.set_num_threads(share)
        try:
            yield
        finally:
            torch.set_num_threads(self._budget)
            with self._lock:
                self._active -= 1


_share_cores = _CoreShare(TORCH_THREADS)


@contextmanager
def model_job(heavy: bool) -> Iterator[None]:
    """Run the block as one job under the limits: a slot (``_job_slots``) and a share of the cores (``_share_cores``).

    Reentrant within a thread: a block inside another (a faithfulness grid asking for a CAM) runs in the outer job's
    slot, so nesting never waits on a slot its own thread holds.
    """
    depth = getattr(_held, "depth", 0)
    if depth:
        _held.depth = depth + 1
        try:
            yield
        finally:
            _held.depth = depth
        return
    with _job_slots(heavy), _share_cores():
        _held.depth = 1
        try:
            yield
        finally:
            _held.depth = 0


def in_model_job() -> bool:
    """Whether this thread runs inside ``model_job`` (what the tests check at every forward pass)."""
    return getattr(_held, "depth", 0) > 0


def is_heavy(methods: list[str], options: CamOptions) -> bool:
    """Whether a CAM job runs more than one pass: a perturbation method (one forward per channel batch), a sampling
    method (``MethodSpec.samples`` > 1: SS-CAM, IS-CAM, Smooth Grad-CAM++, SESS) or aug_smooth (6 views)."""
    specs = [METHODS.get(m) for m in methods]  # an unknown name is camlib's to refuse (MethodError), not heavy
    return options.aug_smooth or any(s is not None and (s.family == "perturbation" or s.samples > 1) for s in specs)
