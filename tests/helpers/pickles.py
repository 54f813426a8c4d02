"""Pickle payloads that would act when unpickled: the files a safe loader must refuse without running them."""

from __future__ import annotations

import os
from pathlib import Path


class WritesMarker:
    """A pickle payload that would create ``path`` when unpickled (``open(path, "w")``); never run by safe loaders."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class RunsShell:
    """A pickle payload that would run a shell command creating ``path`` when unpickled (``os.system``)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))
