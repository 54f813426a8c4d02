"""Find the one reading of a saved checkpoint that fits an architecture.

People save weights in many wrappers. The usual ones:

- the prefixes of ``nn.DataParallel`` / ``DistributedDataParallel`` (``module.``) and of ``torch.compile``
  (``_orig_mod.``), also nested (``module._orig_mod.``), and those of EMA and weight-averaging wrappers (timm's
  ``ModelEmaV2``/``V3`` and ``torch.optim.swa_utils.AveragedModel`` keep the model as ``.module``);
- a training checkpoint: a dict holding the weights under ``state_dict`` (Lightning, timm), ``model`` (torchvision's
  reference scripts, DeiT), ``model_state_dict`` (the PyTorch tutorials), ``state_dict_ema`` (timm) or ``model_ema``
  (torchvision's reference scripts, DeiT), beside the optimizer, epoch and other entries;
- a prefix shared by every key, as a Lightning module's attribute name gives (``model.conv1.weight``).

A *reading* is a container (the file's top level, or a dict under one of ``CONTAINER_KEYS``, nested at most
``MAX_CONTAINER_DEPTH`` deep, e.g. ``checkpoint["model"]["state_dict"]``) whose values are all tensors, plus a prefix
removed from every key: any dotted prefix shared by every key of the container (``module.``, ``_orig_mod.``, chains of
them, a Lightning attribute name). Only a reading whose keys and shapes are exactly the architecture's is used, and
only when exactly one distinct reading fits: a timm checkpoint holding both ``state_dict`` and a different
``state_dict_ema`` is ambiguous and refused with the two readings named, never guessed.

``read_checkpoint`` reads a checkpoint's bytes (safetensors, or ``torch.load`` with ``weights_only=True``) after
checking everything the file declares (record sizes, counts, storage sizes, tensor extents, dtypes) against caps and
against the bytes behind it, so a small file cannot make large work; ``camlib.models`` calls it.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from camlib.contracts import require_int
from camlib.errors import CheckpointError, InputError

CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")
MAX_CONTAINER_DEPTH = 2
# torch.optim.swa_utils.AveragedModel saves the averaged model under ``module.`` plus this un-prefixed counter (a
# 0-dim integer buffer). It is not a weight of the model: it is dropped, and the reading says so.
AVERAGED_MODEL_COUNTER = "n_averaged"
# BatchNorm's counter is newer than some published files (torchvision's DenseNet, VGG-BN); torch's own loader fills
# it in, and it plays no part in eval mode.
OPTIONAL_SUFFIX = "num_batches_tracked"
NOT_A_STATE_DICT = (
    "the checkpoint is not a state dict (a mapping of names to tensors), nor a training checkpoint "
    f"holding one under {', '.join(CONTAINER_KEYS)}"
)
REFUSED = "Only safetensors / weights-only checkpoints are accepted"
_NOT_TORCH = f"{REFUSED}: this file is neither a torch.save file nor safetensors, and was refused without running it"
_SHOWN = 5  # names listed in an error message before "(+N more)"


@dataclass(frozen=True)
class CheckpointReading:
    """One way of reading a state dict out of a loaded checkpoint.

    Attributes:
        state: parameter and buffer name -> tensor, with ``prefix`` removed (the tensors of the checkpoint, not copies).
        container: the keys leading to the state inside the checkpoint; ``()`` for the top level.
        prefix: the dotted prefix removed from every key (``""`` for none), e.g. ``"module._orig_mod."``.
        dropped: keys of the container left out of ``state`` (only AveragedModel's ``n_averaged``).
    """

    state: dict[str, torch.Tensor] = field(repr=False, compare=False)
    container: tuple[str, ...] = ()
    prefix: str = ""
    dropped: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        """The container as indexed in Python, ``checkpoint['model']['state_dict']``, or ``the file's top level``."""
        if not self.container:
            return "the file's top level"
        return "checkpoint" + "".join(f"[{key!r}]" for key in self.container)

    @property
    def is_plain(self) -> bool:
        """The file is the state dict itself, nothing removed."""
        return not (self.container or self.prefix or self.dropped)

    def describe(self) -> str:
        """A sentence for the user, e.g. ``loaded from checkpoint['state_dict'], prefix 'model.' removed``."""
        text = f"loaded from {self.where}, " + (f"prefix {self.prefix!r} removed" if self.prefix else "no prefix")
        if self.dropped:
            text += f", {', '.join(self.dropped)} (AveragedModel's update counter) ignored"
        return text


def candidate_readings(checkpoint: object) -> list[CheckpointReading]:
    """Every reading of ``checkpoint`` (containers in ``CONTAINER_KEYS`` order, depth first; shorter prefixes first).

    A container is a candidate when it is a non-empty mapping of ``str`` to ``torch.Tensor``; anything else in a
    training dict (optimizer state, epoch, hyper-parameters) is never read. Returns ``[]`` when nothing is a state dict.
    """
    readings = []
    for path, container in _state_containers(checkpoint):
        for prefix in _shared_prefixes(list(container)):
            readings.append(CheckpointReading({k[len(prefix) :]: v for k, v in container.items()}, path, prefix))
        counter = container.get(AVERAGED_MODEL_COUNTER)
        if counter is not None and counter.ndim == 0 and not counter.is_floating_point():
            rest = [k for k in container if k != AVERAGED_MODEL_COUNTER]
            for prefix in _shared_prefixes(rest):
                if prefix.startswith("module."):  # AveragedModel's layout; anywhere else the counter is a key
                    state = {k[len(prefix) :]: container[k] for k in rest}
                    readings.append(CheckpointReading(state, path, prefix, (AVERAGED_MODEL_COUNTER,)))
    return readings


def weight_tensors(checkpoint: object) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of every candidate container (the tensors any reading can load), named by its container path and
    key: ``model/fc.weight`` for ``checkpoint['model']['fc.weight']``, top-level keys as they are."""
    for path, container in _state_containers(checkpoint):
        for key, tensor in container.items():
            yield "/".join((*path, key)), tensor


def state_differences(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, mismatched)`` names of ``state`` against ``expected`` (a model's ``state_dict()``), each
    in the order of its own dict; a missing ``num_batches_tracked`` is not missing. Mismatches read
    ``"name (saved shape) vs (model shape)"``. All three empty means ``state`` loads with ``strict=True``.

    Raises ``InputError`` unless both are mappings of names to tensors."""
    _require_state(state, "state")
    _require_state(expected, "expected")
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    return missing, unexpected, mismatched


def find_reading(checkpoint: object, expected: Mapping[str, torch.Tensor], label: str) -> CheckpointReading:
    """The one reading of ``checkpoint`` whose keys and shapes are exactly ``expected``'s.

    Args:
        checkpoint: what ``safetensors.torch.load`` or ``torch.load`` with ``weights_only=True`` returned.
        expected: the target model's ``state_dict()`` (only names, shapes and dtypes are used).
        label: the model's name for messages.

    Raises:
        CheckpointError: nothing in ``checkpoint`` is a state dict; no reading fits ("Checkpoint does not match model
            ..." with the missing, unexpected and mismatched tensors of the reading that comes closest, and which
            reading that was); several readings with different tensors fit (the message names them); or the one that
            fits holds an integer or bool tensor where the model holds floats, or the reverse.
        InputError: ``expected`` is not a mapping of names to tensors.
    """
    _require_state(expected, "expected")
    readings = candidate_readings(checkpoint)
    if not readings:
        raise CheckpointError(NOT_A_STATE_DICT)
    fitting = [r for r in readings if not any(state_differences(r.state, expected))]
    distinct: list[CheckpointReading] = []
    for reading in fitting:
        if not any(_same_tensors(reading.state, other.state) for other in distinct):
            distinct.append(reading)
    if len(distinct) == 1:
        _require_dtype_families(distinct[0], expected, label)
        return distinct[0]
    if distinct:
        raise CheckpointError(
            f"The checkpoint holds {len(distinct)} different sets of weights that fit model {label}: "
            + "; ".join(r.describe().removeprefix("loaded from ") for r in distinct)
            + f". Save the one you want on its own, e.g. torch.save({distinct[-1].where}, 'weights.pt')"
        )
    closest = max(readings, key=lambda r: _closeness(r.state, expected))  # max keeps the first of equals
    missing, unexpected, mismatched = state_differences(closest.state, expected)
    read_as = "" if closest.is_plain else f"; read as {closest.describe().removeprefix('loaded from ')}"
    raise CheckpointError(
        f"Checkpoint does not match model {label} (missing: {_few(missing)}; unexpected: {_few(unexpected)}; "
        f"shape mismatch: {_few(mismatched)}{read_as})"
    )


def _dtype_family(tensor: torch.Tensor) -> str:
    return "float" if tensor.is_floating_point() else "bool" if tensor.dtype == torch.bool else "integer"


def _require_dtype_families(reading: CheckpointReading, expected: Mapping[str, torch.Tensor], label: str) -> None:
    """A float weight saved as integers or booleans (or a counter saved as floats) would load converted without a
    word (``load_state_dict`` copies across dtypes): refused. Float precisions may differ (a float16 file loads)."""
    wrong = [
        f"{k} {str(v.dtype).removeprefix('torch.')} vs {str(expected[k].dtype).removeprefix('torch.')}"
        for k, v in reading.state.items()
        if _dtype_family(v) != _dtype_family(expected[k])
    ]
    if wrong:
        raise CheckpointError(
            f"Checkpoint tensors of the wrong kind for model {label} (saved vs model dtype): {_few(wrong)}"
        )


def _require_state(state: object, name: str) -> None:
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InputError(f"{name} must be a state dict (a mapping of names to tensors), got {type(state).__name__}")


def _containers(checkpoint: object, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Mapping]]:
    if not isinstance(checkpoint, Mapping):
        return
    yield path, checkpoint
    if len(path) < MAX_CONTAINER_DEPTH:
        for key in CONTAINER_KEYS:
            if key in checkpoint:
                yield from _containers(checkpoint[key], (*path, key))


