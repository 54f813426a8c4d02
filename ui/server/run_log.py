"""Server-side timing of script runs: one debug line per page run, for operators of a server with many users.

The logger is registered with Streamlit's logging, so it follows ``streamlit run --logger.level=debug`` and uses
Streamlit's message format; ``CAMLIB_LOG_LEVEL`` (e.g. ``debug``) sets this logger alone, whatever Streamlit's level.
A line reads ``run page='CAM Explorer' kind=full session='<id>' outcome=ok duration_ms=412.3``
(``benchmarks/bench_load.py`` parses it). ``kind`` is ``fragment`` when the run reruns fragments only (a widget inside
an ``st.fragment`` changed), else ``full``; ``outcome`` is ``ok``, ``rerun`` (superseded by a newer rerun or
``st.rerun``), ``stop`` (``st.stop``) or ``error:<ExceptionType>``.

``app.py`` times every full run around ``page.run()``. A fragment rerun does not run ``app.py``: to time one, decorate
the fragment's function too (``@st.fragment`` above ``@timed_run("CAM Explorer: overlay")``); ``timed_run`` works as a
decorator as well as a ``with`` block.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from streamlit import config
from streamlit.logger import get_logger
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException

LOGGER_NAME = "camlib.app"
LEVEL_ENV = "CAMLIB_LOG_LEVEL"

logger = get_logger(LOGGER_NAME)


def apply_level_from_env() -> None:
    """Set the logger's level from ``$CAMLIB_LOG_LEVEL`` when it is set; an unknown level is reported, not fatal."""
    level = os.environ.get(LEVEL_ENV, "").strip().upper()
    if not level:
        return
    if not isinstance(logging.getLevelName(level), int):
        logger.warning("%s=%r is not a logging level (debug, info, warning, error): ignored", LEVEL_ENV, level)
        return
    logger.setLevel(level)


apply_level_from_env()
# Streamlit resets every registered logger to ``logger.level`` whenever it parses its config (AppTest runs, a changed
# config.toml): the variable is applied again after that, so it keeps winning.
config.on_config_parsed(apply_level_from_env, force_connect=True)


def _outcome(error: BaseException) -> str:
    if isinstance(error, RerunException):
        return "rerun"
    if isinstance(error, StopException):
        return "stop"
    return f"error:{type(error).__name__}"


@contextmanager
def timed_run(page: str) -> Iterator[None]:
    """Log how long the enclosed script run took (debug level), also when it ends by a rerun, a stop or an error;
    the exception is re-raised unchanged."""
    ctx = get_script_run_ctx(suppress_warning=True)
    session = ctx.session_id if ctx is not None else "-"
    kind = "fragment" if ctx is not None and ctx.fragment_ids_this_run else "full"
    outcome = "ok"
    start = time.perf_counter()
    try:
        yield
    except BaseException as error:  # Streamlit's rerun/stop are BaseExceptions: logged, then passed on
        outcome = _outcome(error)
        raise
    finally:
        elapsed_ms = (time.perf_counter() - start) * 1000
        logger.debug(
            "run page=%r kind=%s session=%r outcome=%s duration_ms=%.1f", page, kind, session, outcome, elapsed_ms
        )
