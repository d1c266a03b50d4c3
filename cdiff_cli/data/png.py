"""A fast PNG encoder for 8-bit RGB or gray pictures: the rows unfiltered, deflated by ISA-L (the
``isal`` package, level 2) when it is installed and by the standard library's ``zlib`` (level 1)
otherwise. Any PNG reader opens the file; its pixels are the ones given.

Why not Pillow's encoder: on this project's 2-core CPU a 520x500 RGB picture of a brain with its
heat map takes about 17 ms with Pillow at level 1 (run-length strategy, 324 KB), against about 2.5 ms
here (248 KB): the picture step of ``cdiff localize`` was most of its CPU time beside the network
(``benchmarks/bench_infer.py``). ISA-L's deflate also runs without the GIL, beside other threads.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from cdiff_cli.data.gz import deflate_fast

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """The PNG file of ``pixels``, uint8 (H, W) gray or (H, W, 3) RGB, with ``text`` as text chunks
    (tEXt when Latin-1, else UTF-8 iTXt; keys of 1-79 Latin-1 characters)."""
    a = np.asarray(pixels)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)) or 0 in a.shape[:2]:
        raise ValueError(f"expected a non-empty uint8 (H, W) or (H, W, 3) picture, got {a.dtype} {a.shape}")
    h, w = a.shape[:2]
    colour = 0 if a.ndim == 2 else 2
    rows = np.zeros((h, 1 + a[0].size), np.uint8)  # each row: filter byte 0 (none), then its pixels
    rows[:, 1:] = a.reshape(h, -1)
    out = [_SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))]
    for key, value in (text or {}).items():
        k = key.encode("latin-1", "replace")[:79] or b"Comment"
        try:
            out.append(_chunk(b"tEXt", k + b"\0" + value.encode("latin-1")))
        except UnicodeEncodeError:  # uncompressed international text, no language tag
            out.append(_chunk(b"iTXt", k + b"\0\0\0\0\0" + value.encode("utf-8")))
    out += [_chunk(b"IDAT", deflate_fast(memoryview(rows).cast("B"))), _chunk(b"IEND", b"")]
    return b"".join(out)
