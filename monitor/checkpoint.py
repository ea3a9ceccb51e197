"""Checkpoints: the engine's whole state together with the input offsets it covers.

One file per checkpoint, ``ckpt-<sequence>.lmc`` in the checkpoint directory::

    b"LASTMILE-CKPT\\n" | version (u32, big-endian) | msgpack body | sha256 of all before it

The body holds plain data only (numbers, strings, lists, maps) and the state arrays as raw
little-endian float64 bytes with their shape, so loading never unpickles or evaluates
anything. Writing is atomic: the file is written under a temporary name, fsynced, renamed into
place and the directory fsynced; the previous checkpoint is kept, older ones are removed.

Recovery (also in the README): a checkpoint that fails its checksum or version check raises
:class:`CheckpointError` naming the file. Move that file aside and start again: the previous
checkpoint is loaded and the input is re-read from *its* offsets, so nothing is lost or
counted twice. With no checkpoint left, lastmile starts with empty state from the offsets
committed in Kafka (outcomes before them are not recounted; pending joins are lost).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

MAGIC = b"LASTMILE-CKPT\n"
VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{12})\.lmc$")
_DTYPE = "<f8"  # the only array type a checkpoint may contain


class CheckpointError(Exception):
    """A checkpoint exists but cannot be used; the message says which file and what to do."""


@dataclass(frozen=True)
class Checkpoint:
    sequence: int
    path: Path
    offsets: dict[str, dict[int, int]]  # topic → partition → next offset to read
    data: dict[str, Any]
    arrays: dict[str, np.ndarray]
    created: float


def _encode(sequence: int, offsets: dict[str, dict[int, int]], data: dict[str, Any],
            arrays: dict[str, np.ndarray]) -> list[bytes]:
    """The file as parts (header, body, digest): a large body is never copied to be framed."""
    body = {
        "sequence": sequence,
        "created": time.time(),
        "offsets": {t: {str(p): int(o) for p, o in parts.items()} for t, parts in offsets.items()},
        "data": data,
        "arrays": {name: {"shape": list(a.shape), "bytes": np.ascontiguousarray(a, dtype=_DTYPE).tobytes()}
                   for name, a in arrays.items()},
    }
    header = MAGIC + struct.pack(">I", VERSION)
    encoded = msgspec.msgpack.encode(body)
    digest = hashlib.sha256(header)
    digest.update(encoded)
    return [header, encoded, digest.digest()]


def _decode(path: Path, blob: bytes) -> Checkpoint:
    recovery = (f"move {path} aside and restart: the previous checkpoint (if any) is loaded and its input "
                f"re-read, so nothing is lost or counted twice")
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4 + 32:
        raise CheckpointError(f"{path} is not a lastmile checkpoint; {recovery}")
    view = memoryview(blob)
    head, digest = view[:-32], view[-32:]
    if hashlib.sha256(head).digest() != digest:
        raise CheckpointError(f"{path} is corrupt (checksum mismatch: truncated or damaged); {recovery}")
    (version,) = struct.unpack(">I", head[len(MAGIC):len(MAGIC) + 4])
    if version != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}, this lastmile reads {VERSION}; "
                              f"run the lastmile that wrote it to drain, or {recovery}")
    try:
        body = msgspec.msgpack.decode(head[len(MAGIC) + 4:])
        arrays = {}
        for name, spec in body["arrays"].items():
            arrays[name] = np.frombuffer(spec["bytes"], dtype=_DTYPE).reshape(spec["shape"]).copy()
        offsets = {t: {int(p): int(o) for p, o in parts.items()} for t, parts in body["offsets"].items()}
        return Checkpoint(int(body["sequence"]), path, offsets, body["data"], arrays, float(body["created"]))
    except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has a valid checksum but an unreadable body ({exc}); {recovery}") from None


class CheckpointStore:
    """The checkpoint directory: atomic writes, newest-first reads, the previous one kept."""

    def __init__(self, directory: str | os.PathLike[str], keep: int = 2):
        self.dir = Path(directory)
        self.keep = max(keep, 1)

    def _existing(self) -> list[tuple[int, Path]]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found)

    def latest_sequence(self) -> int:
        """Sequence number of the newest checkpoint file (0: none), without reading it."""
        existing = self._existing()
        return existing[-1][0] if existing else 0

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint, or None when there is none. Raises CheckpointError if it is damaged."""
        existing = self._existing()
        if not existing:
            return None
        _, path = existing[-1]
        return _decode(path, path.read_bytes())

    def save(self, offsets: dict[str, dict[int, int]], data: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        existing = self._existing()
        sequence = existing[-1][0] + 1 if existing else 1
        final = self.dir / f"ckpt-{sequence:012d}.lmc"
        tmp = self.dir / f".{final.name}.tmp-{os.getpid()}"
        parts = _encode(sequence, offsets, data, arrays)
        with open(tmp, "wb") as fh:
            for part in parts:
                fh.write(part)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself is durable before offsets are committed
        finally:
            os.close(dir_fd)
        for _, old in existing[: max(len(existing) + 1 - self.keep, 0)]:
            old.unlink(missing_ok=True)
        return final
