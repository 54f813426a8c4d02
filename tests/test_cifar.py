"""Tests of camlib.cifar on the real image-folder copy and on a small torchvision-format release written here.

Nothing touches the network: downloads are exercised with a patched ``urllib.request.urlopen``.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

from camlib import cifar
from camlib.cifar import (
    CLASS_NAMES,
    ROOT_ENV,
    CifarData,
    DatasetError,
    DatasetIntegrityError,
    DatasetUnavailableError,
    balanced_subset,
    default_root,
    detect_source,
    download_cifar10,
    load_cifar10,
)
from camlib.errors import CamlibError

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared CIFAR-10 image-folder copy is not at {DATA}")
CIFAR10 = torchvision.datasets.CIFAR10


def real_image(split: str, label: int, number: int) -> np.ndarray:
    """A real CIFAR-10 image decoded with Pillow, independently of camlib.cifar."""
    with Image.open(DATA / split / CLASS_NAMES[label] / f"{number:04d}.jpg") as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def test_split() -> CifarData:
    if not DATA.is_dir():
        pytest.skip(f"the shared CIFAR-10 image-folder copy is not at {DATA}")
    return load_cifar10(DATA, "test")


# ---------------------------------------------------------------------------------------------------- image folders


def test_folder_test_split(test_split):
    assert len(test_split) == 10_000
    assert test_split.images.shape == (10_000, 32, 32, 3) and test_split.images.dtype == np.uint8
    assert test_split.labels.shape == (10_000,) and test_split.labels.dtype == np.int64
    assert np.array_equal(np.bincount(test_split.labels), [1000] * 10)
    assert (np.diff(test_split.labels) >= 0).all()  # class by class, in label order
    assert (
        test_split.class_names
        == CLASS_NAMES
        == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    )
    assert (test_split.source, test_split.root, test_split.split) == ("folder", str(DATA), "test")


def test_folder_pixels_are_rgb_and_sorted_by_file_name(test_split):
    assert np.array_equal(test_split.images[0], real_image("test", 0, 0))
    assert np.array_equal(test_split.images[1], real_image("test", 0, 1))
    assert np.array_equal(test_split.images[3 * 1000 + 7], real_image("test", 3, 7))
    assert np.array_equal(test_split.images[-1], real_image("test", 9, 999))


def test_limit_spreads_over_classes_and_keeps_order(test_split):
    subset = load_cifar10(DATA, "test", limit=25)
    assert subset.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9]
    starts = [0, 1, 2, 1000, 1001, 1002]
    assert np.array_equal(subset.images[:6], test_split.images[starts])
    again = load_cifar10(DATA, "test", limit=25)
    assert again.images.tobytes() == subset.images.tobytes()


@needs_data
def test_train_split_subset():
    train = load_cifar10(DATA, "train", limit=10)
    assert train.labels.tolist() == list(range(10)) and train.split == "train"
    assert np.array_equal(train.images[4], real_image("train", 4, 0))


def test_balanced_subset():
    labels = np.array([0, 0, 0, 1, 2, 2])
    assert balanced_subset(labels, 4).tolist() == [0, 1, 3, 4]
    assert balanced_subset(labels, 5).tolist() == [0, 1, 3, 4, 5]
    assert balanced_subset(labels, None).tolist() == balanced_subset(labels, 99).tolist() == list(range(6))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "val"}, "split must be 'train' or 'test'"),
        ({"limit": 0}, "limit must be a positive integer"),
        ({"limit": 2.5}, "limit must be a positive integer"),
    ],
)
def test_bad_requests(tmp_path, kwargs, message):
    with pytest.raises(DatasetError, match=message):
        load_cifar10(tmp_path, **kwargs)


def test_missing_data_says_where_it_looked_and_what_to_do(tmp_path):
    with pytest.raises(DatasetUnavailableError) as info:
        load_cifar10(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in message and "download_cifar10" in message
    assert ROOT_ENV in message and isinstance(info.value, CamlibError)


def test_default_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    assert default_root() == tmp_path
    with pytest.raises(DatasetUnavailableError, match=f"no CIFAR-10 under {tmp_path}"):
        load_cifar10()
    monkeypatch.delenv(ROOT_ENV)
    root = default_root()
    assert (root.resolve() if root else None) == (DATA.resolve() if DATA.is_dir() else None)


def test_no_root_at_all(monkeypatch, tmp_path):
    monkeypatch.delenv(ROOT_ENV, raising=False)
    monkeypatch.setattr(cifar, "_SHARED_COPY", tmp_path / "absent")
    with pytest.raises(DatasetUnavailableError, match="no CIFAR-10 data root"):
        load_cifar10()


def write_folder(root: Path, *, skip: str | None = None) -> None:
    for label, name in enumerate(CLASS_NAMES):
        if name != skip:
            (root / "test" / name).mkdir(parents=True)
            Image.fromarray(real_image("test", label, 0)).save(root / "test" / name / "a.png")


@needs_data
def test_folder_layout_errors(tmp_path):
    write_folder(tmp_path / "partial", skip="frog")
    assert detect_source(tmp_path / "partial") == "folder"
    with pytest.raises(DatasetUnavailableError, match="missing frog"):
        load_cifar10(tmp_path / "partial")
    write_folder(tmp_path / "broken")
    (tmp_path / "broken" / "test" / "cat" / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetIntegrityError, match="b.jpg is not a readable image"):
        load_cifar10(tmp_path / "broken")
    Image.new("RGB", (40, 32)).save(tmp_path / "broken" / "test" / "cat" / "b.jpg")
    with pytest.raises(DatasetIntegrityError, match="is 40x32; CIFAR-10 images are 32x32"):
        load_cifar10(tmp_path / "broken")
    (tmp_path / "broken" / "test" / "cat" / "b.jpg").unlink()
    png_copy = load_cifar10(tmp_path / "broken")  # lossless PNGs of real images come back exactly
    assert np.array_equal(png_copy.images, np.stack([real_image("test", k, 0) for k in range(10)]))


def test_detect_source(tmp_path):
    assert detect_source(tmp_path) is None
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert detect_source(tmp_path) == "torchvision"


# --------------------------------------------------------------------------------------------------- torchvision format


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def write_batch(path: Path, images: np.ndarray, labels: list[int]) -> None:
    # the release's layout: rows of 3072 bytes, channel-major (R plane, G plane, B plane)
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with path.open("wb") as f:
        pickle.dump(
            {
                "batch_label": path.name,
                "data": data,
                "labels": labels,
                "filenames": [f"{i}.png" for i in range(len(labels))],
            },
            f,
        )


@pytest.fixture
def release(tmp_path, monkeypatch) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A tiny release of real CIFAR-10 images in torchvision's format, with torchvision's md5 table patched to it."""
    if not DATA.is_dir():
        pytest.skip(f"real images are taken from the image-folder copy at {DATA}, which is absent")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    expected = {}
    for k in range(5):
        labels = [(2 * k) % 10, (2 * k + 1) % 10, (2 * k + 5) % 10]
        images = np.stack([real_image("train", label, k) for label in labels])
        write_batch(folder / f"data_batch_{k + 1}", images, labels)
        expected[f"data_batch_{k + 1}"] = images, np.array(labels)
    test_labels = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 0, 7, 8]
    test_images = np.stack([real_image("test", label, i) for i, label in enumerate(test_labels)])
    write_batch(folder / "test_batch", test_images, test_labels)
    expected["test_batch"] = test_images, np.array(test_labels)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": list(CLASS_NAMES), "num_cases_per_batch": 3, "num_vis": 3072}, f)
    monkeypatch.setattr(
        CIFAR10, "train_list", [[f"data_batch_{k}", md5(folder / f"data_batch_{k}")] for k in range(1, 6)]
    )
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", CIFAR10.meta | {"md5": md5(folder / "batches.meta")})
    return tmp_path, expected


