"""Tests of camlib.train (CIFAR-10 training CLI) and of the project's bundled CIFAR-10 ResNet-20 checkpoint.

Training runs use a few hundred real CIFAR-10 images and one torch thread; nothing is written outside ``tmp_path``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import random
import shutil
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import camlib.train as train_module
from camlib.augment import (
    CIFAR10_TRAIN_PIPELINE,
    Pipeline,
    PipelineStep,
    augment_image,
    build_pipeline,
    pick_references,
    pipeline_to_dict,
    pipeline_to_json,
)
from camlib.cifar import CLASS_NAMES, load_cifar10
from camlib.cifar_models import build_cifar_model
from camlib.errors import CheckpointError
from camlib.evaluation import predict_probabilities
from camlib.models import MODELS, load_checkpoint, load_model, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared/data/cifar10"
PIPELINE_FILE = REPO / "models/cifar10_resnet20/pipeline.json"
BUNDLED_WEIGHTS = REPO / "models/cifar10_resnet20/model.safetensors"
BUNDLED_CARD = REPO / "models/cifar10_resnet20/model_card.json"
CPU = torch.device("cpu")

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared CIFAR-10 image-folder copy is not at {DATA}")
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning"),
]

SMALL = ["--limit-train", "300", "--limit-test", "100", "--batch-size", "64", "--threads", "1"]
TINY = ["--limit-train", "100", "--limit-test", "50", "--batch-size", "20", "--threads", "1"]


def _args(
    out: Path, *, epochs: int = 1, arch: str = "resnet20", extra: list[str] = TINY, augment: Path | None = PIPELINE_FILE
) -> list[str]:
    args = ["--arch", arch, "--data", str(DATA), "--epochs", str(epochs), "--out", str(out), *extra]
    return args + (["--augment", str(augment)] if augment is not None else [])


def _set(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with the value after ``flag`` replaced."""
    args[args.index(flag) + 1] = value
    return args