def _state_containers(checkpoint: object) -> Iterator[tuple[tuple[str, ...], Mapping[str, torch.Tensor]]]:
    """The containers that are state dicts: non-empty, ``str`` keys, tensor values."""
    for path, container in _containers(checkpoint, ()):
        if container and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in container.items()):
            yield path, container


def _shared_prefixes(keys: list[str]) -> list[str]:
    """``""`` and every dotted prefix that all ``keys`` share and that leaves each key non-empty, shortest first."""
    parts = [key.split(".") for key in keys]
    prefixes = [""]
    depth = 0
    while parts and all(len(p) > depth + 1 for p in parts) and len({p[depth] for p in parts}) == 1:
        depth += 1
        prefixes.append(".".join(parts[0][:depth]) + ".")
    return prefixes


def _same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k] is b[k] or (a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])) for k in a
    )


def _closeness(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> tuple[int, int, int]:
    """Names that match with their shape, names that match, minus the names that do not: larger is closer."""
    same_name = [k for k in expected if k in state]
    return (
        sum(state[k].shape == expected[k].shape for k in same_name),
        len(same_name),
        -len(state.keys() - expected.keys()),
    )


def _few(items: list[str]) -> str:
    if not items:
        return "none"
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


# --- reading a checkpoint's bytes ----------------------------------------------------------------------------------
#
# Every cost of reading is bounded by what the file declares, checked before torch or safetensors touch element data:
# the zip's central directory and each record's size, the pickle's length and the number of objects it builds, each
# storage's element count against the bytes behind it, each tensor's extent against its storage, and a safetensors
# header's entries, dtypes, shapes and offsets. Anything ``torch.save`` and ``safetensors`` never write is refused.

MAX_CHECKPOINT_BYTES = 600 * 1024 * 1024
# A header entry is about 120 bytes ("layer.weight": dtype, shape, offsets); parsed, JSON text takes up to 15x its size
# (a 4-byte string becomes a 58-byte object), so 2 MiB holds MAX_CHECKPOINT_TENSORS entries and parses within 32 MB.
MAX_SAFETENSORS_HEADER = 2 * 1024 * 1024
# The registry's largest state dict has 727 tensors (DenseNet-121); a DenseNet-121 training checkpoint with an EMA copy
# and SGD momentum has 1,818 tensors in as many storage records and a 213 KB pickle. The caps leave 5x and 19x room.
MAX_CHECKPOINT_TENSORS = 10_000
MAX_CHECKPOINT_PICKLE_BYTES = 4 * 1024 * 1024
# Objects a pickle may build while it is checked: a torch.save'd tensor takes 2 calls and a storage reference.
_MAX_PICKLE_CALLS = 8 * MAX_CHECKPOINT_TENSORS
# Opcodes a pickle may hold: torch.save writes about 33 a tensor (60,315 for the 1,818 tensors of the DenseNet-121
# training checkpoint above); each opcode builds at most one object, so this bounds what the checked pickle builds.
_MAX_PICKLE_OPCODES = 48 * MAX_CHECKPOINT_TENSORS
# Distinct globals a pickle may name: torch's weights-only allowlist has about 100.
_MAX_PICKLE_GLOBALS = 256
_TORCH_RECORDS = 16  # data.pkl, version, byteorder and the other small records torch.save writes beside the storages
_ZIP_MAGIC = b"PK\x03\x04"  # how torch.load tells a zip checkpoint from a legacy one (torch.serialization._is_zipfile)
_CENTRAL_MAGIC = b"PK\x01\x02"  # APPNOTE 4.3.12: every central directory header starts with it
_ZIP64_END_RECORDS = 56 + 20  # APPNOTE 4.3.14-15: the zip64 end record and its locator, before the end record
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, the first pickle of a legacy file
_LEGACY_HEAD_BYTES = 4096  # each of a legacy file's first three pickles (a number, a number, a small dict)
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # APPNOTE 4.3.7: signature, ..., file name length, extra field length

# Dense tensors of these dtypes are what a registry architecture holds (float weights, integer counters): everything
# else (complex, float8, float4, unsigned 16-64 bit, quantised, bits) is refused by name.
READABLE_DTYPES = frozenset(
    {torch.float64, torch.float32, torch.float16, torch.bfloat16}
    | {torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool}
)
# safetensors' dtype names (the format's spec, huggingface/safetensors README) of those dtypes, and the itemsize.
_SAFETENSORS_DTYPES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
_SAFETENSORS_REFUSED = {
    "F8_E4M3": "float8", "F8_E5M2": "float8", "F8_E4M3FNUZ": "float8", "F8_E5M2FNUZ": "float8", "F8_E8M0": "float8",
    "F6_E2M3": "float6", "F6_E3M2": "float6",
    "F4": "float4", "C64": "complex", "U16": "unsigned", "U32": "unsigned", "U64": "unsigned",
}  # fmt: skip


def read_checkpoint(data: bytes, filename: str = "", *, max_bytes: int = MAX_CHECKPOINT_BYTES) -> Mapping[str, object]:
    """Read a checkpoint from user bytes without ever running pickled code, bounded by what the file declares.

    Accepts ``.safetensors`` and what ``torch.save`` writes (zip, or the legacy format) that ``torch.load`` with
    ``weights_only=True`` loads: a state dict, or a training checkpoint holding one (the containers and prefixes of
    ``find_reading``). Before torch or safetensors read any element: the zip's records (stored, inside the file, not
    overlapping, at most ``MAX_CHECKPOINT_TENSORS + 16``), the pickle (at most ``MAX_CHECKPOINT_PICKLE_BYTES``, at
    most ``MAX_CHECKPOINT_TENSORS`` tensors), every storage's declared bytes against its record, every tensor's
    extent against its storage, and a safetensors header (entries, dtypes, shapes, offsets) are checked. After
    loading, every tensor a reading could load must be dense, hold data, and have a dtype of ``READABLE_DTYPES``, and
    its floating values must be finite.

    Args:
        data: the file's bytes.
        filename: the file's name; ``.safetensors`` (any case) is read as safetensors, as is any file that starts
            like one.
        max_bytes: the file size cap (bytes).

    Returns:
        The file's content as loaded (a mapping).

    Raises:
        CheckpointError: empty or over ``max_bytes`` (checked before parsing), any declared size, count or extent
            above the caps or past the bytes behind it, compressed or duplicated zip records, TorchScript, a pickle
            needing code or objects, corrupt or truncated, no state dict anywhere, a tensor kind no architecture holds
            (meta, sparse, nested, quantised, complex, float8...), or NaN/Inf in any tensor a reading could load.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CheckpointError(f"data: a checkpoint is the file's bytes, got {type(data).__name__}")
    if not isinstance(filename, str):
        raise CheckpointError(f"the checkpoint's filename must be a string, got {type(filename).__name__}")
    max_bytes = require_int(max_bytes, "max_bytes", minimum=1, error=CheckpointError)
    data = bytes(data) if not isinstance(data, bytes) else data
    if not data:
        raise CheckpointError("empty checkpoint file")
    if len(data) > max_bytes:
        raise CheckpointError(f"checkpoint too large ({len(data) / 1e6:.0f} MB > {max_bytes / 1e6:.0f} MB)")
    if filename.lower().endswith(".safetensors") or looks_like_safetensors(data):
        checkpoint: object = _read_safetensors(data)
    else:
        if data.startswith(_ZIP_MAGIC):
            _check_torch_zip(data)
        else:
            _check_legacy_torch(data)
        checkpoint = _torch_load(data)
    if not isinstance(checkpoint, Mapping) or not candidate_readings(checkpoint):
        raise CheckpointError(NOT_A_STATE_DICT)
    _refuse_unreadable_tensors(checkpoint)
    bad = [
        name
        for name, tensor in weight_tensors(checkpoint)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise CheckpointError(f"the checkpoint has NaN or Inf values in {', '.join(bad[:5])}")
    return checkpoint


def looks_like_safetensors(data: bytes) -> bool:
    """safetensors files start with an 8-byte little-endian header length and a JSON header."""
    return len(data) > 9 and data[8:9] == b"{" and 0 < int.from_bytes(data[:8], "little") < len(data)


def tensor_kind(tensor: torch.Tensor) -> str | None:
    """``None`` for a tensor an architecture can hold (dense, with data, a dtype of ``READABLE_DTYPES``), else what it
    is, e.g. ``"sparse (sparse_coo)"``, ``"quantised (qint8)"``, ``"float8 (float8_e4m3fn)"``."""
    if tensor.is_nested:
        return f"nested ({str(tensor.layout).removeprefix('torch.')})"
    if tensor.layout != torch.strided:
        return f"sparse ({str(tensor.layout).removeprefix('torch.')})"
    if tensor.is_meta:
        return "meta (no data)"
    dtype = str(tensor.dtype).removeprefix("torch.")
    if tensor.is_quantized:
        return f"quantised ({dtype})"
    if tensor.dtype in READABLE_DTYPES:
        return None
    families = {"complex": "complex", "float8": "float8", "float4": "float4", "uint": "unsigned", "bits": "bits"}
    family = next((name for prefix, name in families.items() if dtype.startswith(prefix)), "unsupported")
    return f"{family} ({dtype})"


def _refuse_unreadable_tensors(checkpoint: object) -> None:
    found = [f"{name} is {kind}" for name, t in weight_tensors(checkpoint) if (kind := tensor_kind(t)) is not None]
    if found:
        raise CheckpointError(
            f"the checkpoint holds tensors no architecture here can hold: {_few(found)}. Save dense tensors of a "
            "float or integer dtype (e.g. tensor.to_dense(), tensor.dequantize(), tensor.float())"
        )


# --- safetensors -----------------------------------------------------------------------------------------------------


def _read_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    """Check the header (it declares every size) against the caps and the file, then let safetensors read it."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if header_len <= 0 or header_len > MAX_SAFETENSORS_HEADER or header_len + 8 > len(data):
        raise CheckpointError("not a valid safetensors file (bad header)")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (ValueError, RecursionError) as error:
        raise CheckpointError(
            f"not a valid safetensors file (its header is not JSON: {type(error).__name__})"
        ) from error
    if not isinstance(header, dict):
        raise CheckpointError("not a valid safetensors file (its header is not a JSON object)")
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > MAX_CHECKPOINT_TENSORS:
        raise CheckpointError(
            f"the safetensors file declares {len(entries):,} tensors; at most {MAX_CHECKPOINT_TENSORS:,} are read"
        )
    buffer = len(data) - 8 - header_len
    spans = sorted(_safetensors_span(name, entry, buffer) for name, entry in entries.items())
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise CheckpointError(
                f"not a valid safetensors file (tensor {name!r} starts at byte {begin:,}, not {end:,}: tensors overlap "
                "or leave gaps)"
            )
        end = stop
    if end != buffer:
        raise CheckpointError(f"not a valid safetensors file (its tensors cover {end:,} of {buffer:,} data bytes)")
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"not a valid safetensors file ({error})") from error


