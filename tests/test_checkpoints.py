"""Tests of camlib.checkpoints: the usual ways a state dict is saved load into the registry architectures, only when
exactly one reading fits (catalogue row 66), and the checkpoint size cap fits the registry;
what a file declares (record sizes, counts, storage sizes, extents) is checked before any element is read (row 69), and
only tensor kinds an architecture holds are read (row 70).

Every accepted form is checked end to end: the file's bytes go through ``camlib.models.load_checkpoint`` and the loaded
model's logits must equal the original model's exactly (``torch.equal``).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import timm.utils
import torch
import torchvision
from helpers.checkpoint_files import (
    ONE_GIB,
    Record,
    Storage,
    Tensor,
    TensorV3,
    legacy_file,
    saved,
    torch_pickle,
    torch_zip,
    zip_bomb,
    zip_bytes,
)
from helpers.models import seeded
from helpers.pickles import RunsShell, WritesMarker
from torch import nn
from torch.optim.swa_utils import AveragedModel

from camlib import checkpoints, models
from camlib.checkpoints import (
    CONTAINER_KEYS,
    MAX_CHECKPOINT_PICKLE_BYTES,
    MAX_CHECKPOINT_TENSORS,
    MAX_SAFETENSORS_HEADER,
    NOT_A_STATE_DICT,
    CheckpointReading,
    candidate_readings,
    find_reading,
    state_differences,
)
from camlib.cifar_models import build_cifar_model
from camlib.errors import CheckpointError
from camlib.models import MODELS, build_architecture, load_checkpoint, load_state_strict, read_checkpoint

CPU = torch.device("cpu")
REFUSED = "Only safetensors / weights-only checkpoints are accepted"
ARCHS = ("cifar10_resnet20", "resnet18")  # a CIFAR architecture of this project and a torchvision one
INPUT_SIDE = {"cifar10_resnet20": 32, "resnet18": 64}  # resnet18 pools adaptively: 64 px keeps the test fast


class Original:
    """A seeded model of a registry architecture (non-default BatchNorm statistics, so skipped buffers show), an input
    batch and its logits."""

    def __init__(self, key: str, seed: int = 0) -> None:
        self.key = key
        self.model = seeded(lambda: build_architecture(MODELS[key]), seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 100)
            for name, tensor in self.model.state_dict().items():
                if name.endswith("running_mean"):
                    tensor.normal_()
                elif name.endswith("running_var"):
                    tensor.uniform_(0.5, 2.0)
            side = INPUT_SIDE[key]
            self.x = torch.randn(2, 3, side, side)
        self.logits = self.logits_of(self.model)

    def logits_of(self, model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(self.x)

    def state(self) -> OrderedDict[str, torch.Tensor]:
        return self.model.state_dict()

    def assert_loads(self, data: bytes, filename: str, note: str) -> None:
        """``data`` loads into a fresh architecture with exactly the original's logits, and the spec says how."""
        loaded = load_checkpoint(self.key, data, filename, device=CPU)
        assert torch.equal(self.logits_of(loaded.model), self.logits)
        assert loaded.spec.notes == note
        assert loaded.spec.source == "checkpoint" and filename in loaded.spec.label


@pytest.fixture(scope="module", params=ARCHS)
def original(request: pytest.FixtureRequest) -> Original:
    return Original(request.param)


@pytest.fixture(scope="module")
def resnet20() -> Original:
    return Original("cifar10_resnet20")


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _prefixed(state: dict[str, torch.Tensor], prefix: str) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((prefix + key, value) for key, value in state.items())


class LightningLike(nn.Module):
    """What a LightningModule adds to the names: the attribute holding the network (``self.model = ...``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def _lightning_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """The layout of ``Trainer.save_checkpoint`` (Lightning 2.x) with plain-type entries beside ``state_dict``."""
    return {
        "epoch": 7,
        "global_step": 2800,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": state,
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 7}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.31)}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]}],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 0.01},
    }


def _training_dict(weights_key: str, state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, object]:
    """A training script's checkpoint: the weights under ``weights_key`` beside a real optimizer state and more."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return {
        weights_key: state,
        "optimizer": optimizer.state_dict(),
        "epoch": 3,
        "best_acc1": 0.71,
        "args": {"arch": "resnet", "lr": 0.1},
    }


# --- every accepted form, on both architectures --------------------------------------------------------------------

FORMS: dict[str, tuple[Callable[[nn.Module], object], str]] = {
    # name: (what is saved, given the original model; the note the loaded spec carries)
    "plain": (lambda m: m.state_dict(), "loaded from the file's top level, no prefix"),
    "compile": (
        lambda m: torch.compile(m).state_dict(),
        "loaded from the file's top level, prefix '_orig_mod.' removed",
    ),
    "dataparallel": (
        lambda m: nn.DataParallel(m).state_dict(),
        "loaded from the file's top level, prefix 'module.' removed",
    ),
    "dataparallel-of-compiled": (
        lambda m: nn.DataParallel(torch.compile(m)).state_dict(),
        "loaded from the file's top level, prefix 'module._orig_mod.' removed",
    ),
    "compiled-dataparallel": (
        lambda m: torch.compile(nn.DataParallel(m)).state_dict(),
        "loaded from the file's top level, prefix '_orig_mod.module.' removed",
    ),
    **{
        f"training-dict-{key}": (
            (lambda m, key=key: _training_dict(key, m.state_dict(), m)),
            f"loaded from checkpoint[{key!r}], no prefix",
        )
        for key in CONTAINER_KEYS
    },
    "training-dict-ddp-compiled": (
        lambda m: _training_dict("model", nn.DataParallel(torch.compile(m)).state_dict(), m),
        "loaded from checkpoint['model'], prefix 'module._orig_mod.' removed",
    ),
    "nested-container": (
        lambda m: {"model": {"state_dict": m.state_dict(), "epoch": 3}, "optimizer": {}},
        "loaded from checkpoint['model']['state_dict'], no prefix",
    ),
    "lightning": (
        lambda m: _lightning_checkpoint(LightningLike(m).state_dict()),
        "loaded from checkpoint['state_dict'], prefix 'model.' removed",
    ),
    "lightning-compiled": (
        lambda m: _lightning_checkpoint(LightningLike(torch.compile(m)).state_dict()),
        "loaded from checkpoint['state_dict'], prefix 'model._orig_mod.' removed",
    ),
    "timm-model-ema-v2": (
        lambda m: {"state_dict_ema": timm.utils.ModelEmaV2(m).state_dict(), "epoch": 1},
        "loaded from checkpoint['state_dict_ema'], prefix 'module.' removed",
    ),
    "timm-model-ema-v3": (
        lambda m: {"state_dict_ema": timm.utils.ModelEmaV3(m).state_dict(), "epoch": 1},
        "loaded from checkpoint['state_dict_ema'], prefix 'module.' removed",
    ),
    "swa-averaged-model": (
        lambda m: AveragedModel(m).state_dict(),
        "loaded from the file's top level, prefix 'module.' removed, n_averaged (AveragedModel's "
        "update counter) ignored",
    ),
}