def _run(argv: list[str]) -> tuple[int, str]:
    """``main(argv)``'s exit code and what it wrote to stderr (tqdm included)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = train_module.main(argv)
    return code, err.getvalue()


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args, **_kwargs):
        raise AssertionError("training started although the arguments are invalid")

    monkeypatch.setattr(train_module, "augment_epoch", fail)


# --- a full (tiny) training run ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, one_torch_thread) -> tuple[Path, int, str]:
    if not DATA.is_dir():
        pytest.skip(f"the shared CIFAR-10 image-folder copy is not at {DATA}")
    out = tmp_path_factory.mktemp("train") / "run"
    code, err = _run(_args(out, extra=SMALL))
    return out, code, err


@pytest.fixture(scope="module")
def card(trained: tuple[Path, int, str]) -> dict:
    out, code, err = trained
    assert code == 0, err[-2000:]
    return json.loads((out / "model_card.json").read_text(encoding="utf-8"))


def test_one_epoch_run_succeeds_and_writes_its_files(trained: tuple[Path, int, str]) -> None:
    out, code, err = trained
    assert code == 0, err[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["last.pt", "model.safetensors", "model_card.json"]
    assert "epoch 1/1: loss" in err


def test_weights_are_safetensors_with_the_architecture_keys(trained: tuple[Path, int, str]) -> None:
    out, code, _ = trained
    assert code == 0
    state = load_file(str(out / "model.safetensors"))
    expected = build_cifar_model("resnet20").state_dict()
    assert state.keys() == expected.keys()
    assert all(state[k].shape == v.shape and state[k].dtype == v.dtype for k, v in expected.items())
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_card_describes_the_run(card: dict) -> None:
    assert card["architecture"] == "resnet20"
    assert card["parameters"] == sum(p.numel() for p in build_cifar_model("resnet20").parameters()) == 272_474
    assert card["epochs"] == 1
    assert card["classes"] == list(CLASS_NAMES)
    for key in ("final_test_accuracy", "best_test_accuracy"):
        assert isinstance(card[key], float) and 0.0 <= card[key] <= 1.0
    assert len(card["history"]) == 1
    epoch = card["history"][0]
    assert epoch["epoch"] == 1
    assert card["best_test_accuracy"] == max(h["test_accuracy"] for h in card["history"])
    assert card["final_test_accuracy"] == epoch["test_accuracy"]  # one epoch: the final model is the epoch's model
    per_class = card["per_class_test_accuracy"]
    assert list(per_class) == list(CLASS_NAMES)
    assert all(0.0 <= v <= 1.0 for v in per_class.values())
    # the limited test split is balanced (10 per class), so accuracy is the mean of the per-class accuracies
    assert np.mean(list(per_class.values())) == pytest.approx(card["final_test_accuracy"], abs=1e-9)


def test_card_data_training_and_versions(card: dict) -> None:
    data = card["data"]
    assert data["source"] == "folder" and Path(data["root"]) == DATA
    assert (data["train_images"], data["test_images"]) == (300, 100)
    assert "JPEG" in data["note"]
    training = card["training"]
    assert training["batch_size"] == 64 and training["threads"] == 1 and training["seed"] == 0
    assert training["world_size"] == 1 and training["distributed"] is None  # no torchrun: one process
    assert training["time_s"] > 0
    assert training["train_images_per_s"] > 0 and training["test_images_per_s"] > 0
    assert card["history"][0]["train_images_per_s"] > 0
    versions = card["versions"]
    assert versions["torch"] == torch.__version__
    assert versions["albumentations"] == A.__version__
    assert versions["numpy"] == np.__version__
    assert {"python", "torchvision"} <= versions.keys()


@pytest.mark.filterwarnings("ignore:Argument\\(s\\) 'padding' are not valid:UserWarning")  # albumentations' own quirk
def test_card_augmentation_rebuilds_with_albumentations(card: dict) -> None:
    pipeline = train_module.load_pipeline(str(PIPELINE_FILE))
    assert card["augmentation"] == pipeline_to_dict(pipeline)
    compose = A.from_dict(card["augmentation"])
    assert isinstance(compose, A.Compose)
    assert [type(t).__name__ for t in compose.transforms] == [s.transform for s in pipeline.steps if s.enabled]
    assert json.loads(json.dumps(A.to_dict(compose)))["transform"] == card["augmentation"]["transform"]
    # the rebuilt Compose, seeded like the lab's, augments exactly like camlib's own build
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    compose.set_random_seed(pipeline.seed)
    ours = build_pipeline(pipeline)
    for image in images:
        a, b = compose(image=image)["image"], ours(image=image)["image"]
        assert a.shape == (32, 32, 3) and np.array_equal(a, b)


def test_weights_load_as_a_checkpoint_and_reproduce_the_card(trained: tuple[Path, int, str], card: dict) -> None:
    out, _, _ = trained
    loaded = load_checkpoint(
        "cifar10_resnet20", (out / "model.safetensors").read_bytes(), "model.safetensors", device=CPU
    )
    assert loaded.spec.arch == "resnet20" and loaded.class_names == CLASS_NAMES
    test = load_cifar10(DATA, "test", limit=100)
    predicted = predict_probabilities(loaded.model, test.images, loaded.spec.preprocessing).argmax(axis=1)
    # the app's preprocessing and the trainer's normalize_batch agree, so the app sees the card's accuracy
    assert float((predicted == test.labels).mean()) == pytest.approx(card["final_test_accuracy"], abs=1e-12)
    per_class = [float((predicted[test.labels == k] == k).mean()) for k in range(10)]
    assert per_class == pytest.approx(list(card["per_class_test_accuracy"].values()), abs=1e-12)


# --- interruption and resume ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory, one_torch_thread) -> tuple[Path, int, str]:
    """A 2-epoch run interrupted (Ctrl-C) during the evaluation that ends epoch 2."""
    if not DATA.is_dir():
        pytest.skip(f"the shared CIFAR-10 image-folder copy is not at {DATA}")
    out = tmp_path_factory.mktemp("resume") / "run"
    real_evaluate = train_module.evaluate
    calls = []

    def evaluate_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "evaluate", evaluate_then_interrupt)
        code, err = _run(_args(out, epochs=2))
    assert len(calls) == 2
    return out, code, err


def _state(out: Path) -> dict:
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)


def test_interrupt_exits_130_and_keeps_epoch_1(interrupted: tuple[Path, int, str]) -> None:
    out, code, err = interrupted
    assert code == 130
    assert "interrupted: run the same command again to resume" in err
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"]  # no half-finished weights or card
    state = _state(out)
    assert state["epoch"] == 1 and state["world_size"] == 1
    assert state["config"]["arch"] == "resnet20" and state["config"]["epochs"] == 2
    history = json.loads(state["history"])
    assert [h["epoch"] for h in history] == [1]
    assert state["model"].keys() == build_cifar_model("resnet20").state_dict().keys()


def test_resume_finishes_from_epoch_2(interrupted: tuple[Path, int, str], tmp_path: Path) -> None:
    source, _, _ = interrupted
    out = tmp_path / "run"
    shutil.copytree(source, out)
    saved = _state(out)
    first = json.loads(saved["history"])[0]
    code, err = _run(_args(out, epochs=2))
    assert code == 0, err[-2000:]
    assert "resuming from epoch 1 of 2" in err
    assert "epoch 1/2" not in err  # epoch 1 is not trained again
    card = json.loads((out / "model_card.json").read_text(encoding="utf-8"))
    assert [h["epoch"] for h in card["history"]] == [1, 2]
    assert card["history"][0] == first  # the first epoch's numbers are kept as they were
    assert _state(out)["epoch"] == 2
    assert card["training"]["time_s"] >= round(saved["elapsed_s"], 1)  # epoch 1's time is carried over

    # an uninterrupted 2-epoch run ends with the same weights and the same per-epoch results
    straight = tmp_path / "straight"
    code, err = _run(_args(straight, epochs=2))
    assert code == 0, err[-2000:]
    a, b = load_file(str(out / "model.safetensors")), load_file(str(straight / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    straight_card = json.loads((straight / "model_card.json").read_text(encoding="utf-8"))
    for ours, theirs in zip(card["history"], straight_card["history"]):
        for key in ("train_loss", "train_accuracy", "test_accuracy", "lr"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key


@pytest.mark.parametrize("change", [["--epochs", "3"], ["--arch", "resnet18_cifar"]])
def test_resume_state_of_another_run_is_refused(
    change: list[str], interrupted: tuple[Path, int, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _, _ = interrupted
    out = tmp_path / "run"
    shutil.copytree(source, out)
    before = (out / "last.pt").read_bytes()
    _no_training(monkeypatch)
    code, err = _run(_set(_args(out, epochs=2), *change))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "is from a different run" in lines[0] and "use another --out" in lines[0]
    assert f"{change[0]} " in lines[0]  # names the setting that differs
    assert (out / "last.pt").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"]


@needs_data
def test_resume_with_another_batch_size_trains_or_is_refused(
    interrupted: tuple[Path, int, str], tmp_path: Path
) -> None:
    source, _, _ = interrupted
    out = tmp_path / "run"
    shutil.copytree(source, out)
    # 7 steps per epoch instead of 5: either resume sensibly or refuse with one line; never a traceback
    code, err = _run(_set(_args(out, epochs=2), "--batch-size", "16"))
    assert code == 0 or (code == 2 and err.strip().splitlines()[-1].startswith("error: ")), err[-500:]


@needs_data
def test_garbage_resume_state_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"not a torch file")
    _no_training(monkeypatch)
    code, err = _run(_args(out))
    assert code == 2
    assert err.startswith("error: ") and "last.pt" in err and "weights_only" not in err


# --- bad arguments: one clear line, exit code 2, nothing trained or written -------------------------------------------


def _reversed_range_file(path: Path) -> Path:
    document = pipeline_to_dict(CIFAR10_TRAIN_PIPELINE)
    affine = next(s for s in document["augmentation_lab"]["steps"] if s["transform"] == "Affine")
    affine["params"]["scale"] = [1.1, 0.9]
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _pad_only_file(path: Path, p: float = 1.0) -> Path:
    pad = Pipeline((PipelineStep("PadIfNeeded", {"min_height": 40, "min_width": 40}, p=p),), seed=0)
    path.write_text(pipeline_to_json(pad), encoding="utf-8")
    return path


BAD_ARGUMENTS = {
    "epochs 0": (lambda tmp: {"epochs": 0}, "--epochs must be at least 1, got 0"),
    "negative epochs": (lambda tmp: {"epochs": -3}, "--epochs must be at least 1"),
    "batch size 0": (lambda tmp: {"extra": ["--batch-size", "0"]}, "--batch-size must be at least 1"),
    "tiny limit": (lambda tmp: {"extra": ["--limit-train", "5"]}, "--limit-train must be at least 10"),
    "negative seed": (lambda tmp: {"extra": ["--seed", "-1"]}, "--seed must be >= 0"),
    "missing data root": (lambda tmp: {"data": tmp / "nowhere"}, "no CIFAR-10 under"),
    "missing pipeline": (lambda tmp: {"augment": tmp / "missing.json"}, "pipeline file not found"),
    "garbage pipeline": (lambda tmp: {"augment": (tmp / "garbage.json", "{this is not json")}, "not valid JSON"),
    "not an export": (lambda tmp: {"augment": (tmp / "plain.json", '{"a": 1}')}, "not an Augmentation Lab export"),
    "reversed range": (lambda tmp: {"augment": _reversed_range_file(tmp / "reversed.json")}, "reversed range"),
    "output not 32x32": (
        lambda tmp: {"augment": _pad_only_file(tmp / "pad.json")},
        "when PadIfNeeded fire(s) it gives uint8 (40, 40, 3)",
    ),
}


@needs_data
@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_stop_before_training(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make, message = BAD_ARGUMENTS[case]
    spec = make(tmp_path)
    augment = spec.get("augment", PIPELINE_FILE)
    if isinstance(augment, tuple):
        augment[0].write_text(augment[1], encoding="utf-8")
        augment = augment[0]
    out = tmp_path / "out"
    args = _set(_args(out, epochs=spec.get("epochs", 1), augment=augment), "--data", str(spec.get("data", DATA)))
    args += spec.get("extra", [])  # argparse: the last occurrence wins
    _no_training(monkeypatch)
    code, err = _run(args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, no traceback, no progress bar
    assert lines[0].startswith("error: ") and message in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "resnet999"], "invalid choice: 'resnet999'"),
        (["--epochs", "two"], "invalid int value: 'two'"),
    ],
)
def test_argparse_errors_exit_2(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _no_training(monkeypatch)
    with pytest.raises(SystemExit) as info:
        train_module.main(_set(_args(out), *argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert not out.exists()


@needs_data
def test_pipeline_that_sometimes_changes_the_size_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, err = _run(_args(out, augment=_pad_only_file(tmp_path / "pad.json", p=0.5)))
    assert code == 2 and "32x32" in err
    assert not out.exists()


@needs_data
def test_negative_threads_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    _no_training(monkeypatch)
    threads = torch.get_num_threads()
    try:
        code, err = _run(_set(_args(out), "--threads", "-1"))
    finally:
        torch.set_num_threads(threads)
    assert code == 2 and err.startswith("error: --threads")


@needs_data
def test_out_that_is_a_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.write_text("a file", encoding="utf-8")
    _no_training(monkeypatch)
    code, err = _run(_args(out))
    assert code == 2 and err.startswith("error: ")


@needs_data
def test_a_run_of_four_steps_trains(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, err = _run(
        _args(out, extra=["--limit-train", "40", "--limit-test", "10", "--batch-size", "10", "--threads", "1"])
    )
    assert code == 0, err[-500:]


def test_parse_args_defaults(tmp_path: Path) -> None:
    config = train_module.parse_args(["--arch", "resnet20", "--data", "d", "--epochs", "3", "--out", "o"])
    assert (config.arch, config.data, config.augment, config.epochs, config.out) == ("resnet20", "d", None, 3, "o")
    assert (config.batch_size, config.lr, config.seed, config.limit_train, config.threads) == (128, 0.1, 0, None, None)


# --- augmentation per epoch -------------------------------------------------------------------------------------------


@needs_data
@pytest.mark.parametrize("transform", ["HistogramMatching", "FDA", "PixelDistributionAdaptation"])
def test_steps_that_need_a_second_image_train_on_other_training_images(transform: str) -> None:
    """The Lab exposes FDA, HistogramMatching and PixelDistributionAdaptation with a second image from the data
    source; an exported pipeline with one of them trains the same way: the second image is another training image,
    drawn as the Lab's grid draws it (camlib.augment.pick_references with the epoch's seed)."""
    images = load_cifar10(DATA, "train", limit=24).images
    order = np.arange(len(images))
    pipeline = Pipeline((PipelineStep(transform, {}, 1.0),), seed=0)
    first = train_module.augment_epoch(images, order, pipeline, seed=3)
    assert np.array_equal(first, train_module.augment_epoch(images, order, pipeline, seed=3))
    assert first.shape == images.shape and not np.array_equal(first, images)
    compose = build_pipeline(Pipeline(pipeline.steps, 3))  # the epoch's Compose, drawn image after image
    expected = [
        augment_image(compose, image, references=pick_references(images, k, 3))["image"]
        for k, image in enumerate(images)
    ]
    assert np.array_equal(first, np.stack(expected))
    train_module._check_pipeline_output(pipeline, images[0])  # the 32x32x3 check runs these steps too


@needs_data
def test_augment_epoch_is_deterministic_and_leaves_global_rngs_alone() -> None:
    images = load_cifar10(DATA, "train", limit=40).images
    order = np.random.default_rng(0).permutation(len(images))
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    first = train_module.augment_epoch(images, order, CIFAR10_TRAIN_PIPELINE, seed=7)
    again = train_module.augment_epoch(images, order, CIFAR10_TRAIN_PIPELINE, seed=7)
    other = train_module.augment_epoch(images, order, CIFAR10_TRAIN_PIPELINE, seed=8)
    assert first.shape == (40, 32, 32, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, images[order])  # it does augment
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)


@needs_data
def test_augment_epoch_follows_the_order_and_the_identity_pipeline() -> None:
    images = load_cifar10(DATA, "train", limit=20).images
    order = np.array([3, 1, 4, 1, 5])
    out = train_module.augment_epoch(images, order, Pipeline(()), seed=0)
    assert np.array_equal(out, images[order])


# --- the bundled checkpoint (models/cifar10_resnet20) ---------------------------------------------------------------

needs_bundled = pytest.mark.skipif(not BUNDLED_WEIGHTS.is_file(), reason=f"no bundled weights at {BUNDLED_WEIGHTS}")


@needs_bundled
def test_bundled_weights_are_a_small_safetensors_file() -> None:
    assert MODELS["cifar10_resnet20"].source == "project"
    assert REPO / MODELS["cifar10_resnet20"].weights_file == BUNDLED_WEIGHTS
    data = BUNDLED_WEIGHTS.read_bytes()
    assert len(data) <= 5 * 1024 * 1024
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])  # safetensors: a JSON header, then raw tensor bytes (no pickle)
    assert set(header) - {"__metadata__"} == set(build_cifar_model("resnet20").state_dict())
    state = read_checkpoint(data, BUNDLED_WEIGHTS.name)
    assert state.keys() == build_cifar_model("resnet20").state_dict().keys()


@pytest.fixture(scope="module")
def bundled_model():
    if not BUNDLED_WEIGHTS.is_file():
        pytest.skip(f"no bundled weights at {BUNDLED_WEIGHTS}")
    return load_model("cifar10_resnet20", allow_download=False, device=CPU)


@needs_data
@needs_bundled
def test_bundled_model_is_at_least_85_percent_accurate_on_a_fixed_test_subset(bundled_model, one_torch_thread) -> None:
    assert bundled_model.spec.key == "cifar10_resnet20" and not bundled_model.model.training
    subset = load_cifar10(DATA, "test", limit=1000)
    assert np.bincount(subset.labels, minlength=10).tolist() == [100] * 10  # balanced
    assert np.array_equal(subset.images, load_cifar10(DATA, "test", limit=1000).images)  # and the same every time
    probabilities = predict_probabilities(bundled_model.model, subset.images, bundled_model.spec.preprocessing)
    accuracy = float((probabilities.argmax(axis=1) == subset.labels).mean())
    assert accuracy >= 0.85, f"bundled ResNet-20 accuracy on the fixed 1000-image test subset: {accuracy:.4f}"


@pytest.mark.slow
@needs_data
@needs_bundled
@pytest.mark.skipif(not BUNDLED_CARD.is_file(), reason=f"no model card at {BUNDLED_CARD}")
def test_bundled_card_accuracy_matches_a_recomputation(bundled_model, one_torch_thread) -> None:
    card = json.loads(BUNDLED_CARD.read_text(encoding="utf-8"))
    assert card["architecture"] == "resnet20"
    test = load_cifar10(DATA, "test")
    assert len(test) == 10_000 == card["data"]["test_images"]
    probabilities = predict_probabilities(bundled_model.model, test.images, bundled_model.spec.preprocessing)
    accuracy = float((probabilities.argmax(axis=1) == test.labels).mean())
    # the same preprocessing and eval-mode forward as training's evaluation: equal up to a few float-rounding flips
    assert abs(accuracy - card["final_test_accuracy"]) <= 0.0005, (accuracy, card["final_test_accuracy"])
    assert accuracy >= 0.88, f"the goal for the bundled model is 88% on the 10,000 test images: {accuracy:.4f}"


class _TouchesMarker:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


@pytest.mark.parametrize("how", ["torch-save-payload", "payload-beside-valid-weights", "raw-pickle"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_pickled_checkpoints_are_refused_without_running(how: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    if how == "torch-save-payload":
        torch.save(_TouchesMarker(marker), buffer)
    elif how == "payload-beside-valid-weights":
        torch.save({"state_dict": build_cifar_model("resnet20").state_dict(), "extra": _TouchesMarker(marker)}, buffer)
    else:
        buffer.write(pickle.dumps(_TouchesMarker(marker), protocol=2))
    for filename in ("evil.pt", "model.pth", ""):
        with pytest.raises(CheckpointError, match="Only safetensors / weights-only checkpoints are accepted"):
            load_checkpoint("cifar10_resnet20", buffer.getvalue(), filename, device=CPU)
    assert not marker.exists()


def test_weights_only_state_dict_for_resnet20_is_accepted() -> None:
    torch.manual_seed(0)
    state = build_cifar_model("resnet20").state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    loaded = load_checkpoint("cifar10_resnet20", buffer.getvalue(), "weights.pt", device=CPU)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key])


@needs_data
def test_init_starts_from_trained_weights_and_is_recorded(trained: tuple[Path, int, str], tmp_path: Path) -> None:
    source = trained[0] / "model.safetensors"
    model = build_cifar_model("resnet20")
    info = train_module._load_init(model, str(source), "resnet20")
    for key, value in load_file(str(source)).items():
        assert torch.equal(model.state_dict()[key], value), key
    assert info["epochs"] == 1 and len(info["sha256"]) == 64

    out = tmp_path / "ft"
    code, err = _run(_args(out, extra=[*TINY, "--init", str(source), "--lr", "0.01"]))
    assert code == 0, err[-2000:]
    card = json.loads((out / "model_card.json").read_text(encoding="utf-8"))
    previous = json.loads((trained[0] / "model_card.json").read_text(encoding="utf-8"))
    assert card["initialised_from"]["file"] == "model.safetensors"
    assert card["initialised_from"]["test_accuracy"] == pytest.approx(previous["final_test_accuracy"])
    assert card["initialised_from"]["history"] == previous["history"]


@needs_data
@pytest.mark.parametrize("problem", ["missing", "other arch"])
def test_init_that_does_not_fit_is_refused(problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_training(monkeypatch)
    if problem == "missing":
        init = tmp_path / "nope.safetensors"
    else:
        from safetensors.torch import save_file

        init = tmp_path / "r18.safetensors"
        save_file({k: v.contiguous() for k, v in build_cifar_model("resnet18_cifar").state_dict().items()}, str(init))
    code, err = _run(_args(tmp_path / "out", extra=[*TINY, "--init", str(init)]))
    assert code == 2 and err.startswith("error: --init")
