"""Test helpers: `streamlit run app.py` on 127.0.0.1 and a minimal protocol-level client of its WebSocket.

A ``Session`` speaks Streamlit's own protobufs (``BackMsg`` / ``ForwardMsg``) over ``/_stcore/stream`` like the
browser does: it sends a rerun with widget states and reads ForwardMsgs until ``script_finished``. Every wait is
bounded in time. Server memory and thread counts are read from ``/proc`` (Linux).
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[2]
SUCCESS = ForwardMsg.ScriptFinishedStatus.FINISHED_SUCCESSFULLY
FINISHED_OK = (SUCCESS, ForwardMsg.ScriptFinishedStatus.FINISHED_FRAGMENT_RUN_SUCCESSFULLY)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/_stcore/stream"

    def status(self, field_name: str) -> int:
        """A ``/proc/<pid>/status`` field of the server process (``VmRSS``/``VmHWM`` in kB, ``Threads``)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise KeyError(field_name)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used, s (``/proc/<pid>/stat``)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        return self.status("VmRSS") / 1024

    def run_sessions(self, work: Callable[[int], None], sessions: int, *, daemon: bool = False) -> float:
        """``work(i)`` for ``i < sessions``, each in its own thread, all at once; returns the server's peak RSS in
        MB, sampled every 0.2 s while any of them runs."""
        threads = [threading.Thread(target=work, args=(i,), daemon=daemon) for i in range(sessions)]
        for thread in threads:
            thread.start()
        peak = 0.0
        while any(t.is_alive() for t in threads):
            peak = max(peak, self.rss_mb())
            time.sleep(0.2)
        for thread in threads:
            thread.join(timeout=1)
        return peak

    def reset_peak_rss(self) -> bool:
        """Reset the process's peak RSS (``VmHWM``) to its current RSS; False where the kernel does not allow it."""
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=10) as response:
            return response.status == 200

    def xsrf_cookie(self) -> str:
        """The ``_streamlit_xsrf`` cookie the server hands out (the browser echoes it as ``X-Xsrftoken``)."""
        with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=10) as response:
            cookie = response.headers.get("Set-Cookie", "")
        name, _, rest = cookie.partition("=")
        assert name == "_streamlit_xsrf", cookie
        return rest.split(";")[0]

    def put_file(
        self,
        session_id: str,
        file_id: str,
        name: str,
        data: bytes,
        *,
        token: bool = True,
        content_type: str = "application/octet-stream",
        declared_length: int | None = None,
    ) -> int:
        """PUT one file to the upload endpoint as the frontend does; returns the HTTP status. ``declared_length``
        sends that Content-Length instead of the body's (a client announcing a large upload)."""
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n"
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Origin": self.url}
        if token:
            cookie = self.xsrf_cookie()
            headers |= {"Cookie": f"_streamlit_xsrf={cookie}", "X-Xsrftoken": cookie}
        connection = http.client.HTTPConnection(self.url.removeprefix("http://"), timeout=60)
        try:
            connection.putrequest("PUT", f"/_stcore/upload_file/{session_id}/{file_id}")
            for name_, value in headers.items() | {"Content-Length": str(declared_length or len(body))}.items():
                connection.putheader(name_, value)
            connection.endheaders()
            # the server may answer early (413 from Content-Length) and close: then read that answer
            with suppress(BrokenPipeError, ConnectionResetError):
                connection.send(body)
            return connection.getresponse().status
        finally:
            connection.close()


