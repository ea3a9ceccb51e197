"""Checkpoints: the engine's whole state together with the input offsets it covers.

A checkpoint is a chain of files in the checkpoint directory: a full snapshot
``ckpt-<sequence>.lmc`` and the incremental ones written after it, ``ckpt-<sequence>.lmd``,
each holding what changed since the file before it (for the engine, the join's changes and the
slice rows that changed; the rest of its state is small and written whole). Every file::

    b"LASTMILE-CKPT\\n" | version (u32, big-endian) | length of the head (u64, big-endian)
    | msgpack head | zero padding to 8 bytes | array sections (each padded to 8 bytes)
    | sha256 of all before it

The head holds plain data only (numbers, strings, lists, maps): the sequence, the kind
(``full`` / ``delta``), the offsets, the engine's data and, for each array, its dtype (float64,
int64, uint32 or bytes), shape and place among the sections, which are the arrays' raw
little-endian bytes — so loading never unpickles or evaluates anything. An incremental file
also names its full snapshot (``base``), the file it continues (``parent``) and that file's
sha256, so a chain with a file lost from its middle, damaged, replaced or reordered never
loads (without its newest files, a chain is the consistent state of an earlier checkpoint).

Writing is atomic: each file is written under a temporary name, fsynced, renamed into place and
the directory fsynced; a crash before the rename leaves the chain as it was (the temporary file
is ignored, and removed by the next write). A full snapshot is written every ``full_every``
increments, or once the increments since the last one add up to ``delta_ratio`` of its size.
The newest ``keep`` chains are kept; older ones are removed when a full snapshot is written.

Recovery (also in the README): a file that fails its checksum, version or chain check raises
:class:`CheckpointError` naming the file and what to move aside. The chain before it is then
loaded and the input is re-read from *its* offsets, so nothing is lost or counted twice. With no
checkpoint left, lastmile starts with empty state from the offsets committed in Kafka
(outcomes before them are not recounted; pending joins are lost). Files written in format 1 (one
file per checkpoint) are still read.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

MAGIC = b"LASTMILE-CKPT\n"
VERSION = 2
_READABLE = (1, 2)
_NAME = re.compile(r"^ckpt-(\d{12})\.(lmc|lmd)$")
_TMP = re.compile(r"^\.ckpt-\d{12}\.(lmc|lmd)\.tmp-\d+$")
_KIND = {"lmc": "full", "lmd": "delta"}
_DTYPES = frozenset({"<f8", "<i8", "<u4", "|u1"})  # the only array types a checkpoint may contain
_HEAD = len(MAGIC) + 4 + 8

#: a full snapshot at least every this many incremental checkpoints
FULL_EVERY = 20
#: ... and as soon as the increments since the last one add up to this share of its size
DELTA_RATIO = 0.1


class CheckpointError(Exception):
    """A checkpoint exists but cannot be used; the message says which file and what to do."""


@dataclass(frozen=True)
class Checkpoint:
    sequence: int
    path: Path
    offsets: dict[str, dict[int, int]]  # topic → partition → next offset to read
    data: dict[str, Any]
    arrays: dict[str, np.ndarray]  # read-only
    created: float
    kind: str = "full"  # "full" or "delta"
    #: the chain before this file: (data, arrays) of its full snapshot and each increment after
    #: it, oldest first (empty for a full snapshot). ``Engine.restore(data, arrays, earlier)``.
    earlier: tuple[tuple[dict[str, Any], dict[str, np.ndarray]], ...] = ()
    files: tuple[Path, ...] = ()  # the chain's files, oldest first


@dataclass(frozen=True)
class _File:
    """One decoded file of a chain."""

    sequence: int
    path: Path
    kind: str
    base: int
    parent: int | None
    parent_digest: bytes | None
    offsets: dict[str, dict[int, int]]
    data: dict[str, Any]
    arrays: dict[str, np.ndarray]
    created: float
    digest: bytes
    size: int


@dataclass
class _Chain:
    """The newest chain, as this store last wrote or read it."""

    head: int  # sequence of its newest file
    digest: bytes  # that file's sha256
    base: int  # sequence of its full snapshot
    full_bytes: int
    deltas: int = 0
    delta_bytes: int = 0


def _pad(n: int) -> int:
    return -n % 8


def _encode(sequence: int, kind: str, base: int, parent: int | None, parent_digest: bytes | None,
            offsets: dict[str, dict[int, int]], data: dict[str, Any],
            arrays: dict[str, np.ndarray]) -> list[Any]:
    """The file but its digest, as parts (header, head, sections…): large arrays are never copied to be framed."""
    sections: list[Any] = []
    specs: dict[str, dict[str, Any]] = {}
    at = 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and np.little_endian is False):
            a = a.astype(a.dtype.newbyteorder("<"))
        dtype = a.dtype.str
        if dtype not in _DTYPES:
            raise TypeError(f"array {name!r} has dtype {dtype}; a checkpoint holds only {sorted(_DTYPES)}")
        raw = a.reshape(-1).view(np.uint8).data if a.size else memoryview(b"")
        specs[name] = {"dtype": dtype, "shape": list(a.shape), "offset": at, "length": raw.nbytes}
        sections.append(raw)
        if _pad(raw.nbytes):
            sections.append(bytes(_pad(raw.nbytes)))
        at += raw.nbytes + _pad(raw.nbytes)
    head = msgspec.msgpack.encode({
        "sequence": sequence,
        "created": time.time(),
        "kind": kind,
        "base": base,
        "parent": parent,
        "parent_digest": parent_digest,
        "offsets": {t: {str(p): int(o) for p, o in parts.items()} for t, parts in offsets.items()},
        "data": data,
        "arrays": specs,
    })
    header = MAGIC + struct.pack(">IQ", VERSION, len(head))
    return [header, head, bytes(_pad(len(header) + len(head))), *sections]


def _hash(parts: list[Any], into: Any) -> None:
    for part in parts:
        into.update(part)  # releases the GIL for large parts


def _recovery(path: Path) -> str:
    if path.suffix == ".lmd":
        return (f"move {path} and every later checkpoint file aside and restart: the chain before it is loaded "
                f"and its input re-read, so nothing is lost or counted twice")
    return (f"move {path} aside (with the incremental .lmd files after it) and restart: the previous checkpoint "
            f"(if any) is loaded and its input re-read, so nothing is lost or counted twice")


def _read(path: Path) -> Any:
    """The file's bytes, mapped rather than copied: the arrays of a checkpoint are views on them.
    Checkpoint files are never written again once in place (the store only adds and removes
    whole files), so what was verified is what is read."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return b""
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def _decode(path: Path, blob: Any) -> _File:
    recovery = _recovery(path)
    if len(blob) < len(MAGIC) + 4 + 32 or blob[:len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path} is not a lastmile checkpoint; {recovery}")
    view = memoryview(blob)
    head, digest = view[:-32], bytes(view[-32:])
    if hashlib.sha256(head).digest() != digest:
        raise CheckpointError(f"{path} is corrupt (checksum mismatch: truncated or damaged); {recovery}")
    (version,) = struct.unpack(">I", head[len(MAGIC):len(MAGIC) + 4])
    if version not in _READABLE:
        raise CheckpointError(f"{path} has checkpoint format version {version}, this lastmile reads "
                              f"{', '.join(map(str, _READABLE))}; run the lastmile that wrote it to drain, or {recovery}")
    try:
        if version == 1:
            body = msgspec.msgpack.decode(head[len(MAGIC) + 4:])
            arrays = {}
            for name, spec in body["arrays"].items():
                arrays[name] = np.frombuffer(spec["bytes"], dtype="<f8").reshape(spec["shape"])
            kind, base, parent, parent_digest = "full", int(body["sequence"]), None, None
        else:
            (length,) = struct.unpack(">Q", head[len(MAGIC) + 4:_HEAD])
            body = msgspec.msgpack.decode(head[_HEAD:_HEAD + length])
            start = _HEAD + length + _pad(_HEAD + length)
            end = len(head)
            arrays = {}
            for name, spec in body["arrays"].items():
                dtype = np.dtype(spec["dtype"]) if spec["dtype"] in _DTYPES else None
                lo = start + int(spec["offset"])
                hi = lo + int(spec["length"])
                if dtype is None or not start <= lo <= hi <= end or spec["length"] % dtype.itemsize:
                    raise ValueError(f"array {name!r}: bad type or extent")
                arrays[name] = np.frombuffer(blob, dtype=dtype, count=spec["length"] // dtype.itemsize,
                                             offset=lo).reshape(spec["shape"])
            kind, base = body["kind"], int(body["base"])
            parent = None if body["parent"] is None else int(body["parent"])
            parent_digest = body["parent_digest"]
            if kind not in ("full", "delta") or (kind == "delta") != (parent is not None):
                raise ValueError(f"kind {kind!r}")
        offsets = {t: {int(p): int(o) for p, o in parts.items()} for t, parts in body["offsets"].items()}
        return _File(int(body["sequence"]), path, kind, base, parent, parent_digest, offsets, body["data"], arrays,
                     float(body["created"]), digest, len(blob))
    except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has a valid checksum but an unreadable body ({exc}); {recovery}") from None


