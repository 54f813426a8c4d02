"""Keep the last good result: a camlib error is shown and the page goes on with what worked before (house style 7)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from camlib.errors import CamlibError
from ui.text import md

T = TypeVar("T")


def keep_last_good(
    slot: str, compute: Callable[[], T], *, failure: str = "{error}", stale: str | None = None
) -> tuple[T | None, CamlibError | None]:
    """Run ``compute`` and keep its value in ``st.session_state[slot]``; on a ``CamlibError`` show it with
    ``st.error`` (``failure`` is a ``ui.text.md`` template with ``{error}``) and fall back to the slot's value.

    Returns:
        ``(value, None)`` when ``compute`` worked; ``(last good value or None, error)`` when it raised. ``stale``, if
        given, is shown as a caption when the last good value is used.
    """
    try:
        value = compute()
    except CamlibError as error:
        st.error(md(failure, error=error))
        last = st.session_state.get(slot)
        if last is not None and stale:
            st.caption(md(stale))
        return last, error
    st.session_state[slot] = value
    return value, None


def show_last_good(slot: str, error: Exception, draw: Callable[..., None], *, failure: str, stale: str) -> None:
    """Show ``error`` with ``st.error`` (``failure``: a ``ui.text.md`` template with ``{error}``), then the slot's last
    good value, drawn by ``draw(*value)`` under the caption ``stale``; nothing more when the slot is empty."""
    st.error(md(failure, error=error))
    kept = st.session_state.get(slot)
    if kept is not None:
        st.caption(md(stale))
        draw(*kept)
