"""Image files built in memory for the decoding tests (tests/test_imaging.py) and the app, browser and soak tests that
upload them: any declared size in a few bytes (a 1-bit PNG, a GIF's logical screen), an EXIF orientation."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of any declared size, built row by row (a few KB even for 30000 x 30000)."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    block_rows = max(1, min(height, (1 << 22) // len(row)))
    parts = []
    done = 0
    while done < height:
        n = min(block_rows, height - done)
        parts.append(compressor.compress(row * n))
        done += n
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )


def gif_declaring(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen declares ``width`` x ``height`` (Pillow reports the screen size)."""
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def with_orientation(array: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    params: dict[str, object] = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        params.update(quality=100, subsampling=0)
    return encode(Image.fromarray(array), fmt, **params)
