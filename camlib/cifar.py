"""CIFAR-10 (Krizhevsky, 2009) from disk: the official torchvision-format release or an image-folder copy.

Two layouts are read from a data root:

- "torchvision": ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``, the official
  release. Files are md5-checked by torchvision *before* anything is unpickled; the md5 table is
  ``torchvision.datasets.CIFAR10``'s own (``train_list``, ``test_list``, ``meta``).
- "folder": ``<root>/{train,test}/<class>/*.{png,jpg,jpeg}`` with the ten official class folders
  (``../shared/data/cifar10`` is such a copy, JPEG-decoded, so close to but not bit-identical with the release).

The default root is ``$CAMLIB_CIFAR10_ROOT``, else ``../shared/data/cifar10`` beside the repository when it exists.
No image is ever generated in place of missing data: a missing dataset is a ``DatasetUnavailableError``.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from camlib.contracts import describe
from camlib.errors import DatasetError, DatasetIntegrityError, DatasetUnavailableError, InputError

Split = Literal["train", "test"]
Source = Literal["torchvision", "folder"]

ROOT_ENV = "CAMLIB_CIFAR10_ROOT"
CLASS_NAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)  # the official order: label k is CLASS_NAMES[k]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SHAPE = (32, 32, 3)
# The official release's folder: torchvision.datasets.CIFAR10.base_folder, written out so that finding the data does
# not import torchvision (1.3 s); tests/test_cifar.py checks it against torchvision's.
BASE_FOLDER = "cifar-10-batches-py"
DOWNLOAD_CHUNK = 1 << 20  # 1 MiB: progress is reported about 160 times for the 163 MB archive
_REPO_ROOT = Path(__file__).resolve().parents[1]
_SHARED_COPY = _REPO_ROOT.parent / "shared" / "data" / "cifar10"


@dataclass(frozen=True)
class CifarData:
    """A loaded CIFAR-10 split.

    Attributes:
        images: ``uint8`` RGB ``(N, 32, 32, 3)``.
        labels: ``int64`` ``(N,)``, indices into ``class_names``.
        class_names: the ten class names in label order.
        source: "torchvision" or "folder".
        root: the data root it was read from.
        split: "train" or "test".
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str
    root: str
    split: str

    def __len__(self) -> int:
        return len(self.labels)


