"""The ONNX embedder: texts -> L2-normalised float32 vectors, one row per text.

Pipeline: tokenise (padding/truncation reset, truncation at the model's max length), sort
by token length and batch so padding stays small, feed ``token_type_ids`` only if the graph
has that input, pool (mean over the attention mask, or the [CLS] token), normalise, and put
the rows back in input order. Sorting and batching do not change the vectors (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ModelError
from .onnx_runtime import OnnxModel, check_texts, feed, length_batches


class Embedder(OnnxModel):
    """Embeds texts with one ONNX model. Loads lazily; thread-safe; fork-safe.

    ``embed(texts)`` embeds documents (with the model's document prefix, if any);
    ``embed_query(texts)`` embeds search queries (with its query prefix, e.g. e5's
    "query: "). ``files`` is a resolved ``localmem.models.ModelFiles``.
    """

    kind = "embedder"

    def __init__(self, files: Any, *, batch_size: int | None = None, threads: int | None = None):
        super().__init__(files, batch_size=batch_size, threads=threads)
        spec = self.spec
        if spec.pooling not in ("mean", "cls"):
            raise ModelError(f"{spec.name}: pooling must be 'mean' or 'cls', not {spec.pooling!r}")
        if not spec.dim:
            raise ModelError(f"{spec.name}: the spec must give the embedding dimension")
        self.dim = spec.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Document vectors, float32, shape ``(len(texts), dim)``."""
        return self._embed(check_texts(texts), self.spec.document_prefix)

    def embed_query(self, texts: Sequence[str]) -> np.ndarray:
        """Query vectors (the model's query prefix applied), float32 ``(len(texts), dim)``."""
        return self._embed(check_texts(texts), self.spec.query_prefix)

    def _embed(self, texts: list[str], prefix: str) -> np.ndarray:
        session, tokenizer, inputs = self._model.get()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = tokenizer.encode_batch([prefix + t for t in texts] if prefix else texts)
        for batch in length_batches(encodings, self.batch_size):
            arrays = feed(encodings, batch, inputs)
            vectors = self._pool(session.run(None, arrays)[0], arrays["attention_mask"])
            if vectors.shape[1] != self.dim:
                raise ModelError(
                    f"{self.name} gives {vectors.shape[1]}-dimensional vectors; its spec says {self.dim}"
                )
            out[batch] = vectors
        return out

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if hidden.ndim == 2:  # the graph already pools (a sentence_embedding output)
            pooled = hidden
        elif self.spec.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        pooled = pooled.astype(np.float32, copy=False)
        if self.spec.normalize:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.maximum(norms, 1e-12)
        return pooled



load_embedder = Embedder.load  # load_embedder(name=None, *, path=None, int8=None, ...)
