"""Search every file of a localmem database for traces of strings and vectors, byte by byte.

What counts as a trace of a marker: its UTF-8 bytes, lower-cased too (FTS5 folds case);
every term FTS5 makes of it under localmem's tokenizer (computed by FTS5 itself through
fts5vocab) and each term's last ``SUFFIX`` bytes, since FTS5 stores a term after the first
on a page as its suffix past the prefix it shares with the one before; and, for a vector,
16-byte windows of its float32 bytes every 64 bytes (a vector can straddle a page
boundary, where SQLite's page header splits it: each part is still found). The files: the database and its -wal,
-shm and -journal, the strategy log (``<db>-log`` and its own), and everything under the
cache folder. Free pages and WAL frames are bytes like any others: nothing is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUFFIX = 8
TOKENIZER = "porter unicode61 remove_diacritics 2"  # localmem's (store.py)


@dataclass(frozen=True)
class Hit:
    file: str
    offset: int
    pattern: str


def fts_terms(text: str) -> list[str]:
    import sqlean

    conn = sqlean.connect(":memory:")
    try:
        conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize='{TOKENIZER}')")
        conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'row')")
        conn.execute("INSERT INTO t VALUES (?)", (text,))
        return [row[0] for row in conn.execute("SELECT term FROM v")]
    finally:
        conn.close()


def patterns(markers: list[str], vectors: list[np.ndarray]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for marker in markers:
        found[marker] = marker.encode()
        found[f"{marker} (lower case)"] = marker.lower().encode()
        for term in fts_terms(marker):
            raw = term.encode()
            found[f"{marker}: term {term}"] = raw
            found[f"{marker}: term suffix {raw[-SUFFIX:]!r}"] = raw[-SUFFIX:]
    for i, vector in enumerate(vectors):
        raw = np.asarray(vector, dtype="<f4").tobytes()
        for at in range(0, len(raw) - 15, 64):
            if len(set(raw[at:at + 16])) >= 8:  # (a run of zeros matches anything)
                found[f"vector {i} @{at}"] = raw[at:at + 16]
    # shorter or duller patterns match by chance (a mostly-zero test vector matches anything)
    return {name: p for name, p in found.items() if len(p) >= 6 and len(set(p)) >= 4}


def files_of(db_path: str, cache_dir: str | None = None) -> list[Path]:
    names = [db_path + s for s in ("", "-wal", "-shm", "-journal")]
    names += [db_path + "-log" + s for s in ("", "-wal", "-shm", "-journal")]
    out = [Path(n) for n in names if Path(n).is_file()]
    cache = Path(cache_dir or db_path + "-cache")
    if cache.is_dir():
        out += sorted(p for p in cache.rglob("*") if p.is_file())
    return out


def scan(db_path: str, markers: list[str], vectors: list[np.ndarray] = (), cache_dir: str | None = None) -> list[Hit]:
    """Every place a trace of ``markers`` or ``vectors`` is found ([] when none is)."""
    wanted = patterns(list(markers), list(vectors))
    hits = []
    for path in files_of(db_path, cache_dir):
        data = path.read_bytes()
        for name, pattern in wanted.items():
            at = data.find(pattern)
            while at >= 0:
                hits.append(Hit(str(path), at, name))
                at = data.find(pattern, at + 1)
    return hits


def summary(hits: list[Hit]) -> str:
    counts: dict[tuple[str, str], int] = {}
    for h in hits:
        counts[h.file, h.pattern] = counts.get((h.file, h.pattern), 0) + 1
    return "\n".join(f"{n:4d}  {f}  {p}" for (f, p), n in sorted(counts.items()))