def _safetensors_span(name: str, entry: object, buffer: int) -> tuple[int, int, str]:
    """``(begin, end, name)`` of one header entry, after checking its dtype, shape and offsets against ``buffer``."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise CheckpointError(f"not a valid safetensors file (entry {name!r} lacks dtype, shape or data_offsets)")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype in _SAFETENSORS_REFUSED:
        raise CheckpointError(
            f"tensor {name!r} is {_SAFETENSORS_REFUSED[dtype]} ({dtype}): no architecture here holds it; save float "
            "or integer tensors"
        )
    if dtype not in _SAFETENSORS_DTYPES:
        raise CheckpointError(f"tensor {name!r} has an unknown safetensors dtype {str(dtype)[:20]!r}")
    if not _ints(shape, 0) or not _ints(offsets, 0) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise CheckpointError(f"not a valid safetensors file (entry {name!r} has a bad shape or data_offsets)")
    declared = math.prod(shape) * _SAFETENSORS_DTYPES[dtype]  # Python ints: a huge shape cannot overflow
    if offsets[1] > buffer or offsets[1] - offsets[0] != declared:
        raise CheckpointError(
            f"not a valid safetensors file (tensor {name!r} declares {declared:,} bytes at offsets {offsets[0]:,}.."
            f"{offsets[1]:,} of a {buffer:,}-byte data buffer)"
        )
    return offsets[0], offsets[1], name


def _ints(values: object, minimum: int) -> bool:
    return isinstance(values, list) and all(type(v) is int and v >= minimum for v in values)


# --- torch.save's zip format ---------------------------------------------------------------------------------------


def _check_torch_zip(data: bytes) -> None:
    """Check a zip checkpoint's records and pickle against the caps and the file, as ``torch.save`` writes them:
    uncompressed records, each inside the file and apart from the others, one ``<archive>/data.pkl``, and every
    storage the pickle declares the size of its record."""
    records = _zip_records(data)
    spans = sorted((_record_span(data, record), record.filename) for record in records)
    for (before, _), ((start, _), name) in zip(spans, spans[1:]):
        if start < before[1]:
            raise CheckpointError(
                f"the checkpoint's zip record {name!r} overlaps another; torch.save never writes that"
            )
    prefix = records[0].filename.split("/", 1)[0] if records else ""
    sizes = {r.filename: r.file_size for r in records}
    pickled = f"{prefix}/data.pkl"
    if pickled not in sizes:
        raise CheckpointError("the zip file is not a torch checkpoint (it has no data.pkl)")
    if sizes[pickled] > MAX_CHECKPOINT_PICKLE_BYTES:
        raise CheckpointError(
            f"the checkpoint's pickle (data.pkl) is {sizes[pickled] / 1e6:.1f} MB; at most "
            f"{MAX_CHECKPOINT_PICKLE_BYTES / 1e6:.1f} MB are read"
        )
    start = next(span[0] for span, name in spans if name == pickled)
    storages, _ = _DryRun.scan(data, start, stop=start + sizes[pickled], pid_length=5)
    for key, nbytes in storages.items():
        record = sizes.get(f"{prefix}/data/{key}")
        if record is None:
            raise CheckpointError(f"the checkpoint's pickle names storage {key[:20]!r}, which has no record")
        if record != nbytes:
            raise CheckpointError(
                f"storage {key[:20]!r} declares {nbytes:,} bytes but its record holds {record:,}; torch.save writes "
                "them equal"
            )


def _zip_records(data: bytes) -> list[zipfile.ZipInfo]:
    """The zip's records, once the end record's entry count is within the cap (``zipfile`` builds an object per
    entry); refuses duplicate names (readers disagree on which one counts) and TorchScript."""
    try:
        end = zipfile._EndRecData(io.BytesIO(data))  # CPython's reader of the end record, zip64 included
    except OSError as error:
        raise CheckpointError("the checkpoint is a corrupted zip file") from error
    if end is None:
        raise CheckpointError("the checkpoint is a corrupted or truncated zip file (no end of central directory)")
    # zipfile reads as many headers as fit in the directory's declared byte size, whatever the entry count says: the
    # headers' signatures in the bytes it would read (the zip64 end records included) bound the objects it builds.
    location = end[zipfile._ECD_LOCATION]
    headers = data.count(_CENTRAL_MAGIC, max(0, location - end[zipfile._ECD_SIZE] - _ZIP64_END_RECORDS), location)
    declared = max(end[zipfile._ECD_ENTRIES_TOTAL], headers)
    if declared > MAX_CHECKPOINT_TENSORS + _TORCH_RECORDS:
        raise CheckpointError(
            f"the checkpoint's zip declares {declared:,} records; at most {MAX_CHECKPOINT_TENSORS + _TORCH_RECORDS:,} "
            "are read"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as error:
        raise CheckpointError(f"the checkpoint is a corrupted zip file ({error})") from error
    names = [r.filename for r in records]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise CheckpointError(f"the checkpoint's zip has two records named {twice!r}; torch.save never writes that")
    if any(name.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for name in names):
        raise CheckpointError("TorchScript archives are never loaded; save a state dict (.safetensors or .pt)")
    return records


def _record_span(data: bytes, record: zipfile.ZipInfo) -> tuple[int, int]:
    """Where a record's bytes are in ``data`` (its local header's fields are read: they may differ from the central
    directory's); refuses records ``torch.save`` never writes: compressed, encrypted, or reaching past the file."""
    if record.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(
            f"the checkpoint's zip record {record.filename!r} is compressed ({record.compress_size:,} bytes declaring "
            f"{record.file_size:,}); torch.save writes records uncompressed: save the file again with torch.save"
        )
    if record.flag_bits & 1 or record.compress_size != record.file_size:
        raise CheckpointError(f"the checkpoint's zip record {record.filename!r} is encrypted or declares two sizes")
    offset = record.header_offset
    if offset < 0 or offset + _LOCAL_HEADER.size > len(data):
        raise CheckpointError(f"the checkpoint's zip record {record.filename!r} starts past the end of the file")
    signature, name_length, extra_length = _LOCAL_HEADER.unpack_from(data, offset)
    start = offset + _LOCAL_HEADER.size + name_length + extra_length
    if signature != _ZIP_MAGIC or start + record.file_size > len(data):
        raise CheckpointError(
            f"the checkpoint's zip record {record.filename!r} declares {record.file_size:,} bytes past the end of the "
            "file (truncated or corrupted)"
        )
    return start, start + record.file_size


