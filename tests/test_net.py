"""Tests of ui.server.net: TCP_NODELAY on the app server's connections.

The scenario runs in a fresh interpreter, because ``enable_tcp_nodelay`` changes asyncio's hook for the whole process.
It serves on a listening socket made by Streamlit's own ``_bind_socket`` (what ``streamlit run`` serves on) and reads
TCP_NODELAY on the server's side of each connection: off before (Streamlit's socket has ``proto`` 0, so asyncio skips
it), then on, both for a connection that was already open and for one accepted after.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ui.server import net

ROOT = Path(__file__).resolve().parents[1]

SCENARIO = """
import asyncio, json, socket
from streamlit.web.server.starlette.starlette_server import _bind_socket
from ui.server import net

async def main():
    listener = _bind_socket("127.0.0.1", 0, 8)
    accepted = asyncio.Queue()

    class Report(asyncio.Protocol):
        def connection_made(self, transport):
            accepted.put_nowait(transport)

    server = await asyncio.get_running_loop().create_server(Report, sock=listener)
    port = listener.getsockname()[1]

    async def connect():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        transport = await accepted.get()
        return writer, transport.get_extra_info("socket")

    def nodelay(sock):
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    first_writer, first = await connect()
    before = nodelay(first)
    switched = await asyncio.to_thread(net.enable_tcp_nodelay)  # as app.py does, from a script thread
    again = await asyncio.to_thread(net.enable_tcp_nodelay)
    second_writer, second = await connect()
    print(json.dumps({"proto": listener.proto, "before": before, "open": nodelay(first), "new": nodelay(second),
                      "switched": switched, "again": again}))
    for writer in (first_writer, second_writer):
        writer.close()
    server.close()

asyncio.run(main())
"""


def test_streamlits_connections_get_tcp_nodelay_open_and_new() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO], capture_output=True, text=True, check=False, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # Streamlit's listening socket has proto 0, so asyncio left Nagle on: the cause. If a later Streamlit fixes it,
    # "before" becomes 1 and ui.server.net can go.
    assert seen["proto"] == 0 and seen["before"] == 0
    assert seen["open"] != 0 and seen["new"] != 0  # the open connection switched, and every later one
    assert seen["switched"] >= 2 and seen["again"] == 0  # both ends of the open connection; once per process


@pytest.mark.parametrize(
    ("family", "kind", "expected"),
    [
        (socket.AF_INET, socket.SOCK_STREAM, True),
        (socket.AF_INET6, socket.SOCK_STREAM, True),
        (socket.AF_INET, socket.SOCK_DGRAM, False),
        (socket.AF_UNIX, socket.SOCK_STREAM, False),
    ],
)
def test_set_nodelay_acts_on_tcp_sockets_only(family: int, kind: int, expected: bool) -> None:
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket(family, kind) as sock:
        assert net.set_nodelay(sock) is expected
        if expected:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_set_nodelay_skips_a_closed_socket_and_non_sockets() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.close()
    assert net.set_nodelay(sock) is False
    assert net.set_nodelay(None) is False
