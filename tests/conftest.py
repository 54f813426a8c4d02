"""Shared test fixtures: the prediction cache in a temporary directory, a snapshot of everything camlib promises to
leave untouched on a (shared) model, one torch thread. Shared helpers that are not fixtures live in tests/helpers/."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from helpers.models import ModelSnapshot


@pytest.fixture(scope="session", autouse=True)
def _prediction_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Every test (and every app or server a test starts, which inherits the environment) keeps its prediction cache
    (``camlib.prediction_cache``) in a temporary directory, never in ``~/.cache``."""
    before = os.environ.get("CAMLIB_CACHE_DIR")
    os.environ["CAMLIB_CACHE_DIR"] = str(tmp_path_factory.mktemp("camlib-cache"))
    yield
    if before is None:
        os.environ.pop("CAMLIB_CACHE_DIR", None)
    else:
        os.environ["CAMLIB_CACHE_DIR"] = before


@pytest.fixture
def snapshot():
    """``snapshot(model)`` records a model's state; ``.assert_unchanged()`` checks hooks, flags, grads, state dict."""
    return ModelSnapshot.take


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch and BLAS/LAPACK work on one thread, then restore the settings. On a small shared machine
    two spinning OpenMP/OpenBLAS threads competing with other processes for two cores run 10-50x slower than one."""
    from threadpoolctl import threadpool_limits  # installed with scikit-learn, a pytorch-grad-cam dependency

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``streamlit run app.py`` on a free 127.0.0.1 port for a real-browser module, without file watching (edits never
    reload it mid-test), its output in a log file (a pipe nobody reads could fill up and stall the server)."""
    from helpers.streamlit_ws import streamlit_server

    with streamlit_server(log=tmp_path_factory.mktemp("browser") / "streamlit.log") as running:
        yield running.url


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium driven by Playwright, one per module."""
    from helpers.browser import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def browser_page(server: str, browser):
    """One tab on the module's server, shared by the module's tests: ``(page, dialogs)``."""
    from helpers.browser import open_page

    page, dialogs, _ = open_page(browser, server)
    yield page, dialogs
    page.close()


@pytest.fixture(scope="module")
def zoo():
    """tests/helpers/reference_zoo.py's seeded NCHW reference models and camlib results, built lazily per module."""
    from helpers.reference_zoo import Zoo

    return Zoo()


@pytest.fixture(scope="module")
def layout_zoo():
    """The channels-last and token reference models (``LayoutZoo``), built lazily per module."""
    from helpers.reference_zoo import LayoutZoo

    return LayoutZoo()


@pytest.fixture(scope="module")
def small_resnet():
    """A read-only seeded ResNet-18 for 64x64 inputs (the tests that change a model build their own)."""
    from helpers.models import seeded_resnet18

    return seeded_resnet18()


@pytest.fixture(scope="module")
def x64():
    """Two seeded 64x64 standard-normal images, ``(2, 3, 64, 64)`` float32."""
    from helpers.reference_zoo import random_images

    return random_images(2, 64, seed=7)
