"""A small, fast, deterministic embedder for tests: hashed bag of words, L2-normalised.

Texts sharing words get similar vectors, so ranking by meaning is testable without an
ONNX model; ``calls`` counts the texts embedded, to test the caches. ``delay`` (seconds
per call) lets crash tests catch the worker mid-batch.
"""

from __future__ import annotations

import hashlib
import re
import time

import numpy as np


class HashEmbedder:
    name = "test-hash-embedder"

    def __init__(self, dim: int = 64, delay: float = 0.0, name: str | None = None):
        self.dim = dim
        self.delay = delay
        self.calls = 0
        if name is not None:
            self.name = name

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for word in re.findall(r"\w+", text.lower()):
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            v[h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        if not v.any():
            v[0] = 1.0
        return v / np.linalg.norm(v)

    def embed(self, texts):
        self.calls += len(texts)
        if self.delay:
            time.sleep(self.delay)
        return np.stack([self._vector(t) for t in texts]) if texts else np.empty((0, self.dim), np.float32)