# --- the legacy (non-zip) torch.save format ------------------------------------------------------------------------


def _check_legacy_torch(data: bytes) -> None:
    """Check a legacy ``torch.save`` file (``_use_new_zipfile_serialization=False``): five pickles (magic number,
    protocol, system info, the object, the storage keys) then each storage as an 8-byte element count and its bytes
    (torch.serialization ``_legacy_save``). torch allocates each storage at its declared size before reading it, so the
    declared bytes must fit in what follows the pickles."""
    magic, end = _DryRun.scan(data, 0, limit=_LEGACY_HEAD_BYTES)
    if magic != _LEGACY_MAGIC:
        raise CheckpointError(_NOT_TORCH)
    _, end = _DryRun.scan(data, end, limit=_LEGACY_HEAD_BYTES)
    info, end = _DryRun.scan(data, end, limit=_LEGACY_HEAD_BYTES)
    if not isinstance(info, dict):
        raise CheckpointError(_NOT_TORCH)
    storages, end = _DryRun.scan(data, end, pid_length=6)
    keys, end = _DryRun.scan(data, end)
    if not isinstance(keys, list) or len(keys) > MAX_CHECKPOINT_TENSORS:
        raise CheckpointError("the checkpoint's list of storages is corrupted or too long")
    declared = sum(8 + nbytes for nbytes in storages.values())
    if declared > len(data) - end:
        raise CheckpointError(
            f"the checkpoint's storages declare {declared:,} bytes but only {len(data) - end:,} follow "
            "(truncated or corrupted)"
        )


