"""Tests of ``torchrun --nproc_per_node N -m camlib.train``: DistributedDataParallel training.

Real launches: 2 CPU processes (gloo, ``CAMLIB_DEVICE=cpu`` even where CUDA exists) through
``python -m torch.distributed.run --standalone`` (a free port), each with one torch thread, on 200 CIFAR-10 training
images and 50 test images; each launch has a timeout and is killed with its whole process group when it runs over.
Bad torchrun settings are checked in-process: they must stop before any process group exists.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

import camlib.train as train_module
from camlib.cifar import load_cifar10
from camlib.cifar_models import build_cifar_model
from camlib.evaluation import predict_probabilities
from camlib.models import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared/data/cifar10"
PIPELINE_FILE = REPO / "models/cifar10_resnet20/pipeline.json"
LAUNCH_TIMEOUT_S = 300
# 200 images over 2 processes, 20 per process per step: 5 steps per epoch
SIZES = ["--limit-train", "200", "--limit-test", "50", "--batch-size", "40", "--threads", "1"]
ENV_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CAMLIB_DEVICE")

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared CIFAR-10 image-folder copy is not at {DATA}")

INTERRUPTING_SCRIPT = """
import sys

import camlib.train as train_module

real_evaluate, calls = train_module.evaluate, []


def evaluate_then_interrupt(*args, **kwargs):
    # each rank evaluates its share once per epoch: the second call ends epoch 2, before its state is saved
    calls.append(1)
    if len(calls) == 2:
        raise KeyboardInterrupt
    return real_evaluate(*args, **kwargs)


train_module.evaluate = evaluate_then_interrupt
sys.exit(train_module.main(sys.argv[1:]))
"""


def _args(out: Path, *, epochs: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        *("--arch", "resnet20", "--data", str(DATA), "--epochs", str(epochs), "--out", str(out)),
        *("--augment", str(PIPELINE_FILE), *SIZES, *extra),
    ]


def _torchrun(args: list[str], *, script: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2`` of camlib.train (or ``script``)."""
    target = ["-m", "camlib.train"] if script is None else [str(script)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target, *args]
    env = {name: value for name, value in os.environ.items() if name not in ENV_NAMES}
    env |= {"CAMLIB_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and its workers: the session this launch started
        stdout, stderr = process.communicate()
        pytest.fail(f"torchrun ran over {LAUNCH_TIMEOUT_S} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _run_in_process(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = train_module.main(argv)
    return code, err.getvalue()


def _digests(out: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (out / "digests" / f"rank{rank}.jsonl").read_text().splitlines()]


# --- a 2-epoch run on 2 processes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("ddp") / "run"
    return out, _torchrun(_args(out, extra=("--write-digests",)))


@pytest.fixture(scope="module")
def card(run: tuple[Path, subprocess.CompletedProcess[str]]) -> dict:
    out, result = run
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "model_card.json").read_text(encoding="utf-8"))


@pytest.mark.slow  # a torchrun launch
def test_run_writes_one_valid_checkpoint_and_card(run: tuple[Path, subprocess.CompletedProcess[str]], card) -> None:
    out, result = run
    assert sorted(p.name for p in out.iterdir()) == ["digests", "last.pt", "model.safetensors", "model_card.json"]
    assert sorted(p.name for p in (out / "digests").iterdir()) == ["rank0.jsonl", "rank1.jsonl"]
    loaded = load_checkpoint(
        "cifar10_resnet20", (out / "model.safetensors").read_bytes(), "model.safetensors", device=torch.device("cpu")
    )
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["world_size"]) == (2, 2)
    assert state["model"].keys() == build_cifar_model("resnet20").state_dict().keys()  # no "module." prefix
    # the card's accuracy, summed over the two ranks' halves of the test split, is the checkpoint's accuracy
    test = load_cifar10(DATA, "test", limit=50)
    predicted = predict_probabilities(loaded.model, test.images, loaded.spec.preprocessing).argmax(axis=1)
    assert float((predicted == test.labels).mean()) == pytest.approx(card["final_test_accuracy"], abs=1e-12)
    per_class = [float((predicted[test.labels == k] == k).mean()) for k in range(10)]
    assert per_class == pytest.approx(list(card["per_class_test_accuracy"].values()), abs=1e-12)
    # only rank 0 reports
    assert result.stderr.count("epoch 2/2: loss") == 1 and result.stdout.count("final test accuracy") == 1


