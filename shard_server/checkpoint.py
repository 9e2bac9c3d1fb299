"""Index checkpoints: one file, written atomically (temp file, fsync, rename, fsync of the directory),
with a CRC-32 over the whole content so a torn or corrupted file is detected and rebuilt, never trusted
(pure: no grpc).

Layout: MAGIC | u32 header length | header JSON | u64 index length | index bytes (faiss.serialize_index)
| u64 tombstone count | tombstones (int64) | u32 CRC-32 of everything before it.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

from ragcluster.fsutil import atomic_file

MAGIC = b"RCCKPT01"


class CorruptCheckpoint(Exception):
    pass


def write_checkpoint(path: Path, header: dict, index_bytes: np.ndarray, tombstones: np.ndarray) -> int:
    """Write atomically; returns the file size."""
    path = Path(path)
    head = json.dumps(header).encode()
    tomb = np.ascontiguousarray(tombstones, dtype="<i8")
    index_view = np.ascontiguousarray(index_bytes, dtype=np.uint8).data  # a memoryview, not a copy
    crc = 0
    with atomic_file(path) as f:
        for part in (MAGIC, struct.pack("<I", len(head)), head, struct.pack("<Q", len(index_view)), index_view,
                     struct.pack("<Q", len(tomb)), tomb.tobytes()):
            f.write(part)
            crc = zlib.crc32(part, crc)
        f.write(struct.pack("<I", crc))
    return path.stat().st_size


def read_checkpoint(path: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """(header, index bytes, tombstones); raises CorruptCheckpoint on any inconsistency."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CorruptCheckpoint(f"cannot read {path}: {exc}") from exc
    try:
        if data[:8] != MAGIC:
            raise CorruptCheckpoint("bad magic")
        if len(data) < 8 + 4 + 4 or zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
            raise CorruptCheckpoint("checksum mismatch")
        pos = 8
        (head_len,) = struct.unpack_from("<I", data, pos)
        pos += 4
        header = json.loads(data[pos : pos + head_len])
        pos += head_len
        (index_len,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        index_bytes = np.frombuffer(data, dtype=np.uint8, count=index_len, offset=pos)
        pos += index_len
        (n_tomb,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        tombstones = np.frombuffer(data, dtype="<i8", count=n_tomb, offset=pos).astype(np.int64)
        pos += 8 * n_tomb
        if pos != len(data) - 4:
            raise CorruptCheckpoint("trailing bytes")
    except (struct.error, ValueError, json.JSONDecodeError) as exc:
        raise CorruptCheckpoint(f"malformed: {exc}") from exc
    return header, index_bytes, tombstones
