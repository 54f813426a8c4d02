"""Tests of camlib.batch (``python -m camlib.batch``): the table's numbers against compute_cams and
camlib.metrics, run.json, resuming after a kill, bad images and bad arguments, checkpoints, and the Ray engine against
the local one (a local Ray with 2 CPUs started here).

Runs use a few dozen real CIFAR-10 test images, the bundled ResNet-20 and one torch thread; everything is written
under ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from helpers.pickles import WritesMarker
from PIL import Image

import camlib.batch.job as job_module
from camlib.batch import BATCH_METRICS, TABLE_SCHEMA, main, parse_args, read_batch_table, run_batch
from camlib.batch.files import confined, read_capped
from camlib.batch.job import read_batch_map, read_run_record
from camlib.cam import compute_cam_grid, layer_magnitudes
from camlib.cifar import CLASS_NAMES, load_cifar10
from camlib.errors import ImageTooLargeError, InputError
from camlib.metrics import confidence_change, deletion_insertion
from camlib.models import load_model, prepare_batch
from camlib.prediction_cache import weights_digest
from camlib.storage import write_durably
from ui.text import escape

DATA = Path(__file__).resolve().parents[2] / "shared/data/cifar10"
BUNDLED_WEIGHTS = Path(__file__).resolve().parents[1] / "models/cifar10_resnet20/model.safetensors"
IMAGES = 24
METHODS = ("gradcam", "gradcam++")
LAYERS = ("layer2", "layer3")
BASE = [
    "--cifar10", "test", "--data", str(DATA), "--limit", str(IMAGES), "--shard-size", "10", "--batch-size", "8",
    "--methods", ",".join(METHODS), "--layers", ",".join(LAYERS), "--threads", "1", "--workers", "0",
]  # fmt: skip

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared CIFAR-10 image-folder copy is not at {DATA}")
pytestmark = [needs_data, pytest.mark.usefixtures("one_torch_thread")]


def _run(out: Path, *extra: str, args: list[str] = BASE):
    return run_batch(parse_args([*args, "--out", str(out), *extra]), progress=False)


def _maps(out: Path, table: pa.Table) -> np.ndarray:
    """Every row's map, ``float16 (rows, 32, 32)``, from the shard files the table names."""
    files = {path: np.load(out / path, allow_pickle=False) for path in set(table["map_path"].to_pylist())}
    return np.stack([files[p][i] for p, i in zip(table["map_path"].to_pylist(), table["map_index"].to_pylist())])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted local run over 24 images (3 shards), 2 methods x 2 layers: the table the others must equal."""
    out = tmp_path_factory.mktemp("reference")
    summary = _run(out)
    assert (summary.images, summary.rows, summary.shards, summary.skipped) == (IMAGES, IMAGES * 4, 3, 0)
    return out


def test_rows_and_maps_equal_compute_cams_on_the_same_images(reference):
    table = read_batch_table(reference)
    assert table.schema == TABLE_SCHEMA  # no metric requested: no metric column
    data = load_cifar10(DATA, "test", limit=IMAGES)
    loaded = load_model("cifar10_resnet20", device=torch.device("cpu"))
    x = prepare_batch(data.images, loaded.spec.preprocessing)
    grid = compute_cam_grid(loaded.model, x, LAYERS, METHODS)
    rows = table.to_pylist()
    assert [(r["position"], r["method"], r["layer"]) for r in rows] == [
        (k, m, layer) for k in range(IMAGES) for m in METHODS for layer in LAYERS
    ]
    maps = _maps(reference, table)
    assert maps.dtype == np.float16 and maps.shape == (IMAGES * 4, 32, 32)
    probabilities = grid["gradcam"].probabilities
    for row, stored in zip(rows, maps):
        k, result = row["position"], grid[row["method"]]
        expected = result.maps[row["layer"]][k]
        np.testing.assert_allclose(stored.astype(np.float32), expected, atol=1e-3, rtol=0)  # float16 rounding
        assert row["error"] is None and row["image_id"] == f"test/{k:05d}"
        assert row["label"] == data.labels[k] and row["label_name"] == CLASS_NAMES[data.labels[k]]
        assert row["predicted"] == probabilities[k].argmax() == row["class_idx"] == result.class_idx[k]
        assert row["probability"] == pytest.approx(probabilities[k].max(), abs=1e-5)
        assert row["class_probability"] == pytest.approx(row["probability"], abs=1e-6)
        assert row["peak"] == pytest.approx(layer_magnitudes(result)[row["layer"]][k], rel=1e-4)
        assert row["degenerate"] == result.degenerate[row["layer"]][k]
        assert expected[row["peak_y"], row["peak_x"]] == pytest.approx(expected.max(), abs=1e-5)  # the map's peak
        assert row["png_path"] is None  # no --png


def test_run_json_records_settings_versions_and_the_model_sha256(reference):
    record = json.loads((reference / "run.json").read_text())
    loaded = load_model("cifar10_resnet20", device=torch.device("cpu"))
    assert record["model"]["sha256"] == weights_digest(loaded.model)
    assert record["model"]["key"] == "cifar10_resnet20" and record["model"]["classes"] == list(CLASS_NAMES)
    settings = record["settings"]
    assert settings["methods"] == list(METHODS) and settings["layers"] == list(LAYERS)
    assert (settings["cifar10"], settings["limit"], settings["shard_size"], settings["target"]) == (
        "test",
        IMAGES,
        10,
        "predicted",
    )
    assert {"python", "torch", "torchvision", "numpy", "pyarrow"} <= record["versions"].keys()
    assert record["versions"]["torch"] == torch.__version__
    assert record["inputs"]["images"] == IMAGES and record["inputs"]["shards"] == 3
    assert record["status"] == "finished" and record["rows"] == IMAGES * 4 and record["error_images"] == 0
    assert record["runs"][-1]["engine"] == "local" and record["runs"][-1]["images"] == IMAGES


def test_resume_after_a_kill_loses_no_shard_and_duplicates_no_row(reference, tmp_path, monkeypatch):
    real_write = job_module.pq.write_table
    calls = []

    def killed_on_the_third_table(table, path, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # shard 2's maps are written, its table is not: the kill lands mid-shard
            raise KeyboardInterrupt
        real_write(table, path, **kwargs)

    monkeypatch.setattr(job_module.pq, "write_table", killed_on_the_third_table)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)
    monkeypatch.setattr(job_module.pq, "write_table", real_write)
    assert sorted(p.name for p in (tmp_path / "table").glob("part-*.parquet")) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    finished = {name: (tmp_path / "table" / name).read_bytes() for name in ("part-00000.parquet", "part-00001.parquet")}
    summary = _run(tmp_path)
    assert (summary.skipped, summary.shards, summary.rows) == (2, 3, IMAGES * 4)
    for name, content in finished.items():  # finished shards are not redone
        assert (tmp_path / "table" / name).read_bytes() == content
    table = read_batch_table(tmp_path)
    keys = list(zip(*(table[c].to_pylist() for c in ("image_id", "method", "layer"))))
    assert len(keys) == len(set(keys)) == IMAGES * 4
    assert table.equals(read_batch_table(reference))
    np.testing.assert_array_equal(_maps(tmp_path, table), _maps(reference, read_batch_table(reference)))
    assert json.loads((tmp_path / "run.json").read_text())["runs"][-1]["shards_pending"] == 1

    # A rerun with another setting is refused before any work, as camlib.train refuses one.
    with pytest.raises(InputError, match="--methods"):
        _run(tmp_path, "--methods", "layercam")


def _write_folder(root: Path) -> None:
    images = load_cifar10(DATA, "test", limit=10).images  # one per class, in class order
    for label in (3, 5):  # cat, dog
        folder = root / CLASS_NAMES[label]
        folder.mkdir(parents=True)
        Image.fromarray(images[label]).save(folder / "a.png")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")


def test_a_bad_image_becomes_an_error_row_and_the_job_carries_on(tmp_path):
    _write_folder(tmp_path / "images")
    out = tmp_path / "out"
    args = ["--images", str(tmp_path / "images"), "--class", "true", "--methods", "gradcam", "--threads", "1"]
    summary = _run(out, "--png", "--workers", "1", args=args)
    assert (summary.images, summary.rows, summary.errors) == (3, 3, 1)
    rows = {row["image_id"]: row for row in read_batch_table(out).to_pylist()}
    assert list(rows) == ["cat/a.png", "cat/broken.jpg", "dog/a.png"]
    broken = rows["cat/broken.jpg"]
    assert broken["error"].startswith("InvalidImageError") and broken["label"] == 3
    assert broken["map_path"] is None and broken["predicted"] is None and broken["png_path"] is None
    for name, label in (("cat/a.png", 3), ("dog/a.png", 5)):
        row = rows[name]
        assert row["error"] is None and row["label"] == label and row["class_idx"] == label  # --class true
        png = Image.open(out / row["png_path"])
        assert png.size == (32, 32) and png.mode == "RGB"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "gradcam,nosuchcam"], "--methods: unknown nosuchcam"),
        (["--metrics", "accuracy"], "--metrics: unknown accuracy"),
        (["--class", "10"], "--class 10 is not a class"),
        (["--class", "best"], "--class must be"),
        (["--layers", "layer9"], "layer9"),
        (["--shard-size", "0"], "--shard-size must be at least 1"),
        (["--engine", "ray", "--workers", "0"], "--engine ray needs --workers"),
    ],
)
def test_bad_arguments_stop_with_one_error_line_before_any_work(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main([*BASE, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not out.exists()


def test_the_ray_engine_without_ray_is_an_error_line_before_any_work(tmp_path, capsys, monkeypatch):
    real_find_spec = job_module.importlib.util.find_spec
    monkeypatch.setattr(job_module.importlib.util, "find_spec", lambda n: None if n == "ray" else real_find_spec(n))
    assert main([*BASE, "--out", str(tmp_path / "out"), "--engine", "ray", "--workers", "2"]) == 2
    assert capsys.readouterr().err == "error: --engine ray needs Ray: pip install -r requirements-ray.txt\n"
    assert not (tmp_path / "out").exists()


def test_class_true_needs_labels(tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(flat / "x.png")
    assert main(["--images", str(flat), "--class", "true", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: --class true needs a label for every image")


def test_a_checkpoint_gives_the_registry_models_table_and_a_pickle_is_refused(reference, tmp_path, capsys):
    from safetensors.torch import load_file

    state = load_file(BUNDLED_WEIGHTS)
    checkpoint = tmp_path / "trained.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}, checkpoint)
    _run(tmp_path / "out", "--checkpoint", str(checkpoint))
    assert read_batch_table(tmp_path / "out").equals(read_batch_table(reference))
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["model"]["sha256"] == json.loads((reference / "run.json").read_text())["model"]["sha256"]
    assert record["settings"]["checkpoint"] == str(checkpoint.resolve())

    marker = tmp_path / "unpickled"
    torch.save({"state_dict": state, "extra": WritesMarker(marker)}, tmp_path / "evil.pt")
    assert main([*BASE, "--out", str(tmp_path / "evil"), "--checkpoint", str(tmp_path / "evil.pt")]) == 2
    assert capsys.readouterr().err.startswith("error: Only safetensors / weights-only checkpoints are accepted")
    assert not marker.exists() and not (tmp_path / "evil").exists()


def test_metric_columns_equal_camlib_metrics(tmp_path):
    args = [*BASE[: BASE.index("--limit")], "--limit", "4", "--methods", "gradcam", "--layers", "layer3"]
    _run(tmp_path, "--metrics", "deletion_auc,insertion_auc,confidence_change", "--threads", "1", args=args)
    table = read_batch_table(tmp_path)
    assert table.column_names[-4:] == ["deletion_auc", "insertion_auc", "confidence_change", "error"]
    loaded = load_model("cifar10_resnet20", device=torch.device("cpu"))
    x = prepare_batch(load_cifar10(DATA, "test", limit=4).images, loaded.spec.preprocessing)
    result = compute_cam_grid(loaded.model, x, ["layer3"], ["gradcam"])["gradcam"]
    maps, classes = result.maps["layer3"], result.class_idx
    curves = deletion_insertion(loaded.model, x, maps, classes)
    np.testing.assert_allclose(table["deletion_auc"].to_numpy(), curves.deletion_auc, atol=1e-6)
    np.testing.assert_allclose(table["insertion_auc"].to_numpy(), curves.insertion_auc, atol=1e-6)
    change = confidence_change(loaded.model, x, maps, classes)
    np.testing.assert_allclose(table["confidence_change"].to_numpy(), change, atol=1e-6)
    assert set(BATCH_METRICS) >= {"deletion_auc", "road", "confidence_drop"}


ACTOR_PROBE = """
import sys, tempfile
from camlib.batch import parse_args
from camlib.batch.job import _prepare
from camlib.batch.ray_engine import _read_shard_row, _ShardWorker