@pytest.mark.bad_input(66)
@pytest.mark.parametrize("form", list(FORMS))
def test_each_saved_form_loads_with_the_original_logits(form: str, original: Original) -> None:
    make, note = FORMS[form]
    original.assert_loads(_saved(make(original.model)), f"{form}.pt", note)


@pytest.mark.bad_input(66)
@pytest.mark.parametrize(
    ("prefix", "note"),
    [
        ("_orig_mod.", "loaded from the file's top level, prefix '_orig_mod.' removed"),
        ("module._orig_mod.", "loaded from the file's top level, prefix 'module._orig_mod.' removed"),
        ("model.", "loaded from the file's top level, prefix 'model.' removed"),
    ],
)
def test_safetensors_with_a_prefix(prefix: str, note: str, original: Original) -> None:
    data = safetensors.torch.save({k: v.contiguous() for k, v in _prefixed(original.state(), prefix).items()})
    original.assert_loads(data, "weights.safetensors", note)


def test_compile_prefix_is_what_torch_compile_writes(resnet20: Original) -> None:
    # The forms above rely on torch's own naming, not on keys this test constructs: check that naming once.
    names = list(resnet20.state())
    assert list(torch.compile(resnet20.model).state_dict()) == ["_orig_mod." + n for n in names]
    assert list(nn.DataParallel(resnet20.model).state_dict()) == ["module." + n for n in names]
    assert list(AveragedModel(resnet20.model).state_dict()) == ["n_averaged", *("module." + n for n in names)]


def test_train_init_reads_the_same_forms(resnet20: Original, tmp_path: Path) -> None:
    from camlib import train

    path = tmp_path / "last.ckpt"
    path.write_bytes(_saved(_lightning_checkpoint(LightningLike(torch.compile(resnet20.model)).state_dict())))
    model = build_cifar_model("resnet20")
    info = train._load_init(model, str(path), "resnet20")
    assert info["file"] == "last.ckpt"
    assert torch.equal(resnet20.logits_of(model), resnet20.logits)


# --- one reading, or a refusal --------------------------------------------------------------------------------------


def test_identical_copies_are_one_reading(resnet20: Original) -> None:
    # timm saves state_dict and state_dict_ema; right after creation the EMA equals the model: not ambiguous.
    state = resnet20.state()
    checkpoint = {"state_dict": state, "state_dict_ema": _prefixed({k: v.clone() for k, v in state.items()}, "module.")}
    resnet20.assert_loads(_saved(checkpoint), "timm.pth.tar", "loaded from checkpoint['state_dict'], no prefix")


