"""Approximate vector search for large owners: an IVF index in a file beside the database.

sqlite-vec scans an owner's whole partition for every query and picks its top k at a
cost of n x k (benchmarks/scale.py: 212 ms owner-wide at 1M messages, recall@10 0.66 with
the sign-bit pre-scan; a conversation of that owner 244 ms, since the conversation filter is
checked row by row). Past ``INDEX_MIN`` vectors an owner gets an inverted-file index here:

* k-means (spherical, on a sample) splits the owner's vectors into ``nlist`` lists
  (``LISTS_PER_SQRT`` x sqrt(n)); the vectors are stored as int8 codes, list by list, beside their
  ids, conversations and times;
* a query scores the centroids, then the codes of the nearest lists until ``probe_rows(n)``
  rows that pass the scope's filters (conversation, time) are scored, and returns the best
  by their float16 copies (cosine within 2e-4 of the float32 one: sqlite-vec's point
  lookups, 45 us each at 100k, cost more than the search itself).
  A filter therefore costs lists, not recall: a conversation holding 5 % of the owner's
  messages probes about 20x more lists, and only its own rows are scored;
* the file is derived and read-only (memory-mapped: its pages are the OS's page cache,
  read as searches touch them). What changed since it was written is read from the
  database's ``vector_log`` and held in memory (``OwnerIndex.apply``): new vectors are
  searched exactly, deleted ones are masked. When that grows past ``MERGE_SHARE`` of the
  file (at most ``MERGE_MAX``), the file is written anew (``Store.build_vector_index``).

Pure numpy: no new dependency. usearch (HNSW) was measured on the same data: 0.27 ms at
100k and recall 0.98 (int8 + re-scoring), but its build took 45 s per 100k at 200k
vectors (over 5 minutes for 1M on two cores), a filtered search needs a Python callback
per visited node, and reading 5k vectors back out of it took 33 ms.

The SQLite file stays the single source of truth: deleting the index folder loses nothing;
the owner's next search starts a rebuild (sqlite-vec answers meanwhile).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import struct
import tempfile
import threading
import uuid
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["INDEX_MIN", "MERGE_SHARE", "PROBE_ROWS", "RETRAIN_GROWTH", "Built", "IndexFile", "OwnerIndex", "build",
           "file_name", "key_lock", "owner_key", "owner_lock", "probe_rows", "sample_of",
           "stale_files"]

# An owner is indexed once it has this many vectors. Below it sqlite-vec's own scans are
# fast enough (exact to 5k, sign bits to here) and no file is worth keeping.
INDEX_MIN = 20_000
# How many rows passing the filters a search scores (whole lists, nearest first):
# PROBE_PER_SQRT x sqrt(n), at least PROBE_ROWS. The neighbours spread over more lists as
# the owner grows: on LoCoMo-derived vectors (benchmarks/scale.py), recall@10 against exact
# at 100k was 0.98 with 6000 rows; at 1M (2000 lists) 0.948 / 0.970 / 0.984 / 0.996 with
# 6000 / 9000 / 12000 / 18000 rows, for 2.0 / 2.2 / 2.6 / 4.5 ms.
PROBE_ROWS = 6_000
PROBE_PER_SQRT = 12
LISTS_PER_SQRT = 2  # nlist = LISTS_PER_SQRT x sqrt(n)
KMEANS_SAMPLE = 40  # rows per list in the k-means sample (at most SAMPLE_MAX)
SAMPLE_MAX = 100_000
KMEANS_ROUNDS = 6
# The file is written anew when what changed since (new vectors, deletions) reaches this
# share of it (at least MERGE_MIN, at most MERGE_MAX: the changes are searched exactly,
# 45k of them took 16 ms a search), and k-means is run anew when the owner has grown to
# RETRAIN_GROWTH x the size its lists were trained on.
MERGE_SHARE = 0.05
MERGE_MIN = 2_000
MERGE_MAX = 10_000
RETRAIN_GROWTH = 2.0

_MAGIC = b"LMIVF\x00\x01\n"
FORMAT = 2  # the header's "format": a file of another is built anew
_ALIGN = 64
_CHUNK = 65_536  # rows per block when assigning and quantising


def owner_key(owner_id: str) -> str:
    """The part of an index file's name that names its owner (owner ids are any text)."""
    return hashlib.sha256(owner_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def file_name(owner_id: str, generation: int, seq: int) -> str:
    """A published file's name: the owner, the vector generation, the log position it
    covers and a random part. Names are never reused (two builds at the same position, as
    before and after a forget that logs nothing, differ), so a process holding a file
    open always sees that a new one was published."""
    return f"{owner_key(owner_id)}-g{generation & 0xFFFFFFFFFFFFFFFF:x}-s{seq}-{uuid.uuid4().hex[:12]}.ivf"


@dataclass(frozen=True, slots=True)
class Built:
    """What ``build`` wrote: the file's path, how many vectors, and on how many the lists
    were trained (``trained``)."""

    path: Path
    count: int
    trained: int
    seq: int


class IndexFile:
    """A published index file, memory-mapped read-only. Arrays (row order = list order):
    ``centroids`` (nlist, dim) float32, ``offsets`` (nlist + 1), ``ids``, ``codes`` (n, dim)
    int8 (the scan), ``vectors`` (n, dim) float16 (the scores), ``conv`` (conversation
    number), ``created``; ``id_rows`` (rows in id order) and
    ``conv_rows`` with ``conv_offsets`` (rows by conversation)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            head = f.read(16)
            if len(head) < 16 or head[:8] != _MAGIC:
                raise ValueError(f"{self.path}: not a localmem vector index")
            (length,) = struct.unpack("<Q", head[8:])
            self.header: dict[str, Any] = json.loads(f.read(length))
            if self.header.get("format") != FORMAT:
                raise ValueError(f"{self.path}: index format {self.header.get('format')!r}, not {FORMAT}")
            size = os.fstat(f.fileno()).st_size
            if size != self.header["size"]:
                raise ValueError(f"{self.path}: {size} bytes, its header says {self.header['size']}")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        arrays = {}
        for name, (dtype, shape, offset, _crc) in self.header["arrays"].items():
            count = int(np.prod(shape)) if shape else 1
            arrays[name] = np.frombuffer(self._map, dtype=dtype, count=count, offset=offset).reshape(shape)
        self.centroids: np.ndarray = arrays["centroids"]
        self.offsets: np.ndarray = arrays["offsets"]
        self.ids: np.ndarray = arrays["ids"]
        self.codes: np.ndarray = arrays["codes"]
        self.vectors: np.ndarray = arrays["vectors"]
        self.conv: np.ndarray = arrays["conv"]
        self.created: np.ndarray = arrays["created"]
        self.id_rows: np.ndarray = arrays["id_rows"]
        self.conv_rows: np.ndarray = arrays["conv_rows"]
        self.conv_offsets: np.ndarray = arrays["conv_offsets"]
        self.count = int(self.header["count"])
        self._check_structure()
        self.sorted_ids: np.ndarray = self.ids[self.id_rows]
        self.conversations: dict[str, int] = {c: i for i, c in enumerate(self.header["conversations"])}
        self.scale = float(self.header["scale"])
        self.count = int(self.header["count"])
        self.seq = int(self.header["seq"])
        self.generation = int(self.header["generation"])
        self.trained = int(self.header["trained"])

    def _check_structure(self) -> None:
        """What a search relies on, checked at open (a damaged file is refused, never
        searched): the small arrays' checksums, the lists' and conversations' offsets in
        order and within the rows, every row index in range."""
        for problem in self.verify(("centroids", "offsets", "conv_offsets")):
            raise ValueError(problem)
        n = self.count
        for name, offsets in (("offsets", self.offsets), ("conv_offsets", self.conv_offsets)):
            if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) < 0):
                raise ValueError(f"{self.path}: {name} out of order or range")
        for name in ("id_rows", "conv_rows"):
            rows = getattr(self, name)
            if len(rows) != n or (n and (int(rows.min()) < 0 or int(rows.max()) >= n)):
                raise ValueError(f"{self.path}: {name} out of range")
        if n and (int(self.conv.min()) < 0 or int(self.conv.max()) >= len(self.header["conversations"])):
            raise ValueError(f"{self.path}: conv out of range")
        dim = int(self.header["dim"])
        if self.codes.shape != (n, dim) or self.vectors.shape != (n, dim) or self.centroids.shape[1:] != (dim,):
            raise ValueError(f"{self.path}: arrays of the wrong shape")

    def verify(self, names: Iterable[str] | None = None) -> list[str]:
        """Each array's checksum (or those of ``names``) against the header's (all of them:
        reads the whole file)."""
        problems = []
        for name in self.header["arrays"] if names is None else names:
            _dtype, _shape, offset, crc = self.header["arrays"][name]
            array = getattr(self, name)
            if zlib.crc32(memoryview(self._map)[offset: offset + array.nbytes]) != crc:
                problems.append(f"{self.path.name}: {name} does not match its checksum")
        return problems

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The row of each id (-1 where the file does not hold it)."""
        at = np.searchsorted(self.sorted_ids, ids)
        at = np.minimum(at, len(self.sorted_ids) - 1) if len(self.sorted_ids) else at
        found = (self.sorted_ids[at] == ids) if len(self.sorted_ids) else np.zeros(len(ids), bool)
        return np.where(found, self.id_rows[at] if len(self.sorted_ids) else -1, -1)

    def close(self) -> None:
        for name in ("centroids", "offsets", "ids", "codes", "vectors", "conv", "created", "id_rows", "conv_rows",
                     "conv_offsets", "sorted_ids"):
            setattr(self, name, None)
        try:
            self._map.close()
        except BufferError:  # a search still holds a view; the mapping ends with it
            pass


def probe_rows(count: int) -> int:
    """How many rows that pass its filters a search of an index of ``count`` scores."""
    return max(PROBE_ROWS, round(PROBE_PER_SQRT * np.sqrt(count)))


def sample_of(ids: np.ndarray) -> np.ndarray:
    """The ids whose vectors k-means trains on: KMEANS_SAMPLE per list, at most
    SAMPLE_MAX, drawn at random (seeded by the count: a rebuild of the same data trains
    the same lists)."""
    nlist = max(1, round(LISTS_PER_SQRT * np.sqrt(max(len(ids), 1))))
    n = min(len(ids), SAMPLE_MAX, KMEANS_SAMPLE * nlist)
    return np.sort(np.random.default_rng(len(ids)).choice(ids, n, replace=False)) if n < len(ids) else ids


def _kmeans(sample: np.ndarray, nlist: int, rng: np.random.Generator) -> np.ndarray:
    """Spherical k-means: unit centroids maximising the summed cosine of their members."""
    centroids = sample[rng.choice(len(sample), nlist, replace=False)].copy()
    for _ in range(KMEANS_ROUNDS):
        assign = _nearest(sample, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, sample)
        empty = np.bincount(assign, minlength=nlist) == 0
        sums[empty] = sample[rng.choice(len(sample), int(empty.sum()), replace=False)]  # reseed
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = sums / np.where(norms == 0, 1, norms)
    return centroids.astype(np.float32)


def _nearest(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    out = np.empty(len(vectors), np.int64)
    for start in range(0, len(vectors), _CHUNK):
        out[start: start + _CHUNK] = np.argmax(vectors[start: start + _CHUNK] @ centroids.T, axis=1)
    return out


def build(
    folder: Path,
    name: str,
    chunks: Iterable[tuple[np.ndarray, list[str], np.ndarray, np.ndarray]],
    *,
    dim: int,
    sample: np.ndarray,
    owner_id: str,
    generation: int,
    seq: int,
    centroids: np.ndarray | None = None,
    trained: int | None = None,
    scale: float | None = None,
    size_hint: int = 0,
) -> Built:
    """Write an index file of the vectors given as chunks of (ids, conversation ids,
    created_at, float32 unit vectors (n, dim)) to ``folder/name``: written beside the name,
    flushed, then renamed into place (a crash leaves no partial file under a published
    name). ``sample``: the vectors k-means trains on (``size_hint`` vectors in all sets the
    number of lists); ``centroids``: reuse trained lists instead (a merge), with the
    ``trained`` size they came from and the codes' ``scale``."""
    rng = np.random.default_rng(len(sample))
    if centroids is None:
        nlist = max(1, min(len(sample), round(LISTS_PER_SQRT * np.sqrt(max(size_hint, len(sample), 1)))))
        centroids = _kmeans(sample.astype(np.float32), nlist, rng) if len(sample) else np.zeros((1, dim), np.float32)
        trained = size_hint
    nlist = len(centroids)
    # int8 codes: x * scale rounded, scale from the sample's largest component (unit
    # vectors of 384 dims have components well under 1: 127 alone would waste most codes).
    if scale is None:
        peak = float(np.abs(sample).max()) if len(sample) else 1.0
        scale = 127.0 / max(peak, 1e-6)
    parts: dict[str, list[np.ndarray]] = {"ids": [], "lists": [], "created": [], "conv": [], "codes": [],
                                          "vectors": []}
    conversations: dict[str, int] = {}
    for chunk_ids, chunk_convs, chunk_created, vectors in chunks:
        parts["ids"].append(np.asarray(chunk_ids, np.int64))
        parts["created"].append(np.asarray(chunk_created, np.int64))
        parts["conv"].append(np.array([conversations.setdefault(c, len(conversations)) for c in chunk_convs],
                                      np.int32))
        parts["lists"].append(_nearest(vectors, centroids))
        parts["codes"].append(np.clip(np.rint(vectors * scale), -127, 127).astype(np.int8))
        parts["vectors"].append(vectors.astype(np.float16))
    empty: dict[str, np.ndarray] = {"codes": np.empty((0, dim), np.int8), "vectors": np.empty((0, dim), np.float16)}
    joined: dict[str, np.ndarray] = {key: np.concatenate(value) if value else empty.get(key, np.empty(0, np.int64))
              for key, value in parts.items()}
    del parts
    count = len(joined["ids"])
    order = np.argsort(joined["lists"], kind="stable")
    arrays: dict[str, np.ndarray] = {"centroids": np.ascontiguousarray(centroids, np.float32)}
    arrays["offsets"] = np.searchsorted(joined["lists"][order], np.arange(nlist + 1)).astype(np.int64)
    arrays["ids"] = joined.pop("ids")[order]
    arrays["codes"] = joined.pop("codes")[order]
    arrays["vectors"] = joined.pop("vectors")[order]
    arrays["conv"] = joined.pop("conv")[order].astype(np.int32)
    arrays["created"] = joined.pop("created")[order]
    arrays["id_rows"] = np.argsort(arrays["ids"], kind="stable").astype(np.int64)
    conv_rows = np.argsort(arrays["conv"], kind="stable").astype(np.int64)
    arrays["conv_rows"] = conv_rows
    arrays["conv_offsets"] = np.searchsorted(arrays["conv"][conv_rows], np.arange(len(conversations) + 1)).astype(
        np.int64)
    header: dict[str, Any] = {
        "format": FORMAT, "dim": dim, "count": count, "nlist": nlist, "scale": scale, "owner": owner_id,
        "generation": generation, "seq": seq, "trained": int(trained or count),
        "conversations": list(conversations), "arrays": {},
    }
    offset = 0
    for key, array in arrays.items():  # offsets from the data's start, moved below
        header["arrays"][key] = [array.dtype.str, list(array.shape), offset, zlib.crc32(_bytes_of(array))]
        offset += -(-array.nbytes // _ALIGN) * _ALIGN
    # Where the data starts depends on the header's length, which depends on the offsets:
    # leave room for the offsets' digits to grow.
    start = -(-(16 + len(json.dumps(header)) + 32 * len(arrays) + 64) // _ALIGN) * _ALIGN
    for entry in header["arrays"].values():
        entry[2] += start
    header["size"] = start + offset
    text = json.dumps(header).encode()
    if 16 + len(text) > start:
        raise AssertionError("the header grew past its room")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".building-{name.split('-')[0]}-", suffix=".ivf")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + struct.pack("<Q", len(text)) + text)
            f.write(b"\0" * (start - 16 - len(text)))
            for array in arrays.values():
                f.write(_bytes_of(array))
                f.write(b"\0" * (-array.nbytes % _ALIGN))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _sync_folder(folder)
    return Built(target, count, int(trained or count), seq)


def _bytes_of(array: np.ndarray) -> memoryview:
    """An array's bytes, without a copy when it is contiguous already."""
    return memoryview(np.ascontiguousarray(array).data).cast("B")


def _rows_of_lists(offsets: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """The rows of ``lists`` (each a contiguous run ``offsets[i]:offsets[i + 1]``), in
    that order, without a Python loop over the lists."""
    starts = offsets[lists]
    lengths = offsets[lists + 1] - starts
    before = np.cumsum(lengths) - lengths  # rows of the earlier lists
    return np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()))


def _sync_folder(folder: Path) -> None:
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Delta:
    """The vectors written since the file, in growing arrays (doubled when full, so that a
    write between two searches costs one row, not a copy of them all)."""

    def __init__(self, dim: int):
        self.n = 0
        self.matrix = np.empty((64, dim), np.float32)
        self.ids = np.empty(64, np.int64)
        self.created = np.empty(64, np.int64)
        self.conv = np.empty(64, np.int32)
        self.alive = np.zeros(64, bool)
        self.at: dict[int, int] = {}  # id -> its current row
        self.conversations: dict[str, int] = {}

    def add(self, row_id: int, conversation: str, created: int, vector: bytes) -> None:
        if self.n == len(self.ids):
            grow = len(self.ids)
            self.matrix = np.concatenate([self.matrix, np.empty_like(self.matrix[:grow])])
            for name in ("ids", "created", "conv", "alive"):
                old = getattr(self, name)
                setattr(self, name, np.concatenate([old, np.zeros_like(old[:grow])]))
        self.drop(row_id)
        at = self.n
        self.matrix[at] = np.frombuffer(vector, np.float32)
        self.ids[at], self.created[at], self.alive[at] = row_id, created, True
        self.conv[at] = self.conversations.setdefault(conversation, len(self.conversations))
        self.at[row_id] = at
        self.n += 1

    def drop(self, row_id: int) -> None:
        at = self.at.pop(row_id, None)
        if at is not None:
            self.alive[at] = False

    @property
    def live(self) -> int:
        return len(self.at)

    def search(self, vector: np.ndarray, conversation_id: str | None, since_us: int | None,
               only: np.ndarray | None = None) -> list[tuple[int, float]]:
        n = self.n
        if not n:
            return []
        keep = self.alive[:n].copy()
        if conversation_id is not None:
            keep &= self.conv[:n] == self.conversations.get(conversation_id, -1)
        if since_us is not None:
            keep &= self.created[:n] >= since_us
        if only is not None:
            keep &= np.isin(self.ids[:n], only)
        if not keep.any():
            return []
        scores = self.matrix[:n] @ vector  # all rows, then the mask: no copy of the matrix
        return list(zip(self.ids[:n][keep].tolist(), scores[keep].tolist(), strict=True))


class OwnerIndex:
    """One owner's published file plus what changed since (held in memory), searchable.

    ``apply`` takes the log's changes in order; ``search`` answers candidates with their
    cosines (the file's float16 copies; the delta's exact). ``lock``: hold it around
    ``apply``, ``search``, ``cosines`` and ``close``; after ``close`` (``closed``) the
    file's arrays are gone: answer without it."""

    def __init__(self, base: IndexFile):
        self.base = base
        self.lock = threading.Lock()
        self.closed = False
        self.seq = base.seq
        self.dead = np.zeros(base.count, bool)  # base rows deleted or re-embedded since
        self.dead_count = 0
        self._delta = _Delta(int(base.header["dim"]))

    @property
    def changes(self) -> int:
        """How much differs from the file: vectors added plus rows masked."""
        return self._delta.live + self.dead_count

    def needs_merge(self) -> bool:
        return self.changes >= max(MERGE_MIN, min(MERGE_MAX, MERGE_SHARE * self.base.count))

    def apply(self, seq: int, changed: list[tuple[int, tuple[str, int, bytes] | None]]) -> None:
        """What the log says changed up to ``seq``: for each id, its vector now (conversation,
        created_at, float32 bytes) or None (deleted). The file's copy of any changed id is
        masked; a current vector joins the delta."""
        if changed:
            ids = np.array([i for i, _ in changed], np.int64)
            rows = self.base.rows_of(ids)
            hit = rows[rows >= 0]
            newly = hit[~self.dead[hit]]
            self.dead[newly] = True
            self.dead_count += len(newly)
            for row_id, now in changed:
                if now is None:
                    self._delta.drop(row_id)
                else:
                    self._delta.add(row_id, *now)
        self.seq = max(self.seq, seq)

    def search(self, vector: np.ndarray, wanted: int, *, conversation_id: str | None = None,
               since_us: int | None = None) -> list[tuple[int, float]]:
        """Up to ``wanted`` candidates (id, cosine: of the float16 copy, or exact for the delta), best first."""
        found = self._search_base(vector, wanted, conversation_id, since_us)
        found.extend(self._delta.search(vector, conversation_id, since_us))
        found.sort(key=lambda pair: (-pair[1], pair[0]))
        return found[:wanted]

    def _search_base(self, vector: np.ndarray, wanted: int, conversation_id: str | None,
                     since_us: int | None) -> list[tuple[int, float]]:
        base = self.base
        if base.count == 0:
            return []
        code = None
        if conversation_id is not None:
            code = base.conversations.get(conversation_id)
            if code is None:
                return []
            lo, hi = int(base.conv_offsets[code]), int(base.conv_offsets[code + 1])
            members = hi - lo
            if members <= probe_rows(base.count):  # a small conversation: score all of it
                return self._score(vector, base.conv_rows[lo:hi], wanted, None, since_us)
            share = members / base.count
        else:
            share = 1.0
        if since_us is not None:
            recent = int(np.count_nonzero(base.created >= since_us)) if code is None else int(
                np.count_nonzero(base.created[base.conv_rows[lo:hi]] >= since_us))
            share *= recent / max(1, members if code is not None else base.count)
            if share == 0:
                return []
        order = np.argsort(-(base.centroids @ vector))
        sizes = np.diff(base.offsets)[order]
        reach = np.cumsum(sizes)
        need = probe_rows(base.count) / max(share, 1e-9)
        while True:
            nprobe = int(np.searchsorted(reach, need)) + 1
            found = self._score(vector, _rows_of_lists(base.offsets, order[:nprobe]), wanted, code, since_us)
            if len(found) >= wanted or nprobe >= len(order):
                return found
            need *= 4  # fewer passed the filters than the share promised (deletions)

    def _score(self, vector: np.ndarray, rows: np.ndarray, wanted: int, code: int | None,
               since_us: int | None) -> list[tuple[int, float]]:
        base = self.base
        keep = ~self.dead[rows]
        if code is not None:
            keep &= base.conv[rows] == code
        if since_us is not None:
            keep &= base.created[rows] >= since_us
        rows = rows[keep]
        if not len(rows):
            return []
        if len(rows) > wanted:  # the codes choose, the float16 copies score
            rough = base.codes[rows].astype(np.float32) @ vector
            rows = rows[np.argpartition(-rough, wanted - 1)[:wanted]]
        scores = base.vectors[rows].astype(np.float32) @ vector
        return list(zip(base.ids[rows].tolist(), scores.tolist(), strict=True))

    def cosines(self, vector: np.ndarray, ids: list[int]) -> dict[int, float]:
        """The cosine between ``vector`` and each of ``ids`` that the index holds (alive):
        the file's float16 copies, or the delta's vectors."""
        out: dict[int, float] = {}
        if ids:
            wanted = np.array(ids, np.int64)
            rows = self.base.rows_of(wanted)
            hit = rows >= 0
            hit[hit] = ~self.dead[rows[hit]]
            if hit.any():
                scores = self.base.vectors[rows[hit]].astype(np.float32) @ vector
                out.update(zip(wanted[hit].tolist(), scores.tolist(), strict=True))
        for row_id, score in self._delta.search(vector, None, None, only=np.array(ids, np.int64)):
            out[row_id] = score
        return out

    def close(self) -> None:
        self.closed = True
        self.base.close()


def owner_lock(folder: Path, owner_id: str, *, wait: bool) -> contextlib.AbstractContextManager[bool]:
    """Hold the owner's build lock (a lock file in ``folder``), across processes: one
    builder at a time. Yields False, holding nothing, when ``wait`` is False and another
    has it. Where fcntl is missing (Windows), builders are not serialised: each writes its
    own file under a new name, and the last to publish wins."""
    return key_lock(folder, owner_key(owner_id), wait=wait)


@contextlib.contextmanager
def key_lock(folder: Path, key: str, *, wait: bool) -> Iterator[bool]:
    """``owner_lock`` by the owner's key (what a file's name begins with)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield True
        return
    fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    _HELD.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        _HELD.discard(fd)
        os.close(fd)  # releases the lock


# The lock files this process has open. A forked child closes its copies: flock belongs
# to the open file, shared with the parent, and a child living on would otherwise keep
# the owner locked after the parent's build ended (every later build skipped).
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


def stale_files(folder: Path, owner_id: str, keep: str | None) -> list[Path]:
    """The owner's files other than ``keep``: older published ones and the leftovers of a
    build that died (call with the owner's lock held)."""
    key = owner_key(owner_id)
    found = [*folder.glob(f"{key}-*.ivf"), *folder.glob(f".building-{key}-*.ivf")]
    return [path for path in found if path.name != keep]