argv = sys.argv[1:] + ["--out", tempfile.mkdtemp(), "--engine", "ray", "--workers", "1"]
prepared = _prepare(parse_args(argv))  # the driver's checks and dry run
row = {"shard": 0, "pixels": prepared.pixels[prepared.job.positions(0).start : prepared.job.positions(0).stop]}
read = _read_shard_row(row, prepared.job)  # what the read stage hands an actor
worker = _ShardWorker(prepared.job, prepared.checkpoint)  # an actor's start and one shard, without Ray
done = worker({key: [value] for key, value in read.items()})
assert int(done["images"][0]) == 10, done
print(" ".join(sorted(name for name in sys.modules if name.split(".")[0] in {"albumentations", "streamlit", "skimage"}
                      or name in {"camlib.metrics", "camlib.augment", "scipy.stats", "ui"})))
"""


@pytest.mark.slow
def test_an_actor_imports_no_metric_augmentation_or_app_module_a_job_does_not_use():
    """A Ray actor's start is mostly imports: a job without --metrics must not pay for camlib.metrics (scipy.stats,
    scikit-image: seconds per actor), nor the Lab's Albumentations or the app's Streamlit (a fresh process: sys.modules
    after the driver's dry run, one shard's read stage, an actor's __init__ and its first shard)."""
    argv = ["--cifar10", "test", "--data", str(DATA), "--limit", "10", "--shard-size", "10", "--threads", "1"]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", ACTOR_PROBE, *argv],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [], f"imported without need: {done.stdout}"


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own settings, read by Ray
def test_the_ray_engine_writes_the_local_engines_table(reference, tmp_path, local_ray):
    summary = _run(tmp_path, "--engine", "ray", "--workers", "2")
    assert (summary.rows, summary.skipped, summary.errors) == (IMAGES * 4, 0, 0)
    assert local_ray.is_initialized()  # the test's Ray was used, not shut down by the job
    table, expected = read_batch_table(tmp_path), read_batch_table(reference)
    assert table.equals(expected)
    np.testing.assert_array_equal(_maps(tmp_path, table), _maps(reference, expected))
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["runs"][-1]["engine"] == "ray" and record["versions"]["ray"] == local_ray.__version__
    assert pc.all(pc.is_null(table["error"])).as_py()


def test_the_misclassification_page_opens_a_batch_table(reference, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CAMLIB_BATCH_ROOTS", str(reference.parent))  # the folders visitors may open

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=300)
    at.switch_page("app_pages/misclassifications.py").run()
    at.radio[0].set_value("A batch table").run()
    batch_out = next(t for t in at.text_input if t.label.startswith("Batch output directory"))
    batch_out.input(str(reference)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error
    table = read_batch_table(reference).to_pandas()
    cells = table[(table["method"] == METHODS[0]) & (table["layer"] == LAYERS[0])]
    accuracy = (cells["label"] == cells["predicted"]).mean()
    assert any(f"**Accuracy {accuracy:.2%}** on {IMAGES} labelled images." == m.value for m in at.markdown)
    wrong = cells[cells["label"] != cells["predicted"]]
    captions = [caption for image in at.image for caption in image.captions]
    assert captions == [
        f"{escape(r.image_id)}: {CLASS_NAMES[r.label]} → {r.predicted_name} ({r.probability:.0%})"
        for r in wrong.head(12).itertuples()
    ]
    assert len(at.get("plotly_chart")) == 2  # confusion matrix and per-class accuracy

    at.text_input(key=batch_out.key).input(str(tmp_path)).run()  # not a batch job's output: an error, no exception
    assert not at.exception and escape("no readable run.json") in at.error[0].value


def test_a_list_file_with_labels_and_a_missing_image(tmp_path):
    _write_folder(tmp_path / "images")
    listing = tmp_path / "images.txt"
    listing.write_text("# relative to this file\nimages/dog/a.png\tdog\nimages/gone.png\nimages/cat/a.png\t3\n")
    summary = _run(tmp_path / "out", args=["--list", str(listing), "--methods", "gradcam", "--threads", "1"])
    assert (summary.images, summary.errors) == (3, 1)
    rows = read_batch_table(tmp_path / "out").to_pylist()
    assert [(r["image_id"], r["label"]) for r in rows] == [
        ("images/dog/a.png", 5),
        ("images/gone.png", None),
        ("images/cat/a.png", 3),
    ]
    assert rows[1]["error"].startswith("FileNotFoundError") and rows[0]["error"] is None


def test_the_dataset_faithfulness_table_reads_a_batch_tables_metrics(tmp_path, capsys, monkeypatch):
    """benchmarks/bench_faithfulness.py --table prints the per-cell means from the job's metric columns
    instead of recomputing them."""
    args = [*BASE[: BASE.index("--limit")], "--limit", "4", "--methods", "gradcam", "--layers", "layer2,layer3"]
    _run(tmp_path, "--metrics", "deletion_auc,insertion_auc,road", "--threads", "1", args=args)
    frame = read_batch_table(tmp_path).to_pandas()
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_faithfulness

    capsys.readouterr()
    bench_faithfulness.from_batch_table(str(tmp_path))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith(": 4 images, 2 cells")
    rows = [line for line in printed if line.startswith("| ") and line.split("|")[3].strip() in LAYERS]
    assert len(rows) == 2
    for line in rows:
        layer, deletion = line.split("|")[3].strip(), line.split("|")[4].strip()
        expected = frame[frame["layer"] == layer]["deletion_auc"].mean()
        assert deletion.startswith(f"{expected:.3f} ± ")
    with pytest.raises(SystemExit, match="computed no"):
        other = tmp_path / "no_metrics"
        _run(other, args=args)
        bench_faithfulness.from_batch_table(str(other))


# --- files: sizes before bytes, durable writes, torn parts, confined paths (rows 79 and 80) ----------------------


def _sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space (a hole): a multi-GB input at the cost of a stat."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.truncate(size)
    return path


_IMPORTS = """
import sys
from camlib.batch.shard import _Item, _load_view
from camlib.models import MODELS
"""
_VIEW_OF_A_SPARSE_FILE = """
view, error = _load_view(_Item("big.png", sys.argv[1], None, None), None, MODELS["cifar10_resnet20"].preprocessing)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024)
print(error)
"""


@pytest.mark.slow
@pytest.mark.bad_input(79)
def test_a_multi_gb_input_image_is_refused_from_its_size_in_flat_memory(tmp_path):
    """A 3 GB file among the input images is an error row from its stat: the peak memory of reading it, measured in
    a fresh interpreter (ru_maxrss after the imports), stays far below its size (the whole file was read before)."""
    from helpers.memory import RSS_BASELINE, run_python

    big = _sparse(tmp_path / "big.png", 3 * 2**30)
    peak_mb, error = run_python(_IMPORTS + RSS_BASELINE + _VIEW_OF_A_SPARSE_FILE, big).strip().splitlines()
    assert error == "ImageTooLargeError: the file is too large (3.2 GB > 21.0 MB)"
    assert float(peak_mb) < 20  # MB above the baseline; reading the file would be 3,072 MB


@pytest.mark.bad_input(79)
def test_oversized_inputs_of_every_kind_stop_or_become_error_rows_before_being_read(tmp_path, capsys):
    """The family: an image in the folder (an error row, the job carries on), a --checkpoint over the checkpoint cap,
    a --list file over its cap, an earlier run.json over its cap: each is refused from its size."""
    _write_folder(tmp_path / "images")
    _sparse(tmp_path / "images" / "cat" / "huge.png", 3 * 2**30)
    args = ["--images", str(tmp_path / "images"), "--methods", "gradcam", "--threads", "1", "--workers", "0"]
    summary = _run(tmp_path / "out", args=args)
    rows = {row["image_id"]: row["error"] for row in read_batch_table(tmp_path / "out").to_pylist()}
    assert (summary.images, summary.errors) == (4, 2)
    assert rows["cat/huge.png"] == "ImageTooLargeError: the file is too large (3.2 GB > 21.0 MB)"
    assert rows["cat/a.png"] is None and rows["dog/a.png"] is None

    checkpoint = _sparse(tmp_path / "big.safetensors", 3 * 2**30)
    assert main([*args, "--out", str(tmp_path / "c"), "--checkpoint", str(checkpoint)]) == 2
    assert "is too large (3.2 GB > 629.1 MB)" in capsys.readouterr().err
    listing = _sparse(tmp_path / "list.txt", 2**30)
    listed = ["--list", str(listing), "--methods", "gradcam", "--threads", "1", "--out", str(tmp_path / "l")]
    assert main(listed) == 2
    assert "--list" in (err := capsys.readouterr().err) and "is too large (1.1 GB > 67.1 MB)" in err
    _sparse(tmp_path / "out" / "run.json", 2**30)
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert "run.json is too large (1.1 GB > 16.8 MB)" in capsys.readouterr().err


@pytest.mark.bad_input(79)
def test_a_fifo_or_a_directory_is_refused_without_blocking(tmp_path):
    """A FIFO (named .png in a --list, or standing for run.json) would block a plain open() until a writer came."""
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "folder.png").mkdir()
    outcome: list[object] = []
    reader = threading.Thread(target=lambda: outcome.append(_read_refused(tmp_path / "pipe.png")), daemon=True)
    reader.start()
    reader.join(10)
    assert outcome == ["the file is not a regular file"]
    with pytest.raises(IsADirectoryError):
        read_capped(tmp_path / "folder.png", 10, "the file")


def _read_refused(path: Path) -> str:
    with pytest.raises(ImageTooLargeError) as info:
        read_capped(path, 10, "the file", ImageTooLargeError)
    return str(info.value)


def _tear(kind: str, out: Path) -> None:
    """Damage shard 1 of a finished job as a crash, a power loss or a stray file can."""
    part = out / "table" / "part-00001.parquet"
    data = part.read_bytes()
    if kind == "zero-bytes":
        part.write_bytes(b"")
    elif kind == "cut-short":
        part.write_bytes(data[: len(data) // 2])
    elif kind == "footer-garbage":
        part.write_bytes(data[:-12] + b"\xff" * 8 + data[-4:])  # the footer length and the end magic kept
    elif kind == "other-columns":
        pq.write_table(pa.table({"image_id": ["x"], "position": [10]}), part)
    elif kind == "fewer-rows":
        table = pq.read_table(part)
        pq.write_table(table.slice(0, table.num_rows - 4), part)
    elif kind == "maps-cut-short":
        maps = out / "maps" / "shard-00001.npy"
        maps.write_bytes(maps.read_bytes()[:200])


TEARS = ["zero-bytes", "cut-short", "footer-garbage", "other-columns", "fewer-rows", "maps-cut-short"]


@pytest.mark.bad_input(79)
@pytest.mark.parametrize("kind", TEARS)
def test_a_torn_shard_is_a_typed_error_to_readers_and_is_redone_on_rerun(reference, tmp_path, kind):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    _tear(kind, out)
    if kind == "maps-cut-short":
        row = read_batch_table(out).filter(pc.equal(read_batch_table(out)["shard"], 1)).to_pylist()[0]
        with pytest.raises(InputError, match="cannot be read"):
            read_batch_map(out, row["map_path"], row["map_index"])
    elif kind == "fewer-rows":  # a whole Parquet file: only the job knows how many rows its shard has
        assert read_batch_table(out).num_rows == IMAGES * 4 - 4
    else:
        with pytest.raises(InputError, match="part-00001.parquet|table files have different columns"):
            read_batch_table(out)
    summary = _run(out)
    assert (summary.skipped, summary.redone, summary.rows) == (2, 1, IMAGES * 4)
    table, expected = read_batch_table(out), read_batch_table(reference)
    assert table.equals(expected)
    np.testing.assert_array_equal(_maps(out, table), _maps(reference, expected))
    redone = json.loads((out / "run.json").read_text())["runs"][-1]["shards_redone"]
    assert [entry["shard"] for entry in redone] == [1]
    assert not list((out / "table").glob(".*.tmp"))


@pytest.mark.bad_input(79)
def test_a_table_is_refused_from_what_its_footers_declare(reference, tmp_path, monkeypatch):
    """The rows and uncompressed bytes the footers declare are checked before any row is read; a table of other
    columns than a batch table's is refused by name."""
    monkeypatch.setattr(job_module, "MAX_TABLE_ROWS", IMAGES * 4 - 1)
    with pytest.raises(InputError, match="declares more than"):
        read_batch_table(reference)
    monkeypatch.undo()
    other = tmp_path / "other"
    (other / "table").mkdir(parents=True)
    pq.write_table(pa.table({"image_id": ["a"], "method": [3]}), other / "table" / "part-00000.parquet")
    with pytest.raises(InputError, match="lacks the batch table's columns position, shard"):
        read_batch_table(other)


@pytest.mark.bad_input(79)
def test_a_table_is_refused_from_the_bytes_its_rows_take_once_read(reference, tmp_path, monkeypatch):
    """Footers declare the encoded pages' sizes: rows that all reference one long dictionary string declare little
    and read as rows x its length. Their length is summed before the rows are read; the reference table is read."""
    crafted = tmp_path / "crafted"
    shutil.copytree(reference, crafted)
    part = crafted / "table" / "part-00000.parquet"
    table = pq.read_table(part)
    long_id = pa.array(["x" * 100_000] * table.num_rows)
    pq.write_table(table.set_column(table.schema.get_field_index("image_id"), "image_id", long_id), part)
    monkeypatch.setattr(job_module, "MAX_TABLE_BYTES", 2**20)
    footers = sum(pq.read_metadata(p).row_group(0).total_byte_size for p in (crafted / "table").glob("*.parquet"))
    assert footers < 2**20 < table.num_rows * 100_000  # the premise: the footers alone would let it through
    with pytest.raises(InputError, match=r"holds \d\.\d MB once read, more than 1\.0 MB"):
        read_batch_table(crafted)
    assert read_batch_table(reference).num_rows == IMAGES * 4
    pq.write_table(table.append_column("notes", pa.array(["x"] * table.num_rows)), part)
    with pytest.raises(InputError, match="has columns no batch table holds: notes"):
        read_batch_table(crafted)


def test_a_rerun_trusts_whole_parts(reference, tmp_path):
    """The checks cannot fail on a good job: a rerun of a finished job redoes nothing."""
    shutil.copytree(reference, tmp_path / "out")
    summary = _run(tmp_path / "out")
    assert (summary.skipped, summary.redone) == (3, 0)


@pytest.mark.bad_input(79)
def test_writes_are_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def replace(source, target):
        calls.append(("replace", Path(target).name))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "part-00000.parquet"
    target.write_bytes(b"old")
    write_durably(target, lambda file: file.write(b"new"))
    assert calls == [("fsync", "file"), ("replace", "part-00000.parquet"), ("fsync", "dir")]
    assert target.read_bytes() == b"new"

    def fail(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_durably(target, fail)
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.bad_input(80)
@pytest.mark.parametrize(
    "stored",
    ["/etc/passwd", "../secret.png", "maps/../../secret.png", "..\\secret.png", "C:/secret.png", "a\x00b", "", 7],
)
def test_a_stored_path_that_leaves_its_folder_is_refused(tmp_path, stored):
    with pytest.raises(InputError, match="stored path"):
        confined(tmp_path, stored)


@pytest.mark.bad_input(80)
def test_a_symlink_is_followed_only_while_it_stays_in_the_folder(tmp_path):
    folder, outside = tmp_path / "job", tmp_path / "secret"
    (folder / "maps").mkdir(parents=True)
    outside.mkdir()
    (outside / "key.npy").write_bytes(b"x")
    (folder / "maps" / "real.npy").write_bytes(b"x")
    (folder / "maps" / "out.npy").symlink_to(outside / "key.npy")
    (folder / "maps" / "in.npy").symlink_to(folder / "maps" / "real.npy")
    (folder / "escape").symlink_to(outside, target_is_directory=True)
    assert confined(folder, "maps/real.npy") == (folder / "maps" / "real.npy").resolve()
    assert confined(folder, "maps/in.npy") == (folder / "maps" / "real.npy").resolve()
    for stored in ("maps/out.npy", "escape/key.npy"):
        with pytest.raises(InputError, match="leads outside its folder"):
            confined(folder, stored)


@pytest.mark.bad_input(80)
def test_a_table_file_or_run_record_that_leads_outside_its_folder_is_refused(reference, tmp_path):
    """A folder whose table file or run.json is a symlink to another job's, outside it: that job's rows and record
    are not read through it (the control: the same files copied in are read)."""
    for name in ("table/part-00000.parquet", "run.json"):
        crafted = tmp_path / name.replace("/", "-")
        shutil.copytree(reference, crafted)
        (crafted / name).unlink()
        (crafted / name).symlink_to(reference / name)
        with pytest.raises(InputError, match="leads outside its folder"):
            read_batch_table(crafted) if name.startswith("table") else read_run_record(crafted)
        (crafted / name).unlink()
        shutil.copy(reference / name, crafted / name)
        assert read_batch_table(crafted).equals(read_batch_table(reference))
        assert read_run_record(crafted) == read_run_record(reference)


@pytest.mark.bad_input(80)
def test_a_symlink_loop_is_refused_with_a_typed_error(tmp_path):
    # Python 3.11 and 3.12 raise RuntimeError resolving a loop; 3.13 resolves it partly and the read fails.
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for stored in ("a", "a/maps.npy"):
        with pytest.raises(InputError):
            read_batch_map(tmp_path, stored, 0)


@pytest.mark.bad_input(80)
def test_a_stored_map_is_read_only_from_a_whole_float16_file_in_the_folder(reference, tmp_path):
    row = read_batch_table(reference).to_pylist()[5]
    expected = np.load(reference / row["map_path"])[row["map_index"]].astype(np.float32)
    np.testing.assert_array_equal(read_batch_map(reference, row["map_path"], row["map_index"]), expected)
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "wide.npy", np.zeros((2, 4, 4), np.float32))
    np.save(tmp_path / "nan.npy", np.full((1, 4, 4), np.nan, np.float16))
    cases = [
        ("/etc/passwd", 0, "not relative"),
        ("../reference/maps/shard-00000.npy", 0, "not relative"),
        ("pickled.npy", 0, "cannot be read"),
        ("wide.npy", 0, "not float16"),
        ("nan.npy", 0, "outside \\[0, 1\\]"),
        (row["map_path"], 10**6, "has no row"),
        (row["map_path"], True, "must be an integer"),
    ]
    shutil.copytree(reference / "maps", tmp_path / "maps")
    for map_path, index, message in cases:
        with pytest.raises(InputError, match=message):
            read_batch_map(tmp_path, map_path, index)


@pytest.mark.bad_input(76)
def test_methods_whose_raw_maps_differ_in_resolution_in_one_run_equal_each_method_alone(tmp_path):
    """``--methods gradcam,sess``: SESS's raw map is at the input size, Grad-CAM's at the layer's; one run writes
    both, each equal to its own compute_cams call (within the table's float16 storage)."""
    methods, layer, images = ("gradcam", "sess"), "layer3", 2
    args = ["--cifar10", "test", "--data", str(DATA), "--limit", str(images), "--threads", "1", "--workers", "0"]
    out = tmp_path / "out"
    assert main([*args, "--methods", ",".join(methods), "--layers", layer, "--out", str(out)]) == 0
    table = read_batch_table(out)
    assert sorted(set(table["method"].to_pylist())) == sorted(methods) and table.num_rows == images * 2
    data = load_cifar10(DATA, "test", limit=images)
    loaded = load_model("cifar10_resnet20", device=torch.device("cpu"))
    x = prepare_batch(data.images, loaded.spec.preprocessing)
    alone = {method: compute_cam_grid(loaded.model, x, [layer], [method])[method] for method in methods}
    for row, cell in zip(table.to_pylist(), _maps(out, table)):
        result = alone[row["method"]]
        assert row["error"] is None and row["class_idx"] == result.class_idx[row["position"]]
        np.testing.assert_allclose(cell.astype(np.float32), result.maps[layer][row["position"]], atol=1e-3, rtol=0)