@pytest.mark.bad_input(66)
def test_two_different_fitting_readings_are_refused(resnet20: Original) -> None:
    ema = Original("cifar10_resnet20", seed=1).state()
    model = build_cifar_model("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoint = {"state_dict": resnet20.state(), "state_dict_ema": _prefixed(ema, "module."), "epoch": 9}
    with pytest.raises(CheckpointError) as info:
        load_state_strict(model, read_checkpoint(_saved(checkpoint), "timm.pth.tar"), "ResNet-20")
    assert str(info.value) == (
        "The checkpoint holds 2 different sets of weights that fit model ResNet-20: checkpoint['state_dict'], no "
        "prefix; checkpoint['state_dict_ema'], prefix 'module.' removed. Save the one you want on its own, e.g. "
        "torch.save(checkpoint['state_dict_ema'], 'weights.pt')"
    )
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # nothing was loaded


@pytest.mark.bad_input(27, 66)
def test_a_mismatch_is_still_refused_against_the_closest_reading() -> None:
    ten_classes = seeded(lambda: torchvision.models.resnet18(weights=None, num_classes=10))
    checkpoint = _training_dict("state_dict", nn.DataParallel(ten_classes).state_dict(), ten_classes)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("resnet18", _saved(checkpoint), "cifar.pt", device=CPU)
    assert str(info.value) == (
        "Checkpoint does not match model ResNet-18 (ImageNet, torchvision) (missing: none; unexpected: none; shape "
        "mismatch: fc.weight (10, 512) vs (1000, 512), fc.bias (10,) vs (1000,); read as checkpoint['state_dict'], "
        "prefix 'module.' removed)"
    )


def test_a_prefix_not_shared_by_every_key_is_not_removed(resnet20: Original) -> None:
    # A Lightning module with a second attribute holding tensors (a loss weight): no prefix is shared by every key.
    state = _prefixed(resnet20.state(), "model.") | {"criterion.weight": torch.ones(10)}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("cifar10_resnet20", _saved(_lightning_checkpoint(state)), "last.ckpt", device=CPU)
    message = str(info.value)
    assert message.startswith(
        "Checkpoint does not match model ResNet-20 (CIFAR-10, trained by this project) (missing: stem.0.weight, "
        "stem.1.weight, stem.1.bias, stem.1.running_mean, stem.1.running_var (+102 more); unexpected: "
        "model.stem.0.weight, "
    )
    assert message.endswith("(+124 more); shape mismatch: none; read as checkpoint['state_dict'], no prefix)")


def test_a_training_dict_without_weights_is_not_a_state_dict(resnet20: Original) -> None:
    model = build_cifar_model("resnet20")
    checkpoint = {
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
        "epoch": 3,
        "model": {"lr": 0.1},
        "state_dict": {"fc.weight": [1.0]},
    }
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(_saved(checkpoint), "x.pt")
    assert str(info.value) == NOT_A_STATE_DICT
    assert "state_dict, model, model_state_dict, state_dict_ema, model_ema" in NOT_A_STATE_DICT


@pytest.mark.bad_input(23, 66)
@pytest.mark.parametrize(
    "where", ["beside-the-weights", "inside-the-optimizer", "inside-the-weights", "inside-a-nested-container"]
)
def test_code_needing_pickle_in_a_training_dict_is_refused_without_side_effect(
    where: str, resnet20: Original, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    state = resnet20.state()
    checkpoint = {
        "beside-the-weights": lambda: {"state_dict": state, "scheduler": WritesMarker(marker)},
        "inside-the-optimizer": lambda: {"model": state, "optimizer": {"state": {0: RunsShell(marker)}}},
        "inside-the-weights": lambda: {"state_dict": state | {"extra": RunsShell(marker)}},
        "inside-a-nested-container": lambda: {"model": {"state_dict": state, "ema": WritesMarker(marker)}},
    }[where]()
    for filename in ("last.ckpt", "checkpoint.pth", ""):
        with pytest.raises(CheckpointError, match=REFUSED):
            load_checkpoint("cifar10_resnet20", _saved(checkpoint), filename, device=CPU)
    assert not marker.exists()


@pytest.mark.bad_input(28, 66)
def test_non_finite_weights_are_refused_in_any_container_but_optimizer_state_is_not_read(resnet20: Original) -> None:
    state = resnet20.state()
    broken = _prefixed({k: v.clone() for k, v in state.items()}, "module.")
    broken["module.fc.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"NaN or Inf values in state_dict_ema/module\.fc\.weight$"):
        read_checkpoint(_saved({"state_dict": state, "state_dict_ema": broken}), "x.pt")
    # Optimizer and callback state are never weights: an Inf there (EarlyStopping's initial best score) is fine.
    checkpoint = {"state_dict": state, "callbacks": {"EarlyStopping": {"best_score": torch.tensor(float("inf"))}}}
    resnet20.assert_loads(_saved(checkpoint), "x.pt", "loaded from checkpoint['state_dict'], no prefix")


# --- the readings themselves -------------------------------------------------------------------------------------


def _readings(checkpoint: object) -> list[tuple[tuple[str, ...], str, tuple[str, ...], list[str]]]:
    return [(r.container, r.prefix, r.dropped, list(r.state)) for r in candidate_readings(checkpoint)]


def test_candidate_readings_are_every_shared_dotted_prefix_of_every_container() -> None:
    t = torch.zeros(1)
    assert _readings({"a.b.c": t, "a.b.d": t}) == [
        ((), "", (), ["a.b.c", "a.b.d"]),
        ((), "a.", (), ["b.c", "b.d"]),
        ((), "a.b.", (), ["c", "d"]),
    ]
    assert _readings({"a.b": t, "a": t}) == [((), "", (), ["a.b", "a"])]  # a prefix never empties a key
    assert _readings({"a.b": t, "c.b": t}) == [((), "", (), ["a.b", "c.b"])]
    assert _readings({"m.w": t}) == [((), "", (), ["m.w"]), ((), "m.", (), ["w"])]
    nested = {"model": {"state_dict": {"w": t}, "epoch": 1}, "state_dict": {"v": t}, "other": {"x": t}}
    assert _readings(nested) == [(("state_dict",), "", (), ["v"]), (("model", "state_dict"), "", (), ["w"])]


def test_averaged_model_counter_is_dropped_only_in_averaged_models_layout() -> None:
    t, counter = torch.zeros(1), torch.tensor(3)
    assert _readings({"n_averaged": counter, "module.w": t}) == [
        ((), "", (), ["n_averaged", "module.w"]),
        ((), "module.", ("n_averaged",), ["w"]),
    ]
    assert _readings({"n_averaged": counter, "model.w": t}) == [((), "", (), ["n_averaged", "model.w"])]
    assert _readings({"n_averaged": torch.tensor(3.0), "module.w": t}) == [((), "", (), ["n_averaged", "module.w"])]


@pytest.mark.parametrize(
    "checkpoint",
    [
        None,
        3,
        [torch.zeros(1)],
        torch.zeros(2),
        {},
        {"w": 1.0},
        {1: torch.zeros(1)},
        {"state_dict": {}},
        {"model": [torch.zeros(1)]},
        {"weights": {"w": torch.zeros(1)}},  # not a container name
        {"model": {"model": {"model": {"w": torch.zeros(1)}}}},
    ],  # too deep
    ids=repr,
)
def test_no_state_dict_anywhere(checkpoint: object) -> None:
    assert candidate_readings(checkpoint) == []
    with pytest.raises(CheckpointError, match="not a state dict"):
        find_reading(checkpoint, {"w": torch.zeros(1)}, "M")


def test_state_differences_and_the_optional_batchnorm_counter() -> None:
    expected = {"w": torch.zeros(2, 3), "bn.num_batches_tracked": torch.tensor(0), "b": torch.zeros(2)}
    assert state_differences({"w": torch.zeros(2, 3), "b": torch.zeros(2)}, expected) == ([], [], [])
    assert state_differences({"w": torch.zeros(3, 2), "x": torch.zeros(1)}, expected) == (
        ["b"],
        ["x"],
        ["w (3, 2) vs (2, 3)"],
    )


def test_describe_reads_like_python_indexing() -> None:
    reading = CheckpointReading({}, ("model", "state_dict"), "module._orig_mod.")
    assert reading.where == "checkpoint['model']['state_dict']"
    assert reading.describe() == "loaded from checkpoint['model']['state_dict'], prefix 'module._orig_mod.' removed"
    assert CheckpointReading({}).is_plain and not reading.is_plain
    # repr() shows control and bidi characters of a user's key names as escapes, never as themselves
    assert CheckpointReading({}, (), "a\u202eb.").describe().endswith(r"prefix 'a\u202eb.' removed")


# --- the size cap fits every registry model ---------------------------------------------------------------------------


def _state_bytes(key: str) -> int:
    with torch.device("meta"):  # shapes and dtypes only: no memory, no initialisation cost
        model = build_architecture(MODELS[key])
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def test_checkpoint_cap_fits_the_largest_registry_model() -> None:
    sizes = {key: _state_bytes(key) for key in MODELS}
    largest = max(sizes, key=sizes.get)
    # float32: 4 bytes per parameter; BatchNorm adds running mean and variance (4 bytes a channel each) and an int64
    # counter per layer: VGG-16-BN 138,365,992 parameters, 4,224 BatchNorm channels in 13 layers.
    assert largest == "vgg16_bn" and sizes["vgg16_bn"] == 4 * 138_365_992 + 2 * 4 * 4_224 + 8 * 13 == 553_497_864
    assert sizes["resnet50"] == 102_441_032  # "98 MB" in MiB; 25,557,032 parameters
    # A saved file adds a zip directory or a JSON header: under 1% here (next test); 5% margin on top of it.
    assert 1.05 * sizes[largest] <= models.MAX_CHECKPOINT_BYTES
    assert models.MAX_CHECKPOINT_BYTES % (1024 * 1024) == 0  # whole MB, as Streamlit's per-widget limit takes


@pytest.mark.parametrize("key", ARCHS)
def test_a_saved_file_is_its_tensor_bytes_plus_little(key: str) -> None:
    model = build_architecture(MODELS[key])
    tensor_bytes = _state_bytes(key)
    for data in (_saved(model.state_dict()), safetensors.torch.save(model.state_dict())):
        assert tensor_bytes < len(data) <= 1.01 * tensor_bytes + 64 * 1024


# --- what a file declares is checked before any element is read (row 69) ---------------------------------------------

FOUR_FLOATS = Storage("0", 4)
BYTES_16 = Storage("0", 16, "UntypedStorage")  # as torch.save declares float8 and unsigned tensors' storages
ONE_TENSOR = {"0": bytes(16)}


def _deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def _tensors_on_one_storage(count: int) -> dict[str, Tensor]:
    return {f"w{i}": Tensor(FOUR_FLOATS, 0, (4,), (1,)) for i in range(count)}


def _records(count: int) -> bytes:
    """A zip checkpoint of ``count`` records (four of torch's own plus empty ones)."""
    extra = [Record(f"archive/data/x{i}", b"") for i in range(count - 4)]
    return torch_zip({"w": Tensor(FOUR_FLOATS, 0, (4,), (1,))}, ONE_TENSOR, extra=extra)


def _records_behind_a_small_count(count: int) -> bytes:
    """``_records(count)`` whose end record declares 7 entries: zipfile reads headers to the directory's byte size."""
    data = bytearray(_records(count))
    struct.pack_into("<2H", data, len(data) - 22 + 8, 7, 7)  # APPNOTE 4.3.16: entries on this disk, entries in total
    return bytes(data)


# name: (the file, what the refusal says). Each is something torch.save never writes; the first is the example.
ZIP_FAMILY: dict[str, tuple[Callable[[], bytes], str]] = {
    "deflate-bomb-1GiB": (
        zip_bomb,
        r"record 'archive/data/0' is compressed \(1,06\d,\d{3} bytes declaring 1,073,741,824",
    ),
    "deflated-small-record": (
        lambda: torch_zip(
            {"w": Tensor(FOUR_FLOATS, 0, (4,), (1,))},
            {},
            extra=[Record("archive/data/0", _deflated(bytes(16)), method=8, size=16, crc=zlib.crc32(bytes(16)))],
        ),
        "is compressed",
    ),
    "stored-record-declaring-two-sizes": (
        lambda: torch_zip(
            {"w": Tensor(FOUR_FLOATS, 0, (4,), (1,))}, {}, extra=[Record("archive/data/0", bytes(16), size=ONE_GIB)]
        ),  # fmt: skip
        "declares two sizes",
    ),
    "record-past-the-end": (
        lambda: _one_record(Record("archive/data/0", bytes(16), size=2**31, compressed_size=2**31)),
        "declares 2,147,483,648 bytes past the end of the file",
    ),
    "zip64-record-declaring-1TiB": (
        lambda: _one_record(Record("archive/data/0", bytes(16), size=2**40, compressed_size=2**40, zip64=True)),
        "declares 1,099,511,627,776 bytes past the end of the file",
    ),
    "duplicate-names": (
        lambda: torch_zip(
            {"w": Tensor(FOUR_FLOATS, 0, (4,), (1,))}, ONE_TENSOR, extra=[Record("archive/data/0", bytes(64))]
        ),  # fmt: skip
        "two records named 'archive/data/0'",
    ),
    "overlapping-records": (
        lambda: torch_zip(
            {"w": Tensor(FOUR_FLOATS, 0, (4,), (1,)), "v": Tensor(Storage("1", 4), 0, (4,), (1,))},
            ONE_TENSOR,
            extra=[Record("archive/data/1", bytes(16), offset_of="archive/data/0")],
        ),
        "overlaps another",
    ),
    "many-records": (lambda: _records(MAX_CHECKPOINT_TENSORS + 17), r"declares 10,017 records; at most 10,016"),
    "many-records-behind-a-count-of-7": (
        lambda: _records_behind_a_small_count(MAX_CHECKPOINT_TENSORS + 17),
        r"declares 10,017 records; at most 10,016",
    ),
    "huge-data.pkl": (
        lambda: torch_zip(
            {"w": Tensor(FOUR_FLOATS, 0, (4,), (1,)), "pad": "x" * MAX_CHECKPOINT_PICKLE_BYTES}, ONE_TENSOR
        ),
        r"pickle \(data.pkl\) is 4.2 MB; at most 4.2 MB",
    ),
}


def _one_record(record: Record) -> bytes:
    """A checkpoint of one four-float tensor whose storage is ``record``."""
    return torch_zip({"w": Tensor(FOUR_FLOATS, 0, (4,), (1,))}, {}, extra=[record])


def _pickled_zip(obj: object, storages: dict[str, bytes] = ONE_TENSOR) -> Callable[[], bytes]:
    return lambda: torch_zip(obj, storages)


def _pickle_record(pickled: bytes) -> bytes:
    """A zip checkpoint whose data.pkl is ``pickled``, written by hand."""
    return zip_bytes([Record("archive/data.pkl", pickled), Record("archive/version", b"3\n")])


PICKLE_FAMILY: dict[str, tuple[Callable[[], bytes], str]] = {
    "storage-declares-more-than-its-record": (
        _pickled_zip({"w": Tensor(Storage("0", 2**34), 0, (4,), (1,))}),
        "storage '0' declares 68,719,476,736 bytes but its record holds 16",
    ),
    "storage-declares-less-than-its-record": (
        _pickled_zip({"w": Tensor(Storage("0", 2), 0, (2,), (1,))}),
        "storage '0' declares 8 bytes but its record holds 16",
    ),
    "storage-declared-with-two-sizes": (
        _pickled_zip({"w": Tensor(FOUR_FLOATS, 0, (4,), (1,)), "v": Tensor(Storage("0", 8), 0, (4,), (1,))}),
        "declares storage '0' with two sizes",
    ),
    "storage-without-a-record": (_pickled_zip({"w": Tensor(Storage("7", 4), 0, (4,), (1,))}), "which has no record"),
    "extent-size": (_pickled_zip({"w": Tensor(FOUR_FLOATS, 0, (2**20,), (1,))}), "up to 1,048,576 in storage '0' of 4"),
    "extent-stride": (_pickled_zip({"w": Tensor(FOUR_FLOATS, 0, (4, 2), (1, 100))}), "up to 104 in storage '0' of 4"),
    "extent-offset": (_pickled_zip({"w": Tensor(FOUR_FLOATS, 4, (1,), (1,))}), "up to 5 in storage '0' of 4"),
    "extent-overflowing-int64": (
        _pickled_zip({"w": Tensor(FOUR_FLOATS, 0, (2**62, 2**62), (1, 1))}),
        "up to 9,223,372,036,854,775,807 in storage '0' of 4",
    ),
    "extent-of-a-half-storage": (
        _pickled_zip({"w": Tensor(Storage("0", 8, "HalfStorage"), 0, (9,), (1,))}),
        "up to 9 in storage '0' of 8",
    ),
    "extent-of-a-float8-tensor": (
        _pickled_zip({"w": TensorV3(BYTES_16, 0, (4, 5), (5, 1), torch.float8_e4m3fn)}),
        "up to 20 in storage '0' of 16",
    ),
    "extent-of-an-untyped-storage": (
        _pickled_zip({"w": TensorV3(BYTES_16, 0, (5,), (1,), torch.float32)}),
        "up to 5 in storage '0' of 4",
    ),
    "negative-stride": (_pickled_zip({"w": Tensor(FOUR_FLOATS, 3, (4,), (-1,))}), "bad size, stride or offset"),
    "many-tensors": (_pickled_zip(_tensors_on_one_storage(MAX_CHECKPOINT_TENSORS + 1)), "more than 10,000 tensors"),
    "many-globals": (
        lambda: zip_bytes(
            [Record("archive/data.pkl", b"\x80\x02" + b"".join(b"cm\nn%d\n0" % i for i in range(257)) + b"}.")]
        ),  # fmt: skip
        "names more than 256 globals",
    ),
    "many-objects": (
        _pickled_zip({"w": Tensor(FOUR_FLOATS, 0, (4,), (1,)), "x": [OrderedDict() for _ in range(80_001)]}),
        "builds more than 80,000 objects",
    ),
    # CPython's unpickler sizes its memo array to twice the largest index: here 2**31 slots, 16 GiB, from 9 bytes.
    "memo-index-2**30": (
        lambda: _pickle_record(b"\x80\x02]r" + struct.pack("<I", 2**30) + b"."),
        "memo index 1073741824",
    ),
    # Two opcodes an empty set (216 bytes built): 4 MiB of them built 480 MB.
    "many-opcodes": (
        lambda: _pickle_record(b"\x80\x04]" + b"\x8fa" * (MAX_CHECKPOINT_PICKLE_BYTES // 2 - 8) + b"."),
        "more than 480,000 opcodes",
    ),
}

LEGACY_FAMILY: dict[str, tuple[Callable[[], bytes], str]] = {
    "legacy-storage-declares-more-than-follows": (
        lambda: legacy_file({"w": Tensor(Storage("0", 2**34), 0, (4,), (1,))}, {"0": (2**34, bytes(16))}),
        "storages declare 68,719,476,744 bytes but only 24 follow",
    ),
    "legacy-extent": (
        lambda: legacy_file({"w": Tensor(FOUR_FLOATS, 0, (2**20,), (1,))}, {"0": (4, bytes(16))}),
        "up to 1,048,576 in storage '0' of 4",
    ),
    "legacy-many-tensors": (
        lambda: legacy_file(_tensors_on_one_storage(MAX_CHECKPOINT_TENSORS + 1), {"0": (4, bytes(16))}),
        "more than 10,000 tensors",
    ),
    "a-pickle-that-is-not-torch.save's": (
        lambda: torch_pickle({"w": Tensor(FOUR_FLOATS, 0, (4,), (1,))}),
        "neither a torch.save file nor safetensors",
    ),
}


def _safetensors(header: object, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def _safetensors_raw(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header


SAFETENSORS_FAMILY: dict[str, tuple[Callable[[], bytes], str]] = {
    "offsets-past-the-file": (
        lambda: _safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
        "declares 16 bytes at offsets 0..16 of a 8-byte data buffer",
    ),
    "offsets-not-the-shape's": (
        lambda: _safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(8)),
        "declares 16 bytes at offsets 0..8",
    ),
    "overlapping-offsets": (
        lambda: _safetensors(
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
            },
            bytes(24),
        ),  # fmt: skip
        "starts at byte 8, not 16: tensors overlap or leave gaps",
    ),
    "a-gap": (
        lambda: _safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, bytes(16)),
        "starts at byte 8, not 0",
    ),
    "shape-product-past-int64": (
        lambda: _safetensors({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}, bytes(16)),
        "declares 4,835,703,278,458,516,698,824,704 bytes",
    ),
    "negative-shape": (
        lambda: _safetensors({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, bytes(16)),
        "bad shape or data_offsets",
    ),
    "many-entries": (
        lambda: safetensors.torch.save({f"w{i}": torch.zeros(0) for i in range(10_001)}),
        "10,001 tensors",
    ),
    "header-nested-100000-deep": (
        lambda: _safetensors_raw(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "its header is not JSON",
    ),
    "header-a-list": (lambda: _safetensors([1, 2]), "not a JSON object"),
}


@pytest.mark.bad_input(69)
@pytest.mark.parametrize("family", ["zip", "pickle", "legacy", "safetensors"])
def test_what_a_file_declares_is_refused_before_any_element_is_read(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = {"zip": ZIP_FAMILY, "pickle": PICKLE_FAMILY, "legacy": LEGACY_FAMILY, "safetensors": SAFETENSORS_FAMILY}
    built = {name: make() for name, (make, _) in cases[family].items()}

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load or safetensors was reached")

    monkeypatch.setattr(torch, "load", never)
    monkeypatch.setattr(safetensors.torch, "load", never)
    for name, (_, message) in cases[family].items():
        filename = "x.safetensors" if family == "safetensors" else "x.pt"
        with pytest.raises(CheckpointError, match=message) as info:
            read_checkpoint(built[name], filename)
        assert str(info.value).isprintable(), name


@pytest.mark.bad_input(69)
@pytest.mark.parametrize("make", [_records, _records_behind_a_small_count])
def test_the_record_count_is_read_before_zipfile_parses_the_directory(
    make: Callable[[int], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make(MAX_CHECKPOINT_TENSORS + 17)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("zipfile built an object per record")

    monkeypatch.setattr(zipfile, "ZipFile", never)
    with pytest.raises(CheckpointError, match="declares 10,017 records"):
        read_checkpoint(data, "x.pt")


def test_the_helpers_files_are_what_torch_reads() -> None:
    # The hand-written files above are torch's layouts: in bounds, torch.load reads them, and so does read_checkpoint.
    tensor = {"w": Tensor(FOUR_FLOATS, 0, (2, 2), (2, 1))}
    zip64 = torch_zip(tensor, {}, extra=[Record("archive/data/0", bytes(16), zip64=True)])
    v3 = torch_zip({"w": TensorV3(BYTES_16, 0, (2, 2), (2, 1), torch.float32)}, {"0": bytes(16)})
    for data in (torch_zip(tensor, {"0": bytes(16)}), zip64, v3, legacy_file(tensor, {"0": (4, bytes(16))})):
        assert torch.equal(torch.load(io.BytesIO(data), weights_only=True)["w"], torch.zeros(2, 2))
        assert torch.equal(read_checkpoint(data, "x.pt")["w"], torch.zeros(2, 2))
    inflated = zipfile.ZipFile(io.BytesIO(zip_bomb(8 << 20))).read("archive/data/0")  # zipfile checks the CRC
    assert inflated == bytes(8 << 20)


@pytest.mark.bad_input(69)
def test_torch_saved_files_pass_the_checks_in_both_formats_and_zip64(resnet20: Original) -> None:
    state = resnet20.state()
    zipped = _saved(state)
    assert b"PK\x06\x06" in zipped  # torch.save writes a zip64 end record: it is read
    resnet20.assert_loads(zipped, "x.pt", "loaded from the file's top level, no prefix")
    legacy = saved(state, _use_new_zipfile_serialization=False)
    resnet20.assert_loads(legacy, "x.pt", "loaded from the file's top level, no prefix")
    views = {"whole": torch.arange(12.0).view(3, 4)}
    views |= {"row": views["whole"][1], "column": views["whole"][:, 2], "transposed": views["whole"].t()}
    loaded = read_checkpoint(_saved(views), "views.pt")
    assert all(torch.equal(loaded[k], v) for k, v in views.items())


def test_a_training_checkpoint_of_the_largest_state_dict_is_within_the_caps() -> None:
    # The caps' documented basis: DenseNet-121 (727 tensors, the registry's most), with an EMA copy and SGD momentum.
    model = build_architecture(MODELS["densenet121"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state = model.state_dict()
    ema = {k: v.clone() for k, v in state.items()}
    data = _saved({"state_dict": state, "state_dict_ema": ema, "optimizer": optimizer.state_dict(), "epoch": 1})
    records = zipfile.ZipFile(io.BytesIO(data)).infolist()
    pickled = next(r.file_size for r in records if r.filename.endswith("data.pkl"))
    assert len(state) == 727 and len(records) == 2 * 727 + 364 + 6 < MAX_CHECKPOINT_TENSORS / 5  # 364 momenta
    assert pickled < MAX_CHECKPOINT_PICKLE_BYTES / 10
    assert read_checkpoint(data, "densenet.pth.tar").keys() == {"state_dict", "state_dict_ema", "optimizer", "epoch"}


_MEASURE = """
import sys, time
from pathlib import Path
from camlib.checkpoints import read_checkpoint
from camlib.errors import CheckpointError

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))

for path in sys.argv[1:]:
    data = Path(path).read_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current RSS
    before = kib("VmRSS")
    start = time.perf_counter()
    try:
        read_checkpoint(data, path)
        outcome = "loaded"
    except CheckpointError as error:
        outcome = "refused"
    seconds = time.perf_counter() - start
    print(path, outcome, seconds, (kib("VmHWM") - before) * 1024, flush=True)
"""


def _measured(files: dict[str, bytes], tmp_path: Path) -> dict[str, tuple[str, float, int]]:
    """Each file read by read_checkpoint in a fresh subprocess: outcome, seconds, and how far the peak RSS rose above
    the RSS before the call, in bytes. The peak is the process's high-water RSS (``VmHWM``, what ``ru_maxrss`` reports
    while the process runs), reset before each file with Linux's ``clear_refs`` "5": ``ru_maxrss`` itself cannot be
    reset and still holds the import's peak, which hides any growth below it."""
    paths = []
    for name, data in files.items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, paths)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300, check=True).stdout  # fmt: skip
    rows = [line.rsplit(" ", 3) for line in out.splitlines()]
    return {Path(path).name: (outcome, float(seconds), int(grown)) for path, outcome, seconds, grown in rows}


@pytest.mark.bad_input(69, kind="U")
@pytest.mark.slow  # times and measures many refusals; each refusal kind has its quick test above
def test_refusals_take_milliseconds_and_flat_memory(tmp_path: Path) -> None:
    files = {
        "bomb.pt": zip_bomb(),
        "storage.pt": PICKLE_FAMILY["storage-declares-more-than-its-record"][0](),
        "extent.pt": PICKLE_FAMILY["extent-overflowing-int64"][0](),
        "tensors.pt": PICKLE_FAMILY["many-tensors"][0](),
        "memo.pt": PICKLE_FAMILY["memo-index-2**30"][0](),
        "opcodes.pt": PICKLE_FAMILY["many-opcodes"][0](),
        "records.pt": _records(MAX_CHECKPOINT_TENSORS + 17),
        "legacy.pt": LEGACY_FAMILY["legacy-storage-declares-more-than-follows"][0](),
        "huge.safetensors": SAFETENSORS_FAMILY["shape-product-past-int64"][0](),
        "strings.safetensors": _safetensors_raw(b"[" + b",".join([b'"a"'] * (MAX_SAFETENSORS_HEADER // 4 - 1)) + b"]"),
        "control.pt": _saved({"fc.weight": torch.ones(1 << 24)}),  # 64 MB that loads: the measurement sees it
    }
    measured = _measured(files, tmp_path)
    assert measured.keys() == files.keys()
    outcome, _, grown = measured.pop("control.pt")
    assert outcome == "loaded" and grown > 64 * 2**20
    for name, (outcome, seconds, grown) in measured.items():
        assert outcome == "refused", name
        # about 1 ms each; 10,000 tensors are checked one by one before the 10,001st is refused (about 0.3 s), and
        # 480,000 opcodes walked before the next is refused (about 0.15 s). The margins are for a busy shared machine.
        assert seconds < (3.0 if name in ("tensors.pt", "opcodes.pt") else 0.2), (name, seconds)
        assert grown < (32 if name == "strings.safetensors" else 16) * 2**20, (name, grown)  # the 1 GiB bomb included


@pytest.mark.slow
@pytest.mark.bad_input(69, kind="U")
def test_torch_load_alone_would_inflate_the_bomb(tmp_path: Path) -> None:
    # The reference that the bomb is real: torch.load inflates its 1 MB into a 1 GiB tensor (peak RSS up > 1 GiB).
    script = (
        "import io, sys, torch; from pathlib import Path; data = Path(sys.argv[1]).read_bytes(); "
        "kib = lambda f: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(f + ':')); "
        "Path('/proc/self/clear_refs').write_text('5'); before = kib('VmRSS'); "
        "t = torch.load(io.BytesIO(data), weights_only=True)['fc.weight']; "
        "print(t.numel(), (kib('VmHWM') - before) * 1024)"
    )
    (tmp_path / "bomb.pt").write_bytes(zip_bomb())
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "bomb.pt")], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()  # fmt: skip
    assert int(out[0]) == ONE_GIB // 4 and int(out[1]) > ONE_GIB


# --- only tensor kinds an architecture holds are read (row 70) -------------------------------------------------------


def _quantised(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.quantize_per_tensor(w, 0.01, 0, dtype)


def _with_nan(w: torch.Tensor) -> torch.Tensor:
    w = w.to(torch.complex64)
    w[0, 0] = complex(float("nan"), 0.0)
    return w


# kind name: (fc.weight (10, 64) made into that kind, how the refusal names it)
KINDS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str]] = {
    "meta": (lambda w: torch.empty_like(w, device="meta"), "meta (no data)"),
    "sparse-coo": (lambda w: w.to_sparse(), "sparse (sparse_coo)"),
    "sparse-csr": (lambda w: w.to_sparse_csr(), "sparse (sparse_csr)"),
    "sparse-csc": (lambda w: w.to_sparse_csc(), "sparse (sparse_csc)"),
    "sparse-bsr": (lambda w: w.to_sparse_bsr((2, 2)), "sparse (sparse_bsr)"),
    "sparse-bsc": (lambda w: w.to_sparse_bsc((2, 2)), "sparse (sparse_bsc)"),
    "nested": (lambda w: torch.nested.nested_tensor(list(w)), "nested (strided)"),
    "nested-jagged": (lambda w: torch.nested.nested_tensor(list(w), layout=torch.jagged), "nested (jagged)"),
    "quantised-qint8": (lambda w: _quantised(w, torch.qint8), "quantised (qint8)"),
    "quantised-quint8": (lambda w: _quantised(w, torch.quint8), "quantised (quint8)"),
    "quantised-qint32": (lambda w: _quantised(w, torch.qint32), "quantised (qint32)"),
    "quantised-per-channel": (
        lambda w: torch.quantize_per_channel(
            w, torch.full((10,), 0.01), torch.zeros(10, dtype=torch.long), 0, torch.qint8
        ),  # fmt: skip
        "quantised (qint8)",
    ),
    **{
        f"float8-{name}": ((lambda w, d=getattr(torch, name): w.to(d)), f"float8 ({name})")
        for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu")
    },
    "float4": (lambda w: torch.zeros(10, 32, dtype=torch.float4_e2m1fn_x2), "float4 (float4_e2m1fn_x2)"),
    "complex64": (lambda w: w.to(torch.complex64), "complex (complex64)"),
    "complex128": (lambda w: w.to(torch.complex128), "complex (complex128)"),
    "complex-with-nan": (_with_nan, "complex (complex64)"),
    **{f"{n}": ((lambda w, d=getattr(torch, n): w.to(d)), f"unsigned ({n})") for n in ("uint16", "uint32", "uint64")},
}
# suppress the beta warnings torch gives for sparse, nested and quantised tensors
pytestmark_kinds = pytest.mark.filterwarnings("ignore::UserWarning")


@pytestmark_kinds
@pytest.mark.bad_input(70)
@pytest.mark.parametrize("kind", list(KINDS))
def test_each_tensor_kind_no_architecture_holds_is_refused_by_name(kind: str, resnet20: Original) -> None:
    make, named = KINDS[kind]
    state = resnet20.state()
    odd = make(state["fc.weight"])
    for checkpoint, where in ((state | {"fc.weight": odd}, "fc.weight"),
                              ({"model": state | {"fc.weight": odd}, "epoch": 3}, "model/fc.weight")):  # fmt: skip
        with pytest.raises(CheckpointError) as info:
            load_checkpoint("cifar10_resnet20", _saved(checkpoint), "odd.pt", device=CPU)
        assert f"{where} is {named}" in str(info.value), str(info.value)
        assert str(info.value).startswith("the checkpoint holds tensors no architecture here can hold")


@pytest.mark.bad_input(70)
@pytest.mark.parametrize(
    "dtype",
    [
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
        "float4_e2m1fn_x2",
        "complex64",
        "uint16",
        "uint32",
        "uint64",
    ],  # fmt: skip
)
def test_each_safetensors_dtype_no_architecture_holds_is_refused_by_name(dtype: str, resnet20: Original) -> None:
    # Written by safetensors itself: its dtype names are the format's, F8_E4M3, C64, U16...
    state = {k: v.contiguous() for k, v in resnet20.state().items()}
    shape = (10, 32) if dtype.startswith("float4") else (10, 64)
    state["fc.weight"] = torch.zeros(shape).to(getattr(torch, dtype)) if dtype != "float4_e2m1fn_x2" else (
        torch.zeros(shape, dtype=torch.float4_e2m1fn_x2))  # fmt: skip
    data = safetensors.torch.save(state)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    name = header["fc.weight"]["dtype"]
    family = {"C": "complex", "U": "unsigned"}.get(name[0], name.split("_")[0].lower().replace("f", "float"))
    with pytest.raises(CheckpointError, match=rf"tensor 'fc.weight' is {family} \({name}\): no architecture"):
        load_checkpoint("cifar10_resnet20", data, "odd.safetensors", device=CPU)


@pytest.mark.bad_input(70)
def test_complex_nan_never_loads_and_a_real_nan_is_still_named(resnet20: Original) -> None:
    state = resnet20.state()
    with pytest.raises(CheckpointError, match=r"fc\.weight is complex \(complex64\)"):
        read_checkpoint(_saved(state | {"fc.weight": _with_nan(state["fc.weight"])}), "x.pt")
    broken = state["fc.weight"].clone()
    broken[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"NaN or Inf values in fc\.weight"):
        read_checkpoint(_saved(state | {"fc.weight": broken}), "x.pt")


@pytest.mark.bad_input(70)
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@pytest.mark.parametrize(
    ("name", "dtype", "shown"),
    [
        ("fc.weight", torch.int64, "fc.weight int64 vs float32"),
        ("fc.weight", torch.int8, "fc.weight int8 vs float32"),
        ("fc.weight", torch.uint8, "fc.weight uint8 vs float32"),
        ("fc.weight", torch.bool, "fc.weight bool vs float32"),
        ("stem.1.running_var", torch.int32, "stem.1.running_var int32 vs float32"),
        ("stem.1.num_batches_tracked", torch.float32, "stem.1.num_batches_tracked float32 vs int64"),
        ("stem.1.num_batches_tracked", torch.bool, "stem.1.num_batches_tracked bool vs int64"),
    ],
)
def test_integer_or_bool_tensors_where_the_model_holds_floats_are_refused(
    name: str, dtype: torch.dtype, shown: str, fmt: str, resnet20: Original
) -> None:
    state = {k: v.contiguous() for k, v in resnet20.state().items()}
    state[name] = state[name].to(dtype)
    data = safetensors.torch.save(state) if fmt == "safetensors" else _saved(state)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint("cifar10_resnet20", data, f"x.{fmt}", device=CPU)
    assert str(info.value) == (
        "Checkpoint tensors of the wrong kind for model ResNet-20 (CIFAR-10, trained by this project) (saved vs model "
        f"dtype): {shown}"
    )


@pytest.mark.bad_input(70)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_other_float_precisions_load_as_their_values_in_float32(
    dtype: torch.dtype, fmt: str, resnet20: Original
) -> None:
    # What the architectures hold: any float precision, converted by load_state_dict; the reference is the original
    # model with its weights rounded through the same dtype.
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in resnet20.state().items()}
    data = safetensors.torch.save(state) if fmt == "safetensors" else _saved(state)
    loaded = load_checkpoint("cifar10_resnet20", data, f"x.{fmt}", device=CPU)
    rounded = build_cifar_model("resnet20")
    rounded.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    assert torch.equal(resnet20.logits_of(loaded.model), resnet20.logits_of(rounded))
    if dtype == torch.float64:  # float32 -> float64 -> float32 is exact
        assert torch.equal(resnet20.logits_of(loaded.model), resnet20.logits)


def test_tensor_kind_of_every_readable_dtype_is_none() -> None:
    assert all(checkpoints.tensor_kind(torch.zeros(2, dtype=d)) is None for d in checkpoints.READABLE_DTYPES)