@pytest.mark.slow  # a torchrun launch
def test_card_records_the_world_size(card: dict) -> None:
    training = card["training"]
    assert training["world_size"] == 2 and training["batch_size"] == 40 and training["device"] == "cpu"
    assert training["distributed"]["backend"] == "gloo"
    assert training["distributed"]["batch_size_per_process"] == 20
    assert card["data"]["train_images"] == 200 and card["epochs"] == 2
    assert [h["epoch"] for h in card["history"]] == [1, 2]
    assert all(0.0 <= h["train_accuracy"] <= 1.0 and np.isfinite(h["train_loss"]) for h in card["history"])


@pytest.mark.slow  # a torchrun launch
def test_ranks_hold_the_same_weights_after_every_step(run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, result = run
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = _digests(out, 0), _digests(out, 1)
    steps = [(r["epoch"], r["step"]) for r in rank0 if "step" in r]
    assert steps == [(epoch, step) for epoch in (1, 2) for step in range(1, 6)]
    assert rank0 == rank1  # parameters after every step, parameters and buffers after every epoch
    parameters = [r["parameters"] for r in rank0 if "step" in r]
    assert len(set(parameters)) == len(parameters)  # every step changed the weights
    # what rank 0 saved is what both ranks held at the end
    network = build_cifar_model("resnet20")
    network.load_state_dict(load_file(str(out / "model.safetensors")))
    assert [r for r in rank0 if "state" in r][-1]["state"] == train_module._weights_digest(network, buffers=True)


# --- interruption and resume ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-process, 2-epoch run whose ranks are interrupted (KeyboardInterrupt) in the evaluation ending epoch 2."""
    folder = tmp_path_factory.mktemp("ddp_resume")
    script = folder / "interrupting_train.py"
    script.write_text(INTERRUPTING_SCRIPT, encoding="utf-8")
    out = folder / "run"
    result = _torchrun(_args(out), script=script)
    assert result.returncode != 0
    assert result.stderr.count("interrupted: run the same command again to resume") == 2, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"]
    return out


@pytest.mark.slow  # a torchrun launch
def test_resume_on_2_processes_ends_like_the_uninterrupted_run(
    interrupted: Path, run: tuple[Path, subprocess.CompletedProcess[str]], card: dict, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["world_size"]) == (1, 2)
    result = _torchrun(_args(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("resuming from epoch 1 of 2") == 1 and "epoch 1/2: loss" not in result.stderr
    resumed, straight = load_file(str(out / "model.safetensors")), load_file(str(run[0] / "model.safetensors"))
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[key], straight[key]) for key in resumed)
    resumed_card = json.loads((out / "model_card.json").read_text(encoding="utf-8"))
    for ours, theirs in zip(resumed_card["history"], card["history"], strict=True):
        for key in ("train_loss", "train_accuracy", "test_accuracy", "lr"):
            assert ours[key] == theirs[key], key


@pytest.mark.slow  # a torchrun launch
def test_a_2_process_state_is_not_resumed_by_1_process(
    interrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    code, err = _run_in_process(_args(out))
    assert code == 2
    assert err.startswith("error: ") and "processes 2 -> 1" in err and "--nproc_per_node" in err
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"]


# --- each rank's share of an epoch ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thirty_images():
    return load_cifar10(DATA, "train", limit=30)


def _share(data, epoch: int, rank: int | None, world_size: int = 2) -> tuple[np.ndarray, int]:
    config = train_module.TrainConfig("resnet20", str(DATA), None, 2, "unused", seed=3)
    distributed = None if rank is None else train_module._Distributed(rank, rank, world_size, torch.device("cpu"))
    return train_module._epoch_share(SimpleNamespace(config=config, distributed=distributed), epoch, data)


def test_ranks_share_each_epoch_and_draw_their_own_augmentations(thirty_images) -> None:
    def share(epoch: int, rank: int | None, world_size: int = 2) -> tuple[np.ndarray, int]:
        return _share(thirty_images, epoch, rank, world_size)

    (order0, seed0), (order1, seed1) = share(0, 0), share(0, 1)
    assert len(order0) == len(order1) == 15
    assert sorted([*order0, *order1]) == list(range(30))  # the two shares partition the split
    assert seed0 != seed1  # explicit per-rank augmentation seeds
    assert share(0, 0)[1] == seed0 and np.array_equal(share(0, 0)[0], order0)  # and reproducible
    next_epoch, next_seed = share(1, 0)
    assert not np.array_equal(next_epoch, order0) and next_seed != seed0  # set_epoch: a new order each epoch
    # one process without torchrun: the order and seed of the single-process trainer, as before
    order, seed = share(1, None)
    assert np.array_equal(order, np.random.default_rng([3, 1]).permutation(30)) and seed == 3 * 1009 + 1
    # 3 processes on 30 images: 10 each; on 4: DistributedSampler pads to 8 each
    assert len(share(0, 2, world_size=3)[0]) == 10 and len(share(0, 3, world_size=4)[0]) == 8


# --- bad torchrun settings: one clear line, before any process group -------------------------------------------------

TORCHRUN_ENV = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
BAD_SETTINGS = {
    "RANK alone": ({"RANK": "0"}, [], "RANK set but not WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT"),
    "no MASTER_PORT": ({**TORCHRUN_ENV, "MASTER_PORT": ""}, [], "set but not MASTER_PORT: launch with torchrun"),
    "WORLD_SIZE not a number": ({**TORCHRUN_ENV, "WORLD_SIZE": "two"}, [], "WORLD_SIZE='two' is not a non-negative"),
    "RANK past WORLD_SIZE": ({**TORCHRUN_ENV, "RANK": "2"}, [], "RANK=2, LOCAL_RANK=0 and WORLD_SIZE=2 do not fit"),
    "CAMLIB_DEVICE names one GPU": (
        {**TORCHRUN_ENV, "CAMLIB_DEVICE": "cuda:1"},
        [],
        "CAMLIB_DEVICE='cuda:1': under torchrun each process uses cuda:LOCAL_RANK or the CPU",
    ),
    "more processes than GPUs": (
        {**TORCHRUN_ENV, "RANK": "5", "LOCAL_RANK": "5", "WORLD_SIZE": "8", "CAMLIB_DEVICE": "cuda"},
        [],
        "LOCAL_RANK=5, but this machine has",
    ),
    "batch not divisible": (
        {**TORCHRUN_ENV, "CAMLIB_DEVICE": "cpu"},
        ["--batch-size", "25"],
        "--batch-size 25 must be a multiple of the number of processes (2)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_torchrun_settings_stop_before_any_process_group(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, extra, message = BAD_SETTINGS[case]
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def no_process_group(*_args, **_kwargs):
        raise AssertionError("a process group was created although the settings are invalid")

    monkeypatch.setattr(dist, "init_process_group", no_process_group)
    out = tmp_path / "out"
    code, err = _run_in_process(_args(out, extra=tuple(extra)))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not out.exists()


@pytest.mark.slow
def test_bad_batch_size_under_torchrun_is_a_clear_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _torchrun(_args(out, extra=("--batch-size", "25")))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    # each process stops with the same line (torchrun may end the second one before it prints); nothing hangs
    expected = "error: --batch-size 25 must be a multiple of the number of processes (2): each process takes an equal"
    assert 1 <= len(errors) <= 2 and all(line.startswith(expected) for line in errors), result.stderr[-3000:]
    assert not out.exists()
