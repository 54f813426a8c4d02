"""ui.server.run_log: one debug line per script run, with the page, the session, how the run ended and its duration."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import streamlit.logger
from helpers.apptest import APP
from helpers.streamlit_ws import Session, streamlit_server
from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException
from streamlit.testing.v1 import AppTest

from ui import keys
from ui.server import run_log

LINE = re.compile(
    r"run page='(?P<page>[^']*)' kind=(?P<kind>full|fragment) session='(?P<session>[^']*)' "
    r"outcome=(?P<outcome>\S+) duration_ms=(?P<ms>\S+)"
)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _collected(level: int) -> Iterator[list[logging.LogRecord]]:
    """The logger's records at ``level`` (it does not propagate to the root logger, where caplog listens)."""
    logger, handler = logging.getLogger(run_log.LOGGER_NAME), _Collect()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture()
def records() -> Iterator[list[logging.LogRecord]]:
    with _collected(logging.DEBUG) as collected:
        yield collected


def _parsed(records: list[logging.LogRecord]) -> list[dict[str, str]]:
    found = [LINE.fullmatch(r.getMessage()) for r in records if r.name == run_log.LOGGER_NAME]
    assert all(found), [r.getMessage() for r in records]
    return [m.groupdict() for m in found]


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "ok"),
        (RerunException(None), "rerun"),
        (StopException(), "stop"),
        (ValueError("boom"), "error:ValueError"),
        (KeyboardInterrupt(), "error:KeyboardInterrupt"),
    ],
    ids=["ok", "rerun", "stop", "error", "base-exception"],
)
def test_one_debug_record_per_run_with_its_outcome_and_the_exception_passed_on(
    records: list[logging.LogRecord], error: BaseException | None, outcome: str
) -> None:
    def run() -> None:
        with run_log.timed_run("Some page"):
            sum(range(10_000))
            if error is not None:
                raise error

    if error is None:
        run()
    else:
        with pytest.raises(type(error)) as raised:
            run()
        assert raised.value is error  # re-raised unchanged
    assert [r.levelno for r in records] == [logging.DEBUG]
    (line,) = _parsed(records)
    assert line["page"] == "Some page" and line["outcome"] == outcome
    assert (line["kind"], line["session"]) == ("full", "-")  # outside a script run there is no session
    assert float(line["ms"]) > 0


def test_nothing_is_emitted_at_info_level() -> None:
    with _collected(logging.INFO) as collected, run_log.timed_run("Quiet"):
        pass
    assert collected == []


@pytest.fixture()
def restore_level() -> Iterator[None]:
    logger = logging.getLogger(run_log.LOGGER_NAME)
    level, streamlit_level = logger.level, streamlit.logger._global_log_level
    yield
    streamlit.logger.set_log_level(streamlit_level)
    logger.setLevel(level)


@pytest.mark.usefixtures("restore_level")
def test_the_level_follows_streamlits_logger_level() -> None:
    """``streamlit run --logger.level=debug`` sets every logger registered with Streamlit, ours included."""
    streamlit.logger.set_log_level("debug")
    assert logging.getLogger(run_log.LOGGER_NAME).level == logging.DEBUG
    streamlit.logger.set_log_level("info")
    assert logging.getLogger(run_log.LOGGER_NAME).level == logging.INFO


@pytest.mark.usefixtures("restore_level")
def test_camlib_log_level_sets_our_logger_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    streamlit.logger.set_log_level("info")
    monkeypatch.setenv(run_log.LEVEL_ENV, "debug")
    run_log.apply_level_from_env()
    logger = logging.getLogger(run_log.LOGGER_NAME)
    assert logger.level == logging.DEBUG
    assert streamlit.logger.get_logger("root").level == logging.INFO  # Streamlit's own: unchanged

    handler = _Collect()
    logger.addHandler(handler)
    try:
        monkeypatch.setenv(run_log.LEVEL_ENV, "chatty")
        run_log.apply_level_from_env()  # reported, the level unchanged
    finally:
        logger.removeHandler(handler)
    assert logger.level == logging.DEBUG
    assert [r.levelno for r in handler.records] == [logging.WARNING]
    assert "CAMLIB_LOG_LEVEL='CHATTY' is not a logging level" in handler.records[0].getMessage()