@contextmanager
def streamlit_server(*args: str, env: dict[str, str] | None = None, log: Path) -> Iterator[Server]:
    """``streamlit run app.py`` on a free 127.0.0.1 port with extra ``--option value`` args; stopped on exit."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
            *args,
        ],  # a test server never reloads modules mid-test
        cwd=ROOT,
        env=os.environ | {"NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"} | (env or {}),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if server.healthy():
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start:\n{log.read_text()}")
            time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


@dataclass
class Run:
    """What one script run sent: status, widgets by key, texts, exceptions, errors, images, seconds taken."""

    status: int | None = None
    widgets: dict[str, object] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    images: int = 0
    image_urls: list[str] = field(default_factory=list)  # each image's src: a media URL or an inline data: URL
    seconds: float = 0.0
    progress: list[str] = field(default_factory=list)  # the text of each progress-bar update, in order
    superseded: Run | None = None  # the run a rerun request ended early (FINISHED_EARLY_FOR_RERUN), if any

    @property
    def ok(self) -> bool:
        return self.status in FINISHED_OK and not self.exceptions

    def text(self, prefix: str) -> str:
        return next(t for t in self.texts if t.startswith(prefix))


def _unescaped(text: str) -> str:
    """Markdown escapes undone (``Score\\-CAM`` -> ``Score-CAM``)."""
    return re.sub(r"\\(.)", r"\1", text)


class Session:
    """One browser-like session: ``Session(server)`` connects; ``rerun(...)`` runs the page script once."""

    def __init__(self, server: Server, *, session_id: str | None = None, origin: str | None = None) -> None:
        protocols = ["streamlit", "no-xsrf-token", session_id] if session_id else ["streamlit"]
        self.ws: ClientConnection = connect(
            server.ws_url,
            subprotocols=protocols,
            origin=origin or server.url,
            max_size=None,
            open_timeout=30,
            close_timeout=5,
        ).__enter__()
        self.session_id: str | None = None
        self.page_hashes: dict[str, str] = {}
        self.widget_ids: dict[str, str] = {}  # key -> id, from every run so far
        self.fragment_of: dict[str, str] = {}  # widget key -> id of the st.fragment that draws it

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_rerun(
        self, states: dict[str, tuple[str, object]] | None = None, *, page: str = "", fragment_id: str = ""
    ) -> None:
        """Ask for a rerun. ``states`` maps a widget key (as given to ``key=``) to ``(value field, value)``, e.g.
        ``{"cam_method": ("string_value", "Grad-CAM++")}``; ids come from the last run's widgets. With
        ``fragment_id`` (from ``fragment_of``) only that fragment reruns, as when a browser changes a widget in it."""
        message = BackMsg()
        rerun = message.rerun_script
        rerun.query_string = ""
        rerun.page_script_hash = self.page_hashes.get(page, "")
        rerun.fragment_id = fragment_id
        for key, (kind, value) in (states or {}).items():
            widget = rerun.widget_states.widgets.add()
            widget.id = self.widget_id(key)
            if kind == "file_uploader_state_value":
                for file_id, name, size in value:
                    info = widget.file_uploader_state_value.uploaded_file_info.add()
                    info.file_id, info.name, info.size = file_id, name, size
            elif kind in ("double_array_value", "int_array_value", "string_array_value"):
                getattr(widget, kind).data.extend(value)
            else:
                setattr(widget, kind, value)
        self.ws.send(message.SerializeToString())

    def widget_id(self, key: str) -> str:
        assert key in self.widget_ids, f"no widget with key {key!r} was shown yet"
        return self.widget_ids[key]

    def _messages(self, timeout: float, waiting_for: str) -> Iterator[ForwardMsg]:
        """The ForwardMsgs as they come; ``TimeoutError`` naming ``waiting_for`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {waiting_for} within {timeout} s")
            message = ForwardMsg()
            message.ParseFromString(self.ws.recv(timeout=remaining))
            yield message

    def read_run(self, timeout: float = 120) -> Run:
        """Read ForwardMsgs until ``script_finished`` (bounded by ``timeout`` seconds)."""
        run, start = Run(), time.monotonic()
        for message in self._messages(timeout, "script_finished"):
            kind = message.WhichOneof("type")
            if kind == "new_session":
                self.session_id = message.new_session.initialize.session_id
                self.page_hashes = {p.page_name: p.page_script_hash for p in message.new_session.app_pages}
            elif kind == "script_finished":
                if message.script_finished == ForwardMsg.ScriptFinishedStatus.FINISHED_EARLY_FOR_RERUN:
                    run = Run(superseded=run)  # superseded by a newer rerun: what counts is the run that follows
                    continue
                run.status = message.script_finished
                break
            elif kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                before = set(run.widgets)
                self._record(run, message.delta.new_element)
                for key in set(run.widgets) - before:
                    self.fragment_of[key] = message.delta.fragment_id
        run.seconds = time.monotonic() - start
        self.widget_ids |= {key: body.id for key, body in run.widgets.items()}
        return run

    def wait_for_progress(self, timeout: float = 120) -> str:
        """Read ForwardMsgs until a progress bar is drawn or updated; its text (the run goes on)."""
        for message in self._messages(timeout, "progress"):
            kind = message.WhichOneof("type")
            if kind == "script_finished":
                raise AssertionError(f"the run finished ({message.script_finished}) without a progress bar")
            if kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                element = message.delta.new_element
                if element.WhichOneof("type") == "progress":
                    return _unescaped(element.progress.text)
        raise AssertionError("unreachable")  # _messages ends only by raising

    def rerun(
        self, states: dict[str, tuple[str, object]] | None = None, *, page: str = "", timeout: float = 120
    ) -> Run:
        self.send_rerun(states, page=page)
        return self.read_run(timeout)

    @staticmethod
    def _record(run: Run, element) -> None:
        kind = element.WhichOneof("type")
        body = getattr(element, kind)
        widget_id = getattr(body, "id", "")
        if isinstance(widget_id, str) and widget_id.startswith("$$ID-"):
            run.widgets[widget_id.split("-", 2)[2]] = body
        if kind == "markdown":
            run.texts.append(_unescaped(body.body.replace("**", "")))  # markdown escapes undone
        elif kind == "exception":
            run.exceptions.append(f"{body.type}: {body.message}")
        elif kind == "alert" and body.format == body.ERROR:
            run.errors.append(body.body)
        elif kind == "alert":  # info, warning, success: read like the page's text
            run.texts.append(_unescaped(body.body.replace("**", "")))
        elif kind == "progress":
            run.progress.append(_unescaped(body.text))
        elif kind == "imgs":
            run.images += len(body.imgs)
            run.image_urls += [image.url for image in body.imgs]