def test_torchvision_release_loads_exact_pixels(release):
    root, expected = release
    assert detect_source(root) == "torchvision"
    data = load_cifar10(root, "test")
    images, labels = expected["test_batch"]
    assert data.source == "torchvision" and data.class_names == CLASS_NAMES and data.root == str(root)
    assert data.images.dtype == np.uint8 and data.images.flags.c_contiguous and data.labels.dtype == np.int64
    assert np.array_equal(data.images, images) and np.array_equal(data.labels, labels)
    train = load_cifar10(root, "train")
    assert np.array_equal(train.images, np.concatenate([expected[f"data_batch_{k}"][0] for k in range(1, 6)]))
    subset = load_cifar10(root, "test", limit=4)  # the first image of classes 0-3, kept in the release's order
    assert subset.labels.tolist() == [3, 1, 2, 0] and np.array_equal(subset.images, images[[0, 1, 6, 10]])


def test_the_release_folder_is_torchvisions():
    assert CIFAR10.base_folder == cifar.BASE_FOLDER


def test_the_official_md5s_are_used_in_production(release, monkeypatch):
    root, _ = release
    monkeypatch.undo()  # torchvision's real md5 table: our hand-written files cannot match it
    assert CIFAR10.test_list == [["test_batch", "40351d587109b95175f43aff81a1287e"]]
    with pytest.raises(DatasetIntegrityError, match="fail their md5 check"):
        load_cifar10(root, "test")