def default_root() -> Path | None:
    """``$CAMLIB_CIFAR10_ROOT`` if set, else the shared image-folder copy beside the repository if present."""
    configured = os.environ.get(ROOT_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return _SHARED_COPY if _SHARED_COPY.is_dir() else None


def _root_path(root: object) -> Path:
    """``root`` as a ``Path``; ``DatasetError`` unless it is a ``str`` or ``os.PathLike``."""
    if not isinstance(root, str | os.PathLike):
        raise DatasetError(f"root must be a directory path (str or Path), got {type(root).__name__}")
    return Path(root).expanduser()


def detect_source(root: str | os.PathLike[str]) -> Source | None:
    """Which layout ``root`` holds: "torchvision" (preferred: exact pixels), "folder", or None.

    Raises ``DatasetError`` when ``root`` is not a path."""
    path = _root_path(root)
    if (path / BASE_FOLDER).is_dir():
        return "torchvision"
    if any((path / split / name).is_dir() for split in ("train", "test") for name in CLASS_NAMES):
        return "folder"
    return None


def _how_to_get_it(root: Path) -> str:
    return (
        f"download the official release with camlib.cifar.download_cifar10('{root}') on a machine that is "
        f"online, or point ${ROOT_ENV} at a folder holding cifar-10-batches-py/ or train/ and test/ "
        f"image folders ({', '.join(CLASS_NAMES)})"
    )


def balanced_subset(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Indices of at most ``limit`` items spread evenly over the classes, in their original order.

    Classes are visited round-robin (each class's first item, then each class's second item, ...), so ``limit=20``
    keeps the first two images of each of the ten classes; ``None`` or a limit above the size keeps everything.

    Raises ``DatasetError`` unless ``labels`` is a 1-D integer array and ``limit`` None or a positive integer.
    """
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetError(f"labels must be a 1-D integer array, got {describe(labels)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1):
        raise DatasetError(f"limit must be a positive integer or None, got {limit!r}")
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    rank = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(len(members))
    return np.sort(np.lexsort((labels, rank))[:limit])


def _decode(path: Path) -> np.ndarray:
    # imdecode(fromfile) rather than imread: non-ASCII paths work and it was the fastest of cv2/PIL here
    image = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetIntegrityError(f"{path} is not a readable image; replace it or delete it")
    if image.shape != IMAGE_SHAPE:
        raise DatasetIntegrityError(f"{path} is {image.shape[1]}x{image.shape[0]}; CIFAR-10 images are 32x32")
    return image[:, :, ::-1]  # BGR -> RGB


def _load_folder(root: Path, split: Split, limit: int | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    split_dir = root / split
    missing = [name for name in CLASS_NAMES if not (split_dir / name).is_dir()]
    if missing:
        raise DatasetUnavailableError(
            f"the CIFAR-10 image folders in {split_dir} are incomplete: missing "
            f"{', '.join(missing)}; {_how_to_get_it(root)}"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(CLASS_NAMES):
        found = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetUnavailableError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) under {split_dir}; {_how_to_get_it(root)}"
        )
    all_labels = np.asarray(labels, dtype=np.int64)
    keep = balanced_subset(all_labels, limit)  # chosen before decoding: a small limit reads few files
    images = np.empty((len(keep), *IMAGE_SHAPE), dtype=np.uint8)
    for out, index in enumerate(keep):
        images[out] = _decode(files[index])
    return images, all_labels[keep], CLASS_NAMES


def _release_files() -> list[tuple[str, str]]:
    """``(file name, md5)`` of every file of the release, read from torchvision's class at call time."""
    import torchvision  # imported here: its import costs 1.3 s (torch._dynamo), and only the release needs it

    cls = torchvision.datasets.CIFAR10
    return [(name, md5) for name, md5 in [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]]


def _integrity_problem(root: Path) -> DatasetError:
    """Why torchvision refused ``root``: which files are missing or fail their md5 (only on the error path)."""
    import torchvision  # imported here: its import costs 1.3 s (torch._dynamo), and only the release needs it

    folder = root / BASE_FOLDER
    expected = _release_files()
    missing = [name for name, _ in expected if not (folder / name).is_file()]
    if missing:
        return DatasetUnavailableError(f"{folder} is incomplete: missing {', '.join(missing)}; {_how_to_get_it(root)}")
    corrupted = [
        name for name, md5 in expected if not torchvision.datasets.utils.check_integrity(str(folder / name), md5)
    ]
    return DatasetIntegrityError(
        f"CIFAR-10 files in {folder} fail their md5 check ({', '.join(corrupted) or 'unknown file'}): corrupted or "
        f"tampered with, so they were not loaded; delete {folder} and download the release again"
    )


def _load_torchvision(root: Path, split: Split) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    import torchvision  # imported here: its import costs 1.3 s (torch._dynamo), and only the release needs it

    try:
        # torchvision md5-checks every batch file (and then the meta file) before it unpickles it
        dataset = torchvision.datasets.CIFAR10(str(root), train=split == "train", download=False)
    except RuntimeError as exc:  # "Dataset not found or corrupted" / "Dataset metadata file not found or corrupted"
        raise _integrity_problem(root) from exc
    images = np.ascontiguousarray(dataset.data, dtype=np.uint8)
    return images, np.asarray(dataset.targets, dtype=np.int64), tuple(dataset.classes)


def load_cifar10(
    root: str | os.PathLike[str] | None = None, split: Split = "test", *, limit: int | None = None
) -> CifarData:
    """Load a CIFAR-10 split from ``root`` (default: ``default_root()``).

    Order is deterministic: the release's own order for "torchvision"; class by class (label order), files sorted
    by name within a class, for "folder". ``limit`` keeps at most that many images spread evenly over the classes
    (see ``balanced_subset``) and preserves that order; the folder source then decodes only those files.

    Raises:
        DatasetUnavailableError: no root, no known layout under it, or files missing.
        DatasetIntegrityError: md5 mismatch (nothing is unpickled), an unreadable or non-32x32 image.
        DatasetError: a split other than "train"/"test", or a limit below 1.
    """
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be a positive integer or None, got {limit!r}")
    if root is None:
        root = default_root()
        if root is None:
            raise DatasetUnavailableError(
                f"no CIFAR-10 data root: ${ROOT_ENV} is not set and {_SHARED_COPY} does "
                f"not exist; {_how_to_get_it(_SHARED_COPY)}"
            )
    path = _root_path(root)
    source = detect_source(path)
    if source is None:
        raise DatasetUnavailableError(
            f"no CIFAR-10 under {path}: looked for {path / BASE_FOLDER} (official "
            f"release) and {path / split}/<class>/*.jpg (image folders); {_how_to_get_it(path)}"
        )
    if source == "torchvision":
        images, labels, class_names = _load_torchvision(path, split)
        keep = balanced_subset(labels, limit)
        images, labels = images[keep], labels[keep]
    else:
        images, labels, class_names = _load_folder(path, split, limit)
    return CifarData(images, labels, class_names, source, str(path), split)


def _verified_release(root: Path) -> bool:
    import torchvision  # imported here: its import costs 1.3 s (torch._dynamo), and only the release needs it

    folder = root / BASE_FOLDER
    return all(torchvision.datasets.utils.check_integrity(str(folder / name), md5) for name, md5 in _release_files())


def download_cifar10(
    root: str | os.PathLike[str], progress: Callable[[int, int], None] | None = None, *, timeout: float = 30.0
) -> Path:
    """Download and extract the official CIFAR-10 release into ``root`` (a no-op when it is already there).

    The archive is streamed in ``DOWNLOAD_CHUNK`` pieces, md5-checked against torchvision's ``tgz_md5`` and
    extracted with ``tarfile``'s "data" filter (no absolute paths, links out of ``root`` or device files). The
    operator's switch and disk cap apply (``camlib.models.downloads_enabled``, ``download_allowance`` of ``root``):
    the declared ``Content-Length`` is checked before the body is read, and a stream longer than it (or than the
    allowance) is cut. Messages say "the data root", never a path (a visitor reads them; the log has it).

    Args:
        root: the data root; ``cifar-10-batches-py/`` is created in it.
        progress: called as ``progress(done_bytes, total_bytes)`` after each chunk; ``total_bytes`` is 0 when the
            server does not say.
        timeout: seconds to wait for the server.

    Returns:
        ``root`` as a ``Path``, ready for ``load_cifar10``.

    Raises:
        DatasetUnavailableError: the server cannot be reached (offline), the transfer breaks, downloads are turned
            off, or the archive is larger than the allowance (or than it declared).
        DatasetIntegrityError: the archive's md5 is wrong, it cannot be extracted safely, or its files fail md5.
        DatasetError: ``root`` is not a path or ``timeout`` not a positive number of seconds (checked before any
            network access).
    """
    path = _root_path(root)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < float("inf"):
        raise DatasetError(f"timeout must be a positive number of seconds, got {timeout!r}")
    import torchvision  # imported here: its import costs 1.3 s (torch._dynamo), and only the release needs it

    from camlib import models  # here: camlib.models imports this module

    cls = torchvision.datasets.CIFAR10
    if _verified_release(path):
        return path
    allowance = _allowance(path)
    try:
        response = urllib.request.urlopen(cls.url, timeout=timeout)  # looked up at call time: tests patch it
    except OSError as exc:  # URLError, timeouts and refused connections are all OSErrors
        models.logger.warning("CIFAR-10 download into %s failed: %s", path, exc)
        raise DatasetUnavailableError(
            f"cannot download CIFAR-10 from {cls.url} ({models.error_reason(exc)}): this "
            f"machine looks offline; copy cifar-10-python.tar.gz's contents into {cls.base_folder}/ in the data root "
            f"or point ${ROOT_ENV} at an image-folder copy"
        ) from exc
    archive = path / cls.filename
    partial = archive.with_name(archive.name + ".part")
    digest = _fetch(response, partial, cls.url, allowance, progress)
    if digest != cls.tgz_md5:
        _discard(partial)
        raise DatasetIntegrityError(
            f"the downloaded {cls.filename} has md5 {digest}, expected "
            f"{cls.tgz_md5}: the download is corrupted or was altered; try again"
        )
    partial.replace(archive)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(path, filter="data")
    except (tarfile.TarError, OSError) as exc:
        from camlib.models import logger

        logger.warning("cannot extract %s: %s", archive, exc)
        raise DatasetIntegrityError(
            f"cannot extract {archive.name} in the data root safely ({type(exc).__name__}); delete it and try again"
        ) from exc
    if not _verified_release(path):
        raise _integrity_problem(path)
    return path


class _Refused(Exception):
    """A download refused for its size (declared, or as streamed)."""


def _declared_size(header: str | None, allowance: int) -> int:
    """``Content-Length`` in bytes (0: not declared), refused when it is not a byte count or exceeds ``allowance``."""
    from camlib.parsing import parse_int

    if header is None or header == "":
        return 0
    try:
        total = parse_int(header.strip(), "Content-Length", minimum=0)
    except InputError as error:
        raise _Refused(f"the server declared no valid size ({error})") from None
    if total > allowance:
        raise _Refused(f"it is {total / 1e6:,.0f} MB and downloads may use {allowance / 1e6:,.0f} MB more")
    return total


def _discard(partial: Path) -> None:
    """Remove a partial download; one that cannot be removed is left to the log."""
    try:
        partial.unlink(missing_ok=True)
    except OSError as error:
        from camlib.models import logger

        logger.warning("cannot remove %s: %s", partial, error)


def _allowance(path: Path) -> int:
    """The bytes a download into ``path`` may write, after the operator's switch; typed errors."""
    from camlib import models

    if not models.downloads_enabled():
        raise DatasetUnavailableError(
            f"downloads are turned off on this server (${models.DOWNLOADS_ENV}); ask the operator to place "
            f"CIFAR-10 in the data root, or point ${ROOT_ENV} at a copy"
        )
    try:
        return models.download_allowance(path)
    except InputError as error:
        raise DatasetError(str(error)) from None


def _fetch(response, partial: Path, url: str, allowance: int, progress: Callable[[int, int], None] | None) -> str:
    """Stream ``response`` into ``partial`` (its folder made first) in ``DOWNLOAD_CHUNK`` reads, at most its declared
    size and ``allowance`` bytes; the md5 hex digest of what was written. ``partial`` is removed on any failure."""
    from camlib.models import error_reason, logger

    digest = hashlib.md5(usedforsecurity=False)  # integrity against the published md5, not security
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        with response, partial.open("wb") as out:
            total = _declared_size(response.headers.get("Content-Length"), allowance)
            limit, done = total or allowance, 0
            while chunk := response.read(DOWNLOAD_CHUNK):
                done += len(chunk)
                if done > limit:
                    raise _Refused(f"the server sent more than {limit / 1e6:,.1f} MB")
                out.write(chunk)
                digest.update(chunk)
                if progress is not None:
                    progress(done, total)
    except _Refused as exc:
        _discard(partial)
        raise DatasetUnavailableError(f"refused the CIFAR-10 download from {url}: {exc}") from None
    except OSError as exc:
        _discard(partial)
        logger.warning("CIFAR-10 download into %s broke off: %s", partial, exc)
        raise DatasetUnavailableError(
            f"the CIFAR-10 download from {url} broke off ({error_reason(exc)}); try again"
        ) from exc
    return digest.hexdigest()