def _torch_load(data: bytes) -> object:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except EOFError as error:  # its message is empty: say what happened
        raise CheckpointError("the checkpoint is truncated (unexpected end of file)") from error
    except Exception as error:  # UnpicklingError, RuntimeError, zip errors...: all mean "refused"
        # torch's own message is not shown: it has terminal escape codes and suggests switching the safe loader off.
        raise CheckpointError(
            f"{REFUSED}: this file holds pickled code or objects, or is corrupted, and was refused without running it "
            f"({type(error).__name__})"
        ) from error


class _GlobalType(type):
    """Calling a ``_Global`` (``REDUCE``) reports the call to its scan instead of building anything."""

    def __call__(cls, *args: object) -> _Built:
        return cls.scan.called(cls, args)


class _Global(metaclass=_GlobalType):
    """A global a pickle names (``torch._utils._rebuild_tensor_v2``), standing in for it: a class, since ``NEWOBJ``
    takes one (torch pickles jagged nested tensors so), whose construction builds nothing either."""

    name = ""
    scan: _DryRun

    def __new__(cls, *args: object, **kwargs: object) -> _Built:
        return cls.scan.called(cls, args)


class _Built:
    """What a call in the pickle would have returned. What the pickle then puts in it (``BUILD``'s state,
    ``SETITEMS``' items into an ``OrderedDict``, ``APPENDS``) is dropped: only the declarations are checked."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __setstate__(self, state: object) -> None:
        pass

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def append(self, value: object) -> None:
        pass

    def extend(self, values: object) -> None:
        pass


@dataclass(frozen=True)
class _Storage:
    """A storage as a pickle declares it: its key and its size in elements of ``itemsize`` bytes."""

    key: str
    numel: int
    itemsize: int


class _DryRun(pickle.Unpickler):
    """Reads a checkpoint's pickle with every global replaced by a ``_Global`` that builds nothing, to check what it
    declares before torch builds it: the number of calls and tensors, each storage's size, each tensor's extent in its
    storage. Nothing the pickle names is imported or run; the counts stop the scan as soon as they pass the caps."""

    _REBUILDS = ("torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_qtensor")

    def __init__(self, stream: io.BytesIO, pid_length: int) -> None:
        super().__init__(stream, encoding="utf-8")
        self.pid_length = pid_length
        self.calls = 0
        self.tensors = 0
        self.storages: dict[str, int] = {}
        self.globals: dict[str, type[_Global]] = {}

    @classmethod
    def scan(
        cls,
        data: bytes,
        start: int,
        *,
        stop: int | None = None,
        limit: int = MAX_CHECKPOINT_PICKLE_BYTES,
        pid_length: int = 0,
    ) -> tuple[object, int]:
        """Read the pickle at ``data[start:stop]`` (at most ``limit`` bytes of it).

        Returns:
            ``(result, end)``: with ``pid_length`` (5 for the zip format's storage references, 6 for the legacy
            format's) the storages declared, key -> bytes; without, the pickle's plain value (references refused).
            ``end`` is the offset just after the pickle.

        Raises:
            CheckpointError: a cap passed, a storage declared twice with two sizes, an extent past its storage, a
                pickle over the size cap, truncated or corrupt.
        """
        stop = len(data) if stop is None else stop
        pickled = data[start : min(stop, start + limit)]
        window = io.BytesIO(pickled)
        scan = cls(window, pid_length)
        try:
            _check_opcodes(pickled)
            value = scan.load()
        except CheckpointError:
            raise
        except EOFError as error:
            if start + limit < stop:
                raise CheckpointError(f"the checkpoint's pickle is over {limit / 1e6:.1f} MB, the most read") from error
            raise CheckpointError("the checkpoint is truncated (unexpected end of file)") from error
        except Exception as error:  # any failure of a hostile pickle is a refusal
            raise CheckpointError(
                f"{REFUSED}: this file's pickle is corrupted or not what torch.save writes, and was refused without "
                f"running it ({type(error).__name__})"
            ) from error
        return (scan.storages if pid_length else value), start + window.tell()

    def find_class(self, module: str, name: str) -> type[_Global]:
        self._count()
        dotted = f"{module}.{name}"
        if dotted not in self.globals:
            if len(self.globals) >= _MAX_PICKLE_GLOBALS:
                raise CheckpointError(f"{REFUSED}: this file's pickle names more than {_MAX_PICKLE_GLOBALS} globals")
            self.globals[dotted] = _GlobalType(name, (_Global,), {"name": dotted, "scan": self, "__slots__": ()})
        return self.globals[dotted]

    def persistent_load(self, pid: object) -> _Storage:
        self._count()
        if not self.pid_length:
            raise CheckpointError(_NOT_TORCH)
        if not isinstance(pid, tuple) or len(pid) != self.pid_length or pid[0] != "storage":
            raise CheckpointError("the checkpoint's pickle references data in a form torch.save never writes")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if (
            not (isinstance(storage_type, type) and issubclass(storage_type, _Global))
            or not isinstance(key, str)
            or type(numel) is not int
            or numel < 0
        ):
            raise CheckpointError("the checkpoint's pickle declares a storage in a form torch.save never writes")
        itemsize = _storage_itemsize(storage_type.name)
        nbytes = numel * itemsize
        if self.storages.setdefault(key, nbytes) != nbytes:
            raise CheckpointError(f"the checkpoint's pickle declares storage {key[:20]!r} with two sizes")
        return _Storage(key, numel, itemsize)

    def called(self, function: type[_Global], args: tuple) -> _Built:
        self._count()
        if function.name.startswith("torch._utils._rebuild"):  # every tensor form, parameters included
            self.tensors += 1
            if self.tensors > MAX_CHECKPOINT_TENSORS:
                raise CheckpointError(
                    f"the checkpoint declares more than {MAX_CHECKPOINT_TENSORS:,} tensors; at most that many are read"
                )
        if function.name in self._REBUILDS and args and isinstance(args[0], _Storage):
            _check_extent(args)
        elif function.name == "torch._utils._rebuild_tensor_v3" and len(args) > 6 and isinstance(args[0], _Storage):
            # torch.save's form for dtypes without a typed storage (float8, unsigned...): an untyped storage in bytes
            # and the dtype as the seventh argument; the extent counts elements of that dtype.
            itemsize = _dtype_itemsize(args[6])
            storage = args[0]
            _check_extent((_Storage(storage.key, storage.numel * storage.itemsize // itemsize, itemsize), *args[1:4]))
        return _Built(function.name)

    def _count(self) -> None:
        self.calls += 1
        if self.calls > _MAX_PICKLE_CALLS:
            raise CheckpointError(
                f"the checkpoint's pickle builds more than {_MAX_PICKLE_CALLS:,} objects; a checkpoint of "
                f"{MAX_CHECKPOINT_TENSORS:,} tensors needs fewer"
            )


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _check_opcodes(pickled: bytes) -> None:
    """Walk the pickle's opcodes (``pickletools.genops``: it builds nothing) before an unpickler runs them: at most
    ``_MAX_PICKLE_OPCODES``, and each memo index below the number of opcodes before it, as a pickler numbers them.
    CPython's unpickler sizes its memo array to twice the largest index it is given: a 9-byte pickle storing one
    object at index 2**26 allocates 1 GiB. A pickle that cannot be walked (truncated, an unknown opcode) is left to
    the unpickler, which refuses it at the same opcode."""
    try:
        for count, (opcode, argument, _) in enumerate(pickletools.genops(pickled)):
            if count >= _MAX_PICKLE_OPCODES:
                raise CheckpointError(
                    f"the checkpoint's pickle holds more than {_MAX_PICKLE_OPCODES:,} opcodes; a checkpoint of "
                    f"{MAX_CHECKPOINT_TENSORS:,} tensors needs fewer"
                )
            if opcode.name in _MEMO_PUTS and not (type(argument) is int and 0 <= argument < count):
                raise CheckpointError(
                    f"the checkpoint's pickle stores an object at memo index {argument!r:.20} after {count:,} opcodes; "
                    "a pickler numbers them in order"
                )
    except CheckpointError:
        raise
    except ValueError:
        return


@lru_cache(maxsize=64)
def _storage_itemsize(name: str) -> int:
    """Bytes per element of a storage type a pickle names (``torch.FloatStorage``, ``torch.cuda.HalfStorage``,
    ``torch.storage.UntypedStorage``), from torch's own table."""
    module, _, short = name.rpartition(".")
    if name == "torch.storage.UntypedStorage":
        return 1
    dtype = torch.storage._storage_type_to_dtype_map().get(short) if module in ("torch", "torch.cuda") else None
    if dtype is None:
        raise CheckpointError(f"the checkpoint declares a storage of unknown type {name[:40]!r}")
    return torch._utils._element_size(dtype)


def _dtype_itemsize(dtype: object) -> int:
    """Bytes per element of a dtype a pickle names (``torch.float8_e4m3fn``); refuses anything else."""
    module, _, name = getattr(dtype, "name", "").rpartition(".")
    found = getattr(torch, name, None) if module == "torch" else None
    if not isinstance(found, torch.dtype):
        raise CheckpointError(f"the checkpoint declares a tensor of an unknown dtype {str(name)[:40]!r}")
    return found.itemsize


def _check_extent(args: tuple) -> None:
    """A tensor's declared ``(storage, offset, size, stride)`` must lie inside the storage: the last element it
    reaches, ``offset + sum((size_i - 1) * stride_i)``, is below the storage's element count (torch's own rule,
    ``computeStorageNbytes`` in ATen; in Python integers, so huge declared sizes cannot overflow)."""
    storage, offset, size, stride = (*args[:4], None, None, None)[:4]
    shape_ok = isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
    if not shape_ok or not all(type(v) is int and v >= 0 for v in (offset, *size, *stride)):
        raise CheckpointError(f"a tensor in storage {storage.key[:20]!r} declares a bad size, stride or offset")
    if 0 in size:
        return
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.numel:
        raise CheckpointError(
            f"a tensor of shape {size if len(size) <= 8 else '(...)'} declares elements up to {last + 1:,} in storage "
            f"{storage.key[:20]!r} of {storage.numel:,}: its extent reaches past the bytes behind it"
        )