class _Trap:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("split", ["test", "train"])
@pytest.mark.bad_input(30)
def test_a_tampered_batch_is_refused_before_unpickling(release, tmp_path, split):
    root, _ = release
    marker = tmp_path / "unpickled"
    with (root / "cifar-10-batches-py" / "test_batch").open("wb") as f:
        pickle.dump({"data": _Trap(marker), "labels": []}, f)
    with pytest.raises(DatasetIntegrityError) as info:
        load_cifar10(root, split)
    assert "test_batch" in str(info.value) and "tampered" in str(info.value)
    assert not marker.exists()


@pytest.mark.bad_input(30)
def test_a_tampered_meta_file_is_refused_before_unpickling(release, tmp_path):
    root, _ = release
    marker = tmp_path / "unpickled"
    with (root / "cifar-10-batches-py" / "batches.meta").open("wb") as f:
        pickle.dump(_Trap(marker), f)
    with pytest.raises(DatasetIntegrityError, match="batches.meta"):
        load_cifar10(root, "test")
    assert not marker.exists()


def test_a_missing_batch_is_unavailable(release):
    root, _ = release
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetUnavailableError, match="missing data_batch_3"):
        load_cifar10(root, "test")


# ---------------------------------------------------------------------------------------------------- download


@pytest.mark.bad_input(29)
def test_download_offline_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetUnavailableError, match="looks offline") as info:
        download_cifar10(tmp_path / "cifar")
    assert "name resolution" in str(info.value) and ROOT_ENV in str(info.value)
    assert not (tmp_path / "cifar").exists() or not any((tmp_path / "cifar").iterdir())


class _Response(io.BytesIO):
    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def archive_of(folder: Path, extra: tarfile.TarInfo | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size))
    return buffer.getvalue()


def serve(monkeypatch, payload: bytes) -> list[str]:
    urls: list[str] = []

    def urlopen(url, timeout):
        urls.append(url)
        return _Response(payload)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return urls


def test_download_streams_checks_md5_and_extracts(release, tmp_path, monkeypatch):
    root, expected = release
    payload = archive_of(root / "cifar-10-batches-py")
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(payload, usedforsecurity=False).hexdigest())
    monkeypatch.setattr(cifar, "DOWNLOAD_CHUNK", 1000)
    urls = serve(monkeypatch, payload)
    calls: list[tuple[int, int]] = []
    target = download_cifar10(tmp_path / "fresh", lambda done, total: calls.append((done, total)))
    assert urls == [CIFAR10.url] and target == tmp_path / "fresh"
    assert calls[-1] == (len(payload), len(payload)) and len(calls) == -(-len(payload) // 1000)
    assert np.array_equal(load_cifar10(target, "test").images, expected["test_batch"][0])
    assert (target / CIFAR10.filename).is_file() and not (target / (CIFAR10.filename + ".part")).exists()
    serve(monkeypatch, b"")  # already there: no second download
    assert download_cifar10(target) == target and urls == [CIFAR10.url]


def test_download_with_a_wrong_md5_leaves_nothing(tmp_path, monkeypatch):
    serve(monkeypatch, b"not the archive")
    with pytest.raises(DatasetIntegrityError, match="md5"):
        download_cifar10(tmp_path)
    assert list(tmp_path.iterdir()) == []


def _serve_an_escaping_archive(release, monkeypatch) -> None:
    """Serve the release with a member ``../escaped.txt`` added, under the checksum the download expects."""
    root, _ = release
    escape = tarfile.TarInfo("../escaped.txt")
    escape.size = 3
    payload = archive_of(root / "cifar-10-batches-py", escape)
    monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(payload, usedforsecurity=False).hexdigest())
    serve(monkeypatch, payload)


def test_download_refuses_an_archive_that_escapes_the_root(release, tmp_path, monkeypatch):
    _serve_an_escaping_archive(release, monkeypatch)
    (tmp_path / "inner").mkdir()
    with pytest.raises(DatasetIntegrityError, match="cannot extract"):
        download_cifar10(tmp_path / "inner")
    assert not (tmp_path / "escaped.txt").exists()