def _demo_app() -> None:
    import streamlit as st

    from ui.server.run_log import timed_run

    @st.fragment
    @timed_run("Demo: fragment")
    def part() -> None:
        st.slider("inside", 0, 10, key="inside")

    with timed_run("Demo"):
        if st.slider("outside", 0, 10, key="outside") > 5:
            st.stop()
        part()


def test_runs_of_a_script_are_logged_with_their_session_and_outcome(
    records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each run logs once (a decorated fragment inside it too, nested); a run that ``st.stop`` ends is logged as
    ``stop``. AppTest parses Streamlit's config (logger.level: info) at each run: CAMLIB_LOG_LEVEL keeps our logger
    at debug through that."""
    monkeypatch.setenv(run_log.LEVEL_ENV, "debug")
    at = AppTest.from_function(_demo_app).run()
    at.slider(key="outside").set_value(4).run()
    at.slider(key="outside").set_value(8).run()
    assert not at.exception
    lines = _parsed(records)
    full = [("Demo: fragment", "full", "ok"), ("Demo", "full", "ok")]
    assert [(line["page"], line["kind"], line["outcome"]) for line in lines] == [*full, *full, ("Demo", "full", "stop")]
    assert len({line["session"] for line in lines}) == 1 and lines[0]["session"] != "-"


def test_a_fragment_rerun_is_logged_as_such(records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch) -> None:
    """In a run that reruns fragments only (a widget inside ``st.fragment`` changed) the line says kind=fragment.
    (AppTest always reruns the whole script, so the run context is stood in for here.)"""
    context = SimpleNamespace(session_id="s-1", fragment_ids_this_run=["f-1"])
    monkeypatch.setattr(run_log, "get_script_run_ctx", lambda suppress_warning: context)
    with run_log.timed_run("Demo: fragment"):
        pass
    (line,) = _parsed(records)
    assert (line["kind"], line["session"]) == ("fragment", "s-1")


@pytest.mark.slow
def test_the_apps_first_run_is_logged_with_its_session(
    records: list[logging.LogRecord], monkeypatch: pytest.MonkeyPatch
) -> None:
    """app.py wraps ``page.run()``: its run is logged once, for the page shown, with the session id. (AppTest runs
    later reruns of a multipage app's page without app.py: the server test below covers those.)"""
    monkeypatch.setenv(run_log.LEVEL_ENV, "debug")
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception
    (line,) = [line for line in _parsed(records) if line["page"] == "CAM Explorer"]
    assert (line["kind"], line["outcome"]) == ("full", "ok") and line["session"] != "-"
    assert float(line["ms"]) > 0


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the server helper reads /proc")
@pytest.mark.parametrize(
    ("args", "env"),
    [(("--logger.level", "debug"), {}), ((), {run_log.LEVEL_ENV: "debug"})],
    ids=["streamlit-logger-level", "env"],
)
def test_a_real_server_writes_the_line(tmp_path: Path, args: tuple[str, ...], env: dict[str, str]) -> None:
    """``streamlit run app.py`` with ``--logger.level=debug``, or with ``CAMLIB_LOG_LEVEL=debug`` alone, writes one
    line per run to its console, with the session id the client was given."""
    log = tmp_path / "server.log"
    with streamlit_server(*args, env=env, log=log) as server, Session(server) as session:
        assert session.rerun(timeout=180).ok
        assert session.rerun({keys.CAM_METHOD: ("string_value", "XGrad-CAM")}).ok
    lines = [m.groupdict() for m in map(LINE.search, log.read_text().splitlines()) if m]
    lines = [line for line in lines if line["page"] == "CAM Explorer"]
    assert [(line["session"], line["kind"], line["outcome"]) for line in lines] == [
        (session.session_id, "full", "ok")
    ] * 2
