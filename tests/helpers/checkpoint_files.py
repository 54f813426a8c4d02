"""Checkpoint files written byte by byte: zips as torch.save lays them out (and as it never would), pickles declaring
any storage and extent, and a deflate bomb. Shared by tests/test_checkpoints.py and the app and browser tests.

The zip layout follows PKWARE's APPNOTE.TXT (4.3.7 local header, 4.3.12 central directory header, 4.3.16 end of
central directory record); the pickle's storage references are torch.save's (torch/serialization.py ``_save``:
``("storage", storage_type, key, location, numel)``, tensors rebuilt by ``torch._utils._rebuild_tensor_v2``).
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

ONE_GIB = 1 << 30


@dataclass(frozen=True)
class Record:
    """One zip record. ``data`` is what the file holds (already deflated when ``method`` is 8); ``size`` and ``crc``
    are what the headers declare (default: those of ``data``); ``offset_of`` makes the central directory point at the
    local header of an earlier record (overlapping records)."""

    name: str
    data: bytes
    method: int = 0
    size: int | None = None
    crc: int | None = None
    offset_of: str | None = None
    zip64: bool = False  # the central directory declares the sizes in a zip64 extra field (APPNOTE 4.5.3)
    compressed_size: int | None = None  # what the central directory declares (default: the length of ``data``)


def zip_bytes(records: list[Record]) -> bytes:
    """The zip holding ``records`` in order, as written by hand (Python's zipfile refuses most of what tests need)."""
    out = io.BytesIO()
    offsets: dict[str, int] = {}
    central = []
    local_header, central_header = struct.Struct("<4s5H3I2H"), struct.Struct("<4s6H3I5H2I")
    for record in records:
        name = record.name.encode()
        size = len(record.data) if record.size is None else record.size
        crc = zlib.crc32(record.data) if record.crc is None else record.crc
        offsets.setdefault(record.name, out.tell())
        offset = offsets[record.offset_of] if record.offset_of else out.tell()
        if not record.offset_of:
            out.write(local_header.pack(b"PK\x03\x04", 20, 0, record.method, 0, 0x21, crc, len(record.data),
                                        min(size, 0xFFFFFFFF), len(name), 0))  # fmt: skip
            out.write(name + record.data)
        sizes = (len(record.data) if record.compressed_size is None else record.compressed_size, size)
        extra = struct.pack("<2H2Q", 1, 16, sizes[1], sizes[0]) if record.zip64 else b""
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if record.zip64 else sizes
        central.append(
            central_header.pack(
                b"PK\x01\x02", 45, 45, 0, record.method, 0, 0x21, crc, *sizes, len(name), len(extra), 0, 0, 0, 0, offset
            )
            + name
            + extra  # fmt: skip
        )
    start = out.tell()
    out.write(b"".join(central))
    out.write(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(central), len(central), out.tell() - start, start, 0))
    return out.getvalue()


def deflated_zeros(size: int) -> tuple[bytes, int]:
    """A raw deflate stream that inflates to ``size`` zero bytes (a multiple of 1 MiB), and the CRC-32 of those bytes.

    One MiB of zeros is compressed once and its full-flush block (which refers to nothing before it) repeated: about
    1 KB per MiB, so 1 GiB comes from about 1 MB, as in a zip bomb."""
    block = 1 << 20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    one = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc, zeros = 0, bytes(block)
    for _ in range(size // block):
        crc = zlib.crc32(zeros, crc)
    return one * (size // block) + compressor.flush(zlib.Z_FINISH), crc


@dataclass(frozen=True)
class Storage:
    """A storage reference as torch.save pickles it: ``numel`` elements of ``type_name`` under record ``key``."""

    key: str
    numel: int
    type_name: str = "FloatStorage"


@dataclass(frozen=True)
class Tensor:
    """A tensor as torch.save pickles it: ``_rebuild_tensor_v2(storage, offset, size, stride, False, {})``."""

    storage: Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def __reduce__(self) -> tuple:
        args = (self.storage, self.offset, self.size, self.stride, False, OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args)


@dataclass(frozen=True)
class TensorV3:
    """A tensor as torch.save pickles dtypes without a typed storage (float8, unsigned 16-64 bit...):
    ``_rebuild_tensor_v3(untyped storage, offset, size, stride, False, OrderedDict(), dtype)``."""

    storage: Storage  # of type_name "UntypedStorage": numel counts bytes
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    def __reduce__(self) -> tuple:
        args = (self.storage, self.offset, self.size, self.stride, False, OrderedDict(), self.dtype)
        return (torch._utils._rebuild_tensor_v3, args)


class _Pickler(pickle.Pickler):
    legacy = False

    def persistent_id(self, obj: object) -> tuple | None:
        if not isinstance(obj, Storage):
            return None
        pid = ("storage", getattr(torch, obj.type_name), obj.key, "cpu", obj.numel)
        return (*pid, None) if self.legacy else pid


def torch_pickle(obj: object, *, legacy: bool = False) -> bytes:
    """``obj`` pickled as torch.save pickles it (protocol 2), ``Storage``/``Tensor`` as storage references."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, protocol=2)
    pickler.legacy = legacy
    pickler.dump(obj)
    return buffer.getvalue()


def torch_zip(obj: object, storages: dict[str, bytes], *, extra: list[Record] = ()) -> bytes:
    """A zip checkpoint as torch.save lays it out: ``archive/data.pkl`` (``obj``), the storages' records, ``byteorder``
    and ``version``, every record stored; ``extra`` records are appended."""
    records = [Record("archive/data.pkl", torch_pickle(obj)), Record("archive/byteorder", b"little")]
    records += [Record(f"archive/data/{key}", data) for key, data in storages.items()]
    return zip_bytes([*records, Record("archive/version", b"3\n"), *extra])


def zip_bomb(inflated: int = ONE_GIB) -> bytes:
    """A checkpoint whose one storage record is deflated: about ``inflated / 1000`` bytes declaring ``inflated``.
    torch.load would inflate it into a float32 tensor of ``inflated / 4`` elements."""
    data, crc = deflated_zeros(inflated)
    numel = inflated // 4
    pickled = {"fc.weight": Tensor(Storage("0", numel), 0, (numel,), (1,))}
    return torch_zip(pickled, {}, extra=[Record("archive/data/0", data, method=8, size=inflated, crc=crc)])


def saved(obj: object, **kwargs: object) -> bytes:
    """``obj`` as torch.save writes it (``kwargs`` to torch.save)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def legacy_file(obj: object, storages: dict[str, tuple[int, bytes]]) -> bytes:
    """A legacy (non-zip) torch.save file (torch/serialization.py ``_legacy_save``): magic number, protocol version,
    system info, ``obj``, the storage keys, then each storage as its declared element count (8 bytes) and bytes."""
    buffer = io.BytesIO()
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    for value in (torch.serialization.MAGIC_NUMBER, torch.serialization.PROTOCOL_VERSION, info):
        pickle.dump(value, buffer, protocol=2)
    buffer.write(torch_pickle(obj, legacy=True))
    pickle.dump(list(storages), buffer, protocol=2)
    for numel, data in storages.values():
        buffer.write(struct.pack("<q", numel) + data)
    return buffer.getvalue()