# ------------------------------------------------------------------------- download: operator's switch, cap, paths


class _Counted(_Response):
    """A response that says how many body bytes were read (also once closed)."""

    read_so_far = 0

    def read(self, n=-1):
        chunk = super().read(n)
        self.read_so_far += len(chunk)
        return chunk


def _serve_response(monkeypatch, response) -> list[str]:
    urls: list[str] = []

    def urlopen(url, timeout):
        urls.append(url)
        return response

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return urls


@pytest.mark.bad_input(74)
def test_download_turned_off_opens_no_connection(tmp_path, monkeypatch):
    urls = serve(monkeypatch, b"never read")
    monkeypatch.setenv("CAMLIB_DOWNLOADS", "off")
    with pytest.raises(DatasetUnavailableError, match=r"turned off on this server \(\$CAMLIB_DOWNLOADS\)"):
        download_cifar10(tmp_path / "cifar")
    assert urls == [] and not (tmp_path / "cifar").exists()


@pytest.mark.bad_input(74)
def test_download_larger_than_the_allowance_is_refused_before_reading(tmp_path, monkeypatch):
    (tmp_path / "already-here.bin").write_bytes(b"a" * 700_000)
    monkeypatch.setenv("CAMLIB_DOWNLOAD_MAX_MB", "1")
    response = _Counted(b"b" * 400_000)
    _serve_response(monkeypatch, response)
    with pytest.raises(DatasetUnavailableError, match="it is 0 MB and downloads may use 0 MB more"):
        download_cifar10(tmp_path)
    assert response.read_so_far == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["already-here.bin"]


@pytest.mark.bad_input(74)
@pytest.mark.parametrize(("declared", "cap_mb", "limit"), [(1_000, None, 1_000), (None, "1", 1_000_000)])
def test_download_longer_than_declared_or_allowed_is_cut(tmp_path, monkeypatch, declared, cap_mb, limit):
    monkeypatch.setattr(cifar, "DOWNLOAD_CHUNK", 1000)
    if cap_mb is not None:
        monkeypatch.setenv("CAMLIB_DOWNLOAD_MAX_MB", cap_mb)
    response = _Counted(b"c" * 3_000_000)
    response.headers = {} if declared is None else {"Content-Length": str(declared)}
    _serve_response(monkeypatch, response)
    with pytest.raises(DatasetUnavailableError, match="the server sent more than"):
        download_cifar10(tmp_path / "root")
    assert limit < response.read_so_far <= limit + 1000
    assert list((tmp_path / "root").iterdir()) == []


@pytest.mark.parametrize("header", ["²", "-5", "1e9", "0x10", "9" * 5_000])
def test_download_with_a_content_length_that_is_not_a_byte_count_is_refused(tmp_path, monkeypatch, header):
    response = _Counted(b"d" * 100)
    response.headers = {"Content-Length": header}
    _serve_response(monkeypatch, response)
    with pytest.raises(DatasetUnavailableError, match="declared no valid size"):
        download_cifar10(tmp_path)
    assert response.read_so_far == 0


@pytest.mark.bad_input(74)
@pytest.mark.parametrize("kind", ["offline", "mid-stream", "root is a file", "md5", "extraction"])
def test_no_cifar_download_failure_names_a_server_path(release, tmp_path, monkeypatch, kind):
    """Each failure is typed and names "the data root", never the folder on the server."""
    secret = tmp_path / "srv-secret-root"
    if kind == "offline":

        def offline(*args, **kwargs):
            raise urllib.error.URLError(OSError(2, "No such file or directory", str(secret)))

        monkeypatch.setattr(urllib.request, "urlopen", offline)
    elif kind == "mid-stream":

        class Broken(_Response):
            def read(self, n=-1):
                raise ConnectionResetError("connection reset by peer")

        _serve_response(monkeypatch, Broken(b"x" * 10))
    elif kind == "root is a file":
        secret.write_bytes(b"")
        serve(monkeypatch, b"x" * 10)
    elif kind == "md5":
        serve(monkeypatch, b"not the archive")
    else:
        _serve_an_escaping_archive(release, monkeypatch)
    with pytest.raises(CamlibError) as info:
        download_cifar10(secret / "inner" if kind == "root is a file" else secret)
    assert "srv-secret-root" not in str(info.value) and str(tmp_path) not in str(info.value), str(info.value)