class CheckpointStore:
    """The checkpoint directory: atomic writes, chains of increments, the newest chain read back."""

    def __init__(self, directory: str | os.PathLike[str], keep: int = 2, full_every: int = FULL_EVERY,
                 delta_ratio: float = DELTA_RATIO):
        self.dir = Path(directory)
        self.keep = max(keep, 1)  # chains (a full snapshot and its increments) kept
        self.full_every = full_every
        self.delta_ratio = delta_ratio
        self._chain: _Chain | None = None

    def _existing(self) -> list[tuple[int, Path, str]]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p, _KIND[m.group(2)]) for p in self.dir.iterdir() if (m := _NAME.match(p.name))]
        return sorted(found)

    def latest_sequence(self) -> int:
        """Sequence number of the newest checkpoint file (0: none), without reading it."""
        existing = self._existing()
        return existing[-1][0] if existing else 0

    def latest(self) -> Checkpoint | None:
        """The state of the newest checkpoint file — its chain: the full snapshot before it and the
        increments after that — or None when there is none. Raises CheckpointError if a file of
        the chain is damaged or missing."""
        existing = self._existing()
        self._chain = None
        if not existing:
            return None
        fulls = [i for i, (_, _, kind) in enumerate(existing) if kind == "full"]
        if not fulls:
            path = existing[0][1]
            raise CheckpointError(f"{path} is an incremental checkpoint whose full snapshot is missing; "
                                  f"{_recovery(path)}")
        files: list[_File] = []
        for sequence, path, kind in existing[fulls[-1]:]:
            f = _decode(path, _read(path))
            if f.sequence != sequence or f.kind != kind:
                raise CheckpointError(f"{path} holds checkpoint {f.sequence} ({f.kind}), not what its name says; "
                                      f"{_recovery(path)}")
            if files:
                before = files[-1]
                if f.parent != before.sequence or f.parent_digest != before.digest or f.base != files[0].sequence:
                    raise CheckpointError(
                        f"{path} does not continue {before.path.name} (it continues checkpoint {f.parent} of the "
                        f"chain from {f.base}: a file of its chain is missing or was replaced); {_recovery(path)}")
            files.append(f)
        newest = files[-1]
        self._chain = _Chain(newest.sequence, newest.digest, files[0].sequence, files[0].size, len(files) - 1,
                             sum(f.size for f in files[1:]))
        return Checkpoint(newest.sequence, newest.path, newest.offsets, newest.data, newest.arrays, newest.created,
                          newest.kind, tuple((f.data, f.arrays) for f in files[:-1]), tuple(f.path for f in files))

    def delta_parent(self) -> int | None:
        """The sequence an incremental checkpoint may continue now (the newest file, when this store
        wrote or read its chain and no full snapshot is due), or None: the next one must be full."""
        chain = self._chain
        if chain is None or self.latest_sequence() != chain.head:
            return None
        if chain.deltas >= self.full_every or chain.delta_bytes >= self.delta_ratio * chain.full_bytes:
            return None
        return chain.head

    def save(self, offsets: dict[str, dict[int, int]], data: dict[str, Any], arrays: dict[str, np.ndarray],
             parent: int | None = None) -> Path:
        """Write a checkpoint: a full snapshot, or with ``parent`` (from :meth:`delta_parent`) an
        increment on the chain whose newest file that is. Durable when this returns."""
        self.dir.mkdir(parents=True, exist_ok=True)
        existing = self._existing()
        sequence = existing[-1][0] + 1 if existing else 1
        chain = self._chain
        if parent is not None and (chain is None or chain.head != parent or not existing or existing[-1][0] != parent):
            raise CheckpointError(f"an incremental checkpoint must continue the newest one (asked to continue "
                                  f"{parent}, the newest is {existing[-1][0] if existing else 'none'}): write a full one")
        kind = "full" if parent is None else "delta"
        final = self.dir / f"ckpt-{sequence:012d}.{'lmc' if kind == 'full' else 'lmd'}"
        tmp = self.dir / f".{final.name}.tmp-{os.getpid()}"
        if kind == "full":
            parts = _encode(sequence, kind, sequence, None, None, offsets, data, arrays)
        else:
            assert chain is not None
            parts = _encode(sequence, kind, chain.base, parent, chain.digest, offsets, data, arrays)
        self._chain = None  # until the file is in place
        digest = hashlib.sha256()
        size = 0
        hasher = None
        if sum(memoryview(p).nbytes for p in parts) > 1 << 23:  # hashed while it is written
            hasher = threading.Thread(target=_hash, args=(parts, digest), name="lastmile-checkpoint-hash")
            hasher.start()
        try:
            with open(tmp, "wb") as fh:
                for part in parts:
                    size += fh.write(part)
                if hasher is None:
                    _hash(parts, digest)
                else:
                    hasher.join()
                    hasher = None
                size += fh.write(digest.digest())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)  # (disk full, ...): the chain is as it was
            raise
        finally:
            if hasher is not None:
                hasher.join()
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself is durable before offsets are committed
        finally:
            os.close(dir_fd)
        if kind == "full":
            self._chain = _Chain(sequence, digest.digest(), sequence, size)
            self._prune(existing)
        else:
            assert chain is not None
            self._chain = _Chain(sequence, digest.digest(), chain.base, chain.full_bytes, chain.deltas + 1,
                                 chain.delta_bytes + size)
        for leftover in self.dir.iterdir():  # a crash between writing a file and its rename
            if _TMP.match(leftover.name) and leftover != tmp:
                leftover.unlink(missing_ok=True)
        return final

    def _prune(self, before: list[tuple[int, Path, str]]) -> None:
        """A full snapshot was just written after ``before``: keep the newest keep - 1 chains of those."""
        starts = [i for i, (_, _, kind) in enumerate(before) if kind == "full"]
        older = self.keep - 1
        if older and len(starts) >= older:
            keep_from = starts[-older]
        elif older and starts:
            keep_from = starts[0]  # fewer chains than that: all of them (increments before any full go)
        else:
            keep_from = len(before)
        for _, old, _ in before[:keep_from]:
            old.unlink(missing_ok=True)
