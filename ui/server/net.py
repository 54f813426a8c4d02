"""TCP_NODELAY on the app server's connections, so that reruns under load are not delayed.

Streamlit 1.67 serves with uvicorn on a listening socket it binds itself, created with ``socket.socket(family)``, so
its ``proto`` is 0. Accepted connections inherit that, and asyncio enables TCP_NODELAY only on sockets whose ``proto``
is ``IPPROTO_TCP`` (``asyncio.base_events._set_nodelay``), so Nagle's algorithm stays on: after a large message (an
overlay image, a figure) the next small one (a download button, ``script_finished``) waits for the browser's delayed
ACK, about 40 ms on Linux, on most reruns. The same cause as uvicorn #3149 (pre-bound sockets lose TCP_NODELAY).
``benchmarks/bench_load.py`` measures the time from an overlay change to ``script_finished``.

``enable_tcp_nodelay`` (called once per process from app.py) turns it on for the connections already open and, by
wrapping asyncio's hook, for every connection accepted later; on anything but a TCP socket it does nothing.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
from asyncio import base_events

_lock = threading.Lock()
_enabled = False


def set_nodelay(sock: object) -> bool:
    """TCP_NODELAY on ``sock`` (a ``socket.socket`` or asyncio's ``TransportSocket``) when it is an IPv4/IPv6 stream
    socket, whatever its ``proto``; True if it was set. A closed socket is skipped."""
    family, kind = getattr(sock, "family", None), getattr(sock, "type", None)
    if family not in (socket.AF_INET, socket.AF_INET6) or kind != socket.SOCK_STREAM:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # closed meanwhile
        return False
    return True


def enable_tcp_nodelay() -> int:
    """Once per process: TCP_NODELAY for every TCP connection asyncio accepts from now on (``_set_nodelay``, which
    asyncio's socket transports call for each new connection, also covers ``proto`` 0), and for those already open
    (the asyncio transports alive now, found by ``gc``). Later calls do nothing.

    Returns:
        The number of open connections it was set on (0 on later calls).
    """
    global _enabled
    with _lock:
        if _enabled:
            return 0
        if hasattr(base_events, "_set_nodelay"):  # looked up at call time by asyncio.selector_events
            base_events._set_nodelay = set_nodelay
        count = 0
        for obj in gc.get_objects():
            try:
                if isinstance(obj, asyncio.Transport):
                    count += set_nodelay(obj.get_extra_info("socket"))
            except Exception:  # noqa: BLE001, S112 - a weak proxy whose object is gone, an object whose class lookup fails
                continue
        _enabled = True
        return count
