"""The ONNX cross-encoder: scores (query, document) pairs for reranking.

Each pair is tokenised as ``[CLS] query [SEP] document [SEP]`` with segment ids 0 for the
query part and 1 for the document part, truncated longest-first to the model's max
length; pairs are sorted by length and batched so padding stays small (length buckets).
Results come back in input order; with the fp32 model they do not depend on batch size or
order (tested). An int8 copy's do, a little: dynamic quantization scales activations over
the whole padded batch (measured in benchmarks/rerank_speed.py: up to 0.41 of a logit).

Scores: ``logits()`` returns the model's raw relevance logits (unbounded; higher is more
relevant; comparable only within one model). ``score()`` returns ``sigmoid(logit)`` in
(0, 1), the form sentence-transformers' CrossEncoder gives for these one-logit MS MARCO
models: monotone in the logit, so it ranks exactly as the logits do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InvalidInputError, ModelError
from .onnx_runtime import OnnxModel, check_texts, feed, length_batches


class CrossEncoder(OnnxModel):
    """Scores (query, document) pairs with one ONNX model. Lazy, thread-safe, fork-safe."""

    kind = "reranker"
    # Pairs per ONNX run. Smaller than the embedder's 32: 30 candidates sorted by length in
    # batches of 8 pad far less than one batch of 30, and attention costs length squared.
    # Measured (L-6 architecture, int8, 30 LoCoMo candidates, interleaved, p50): batch 4
    # 104 ms, 8 97.6 ms, 16 110 ms, 32 163.8 ms; TinyBERT-L-2: 16.7, 15.6, 15.8, 18.9 ms.
    default_batch_size = 8

    def logits(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Raw relevance logits, float32, one per document, in input order."""
        if not isinstance(query, str):
            raise InvalidInputError(f"query must be a str, not {type(query).__name__}")
        documents = check_texts(documents, "documents")
        out = np.empty(len(documents), dtype=np.float32)
        if not documents:
            return out
        session, tokenizer, inputs = self._model.get()
        encodings = tokenizer.encode_batch([(query, d) for d in documents])
        for batch in length_batches(encodings, self.batch_size):
            result = session.run(None, feed(encodings, batch, inputs))[0]
            if result.ndim != 2 or result.shape[1] != 1:
                raise ModelError(
                    f"{self.name} returns logits of shape {result.shape}; localmem expects one "
                    "relevance logit per pair (batch, 1)"
                )
            out[batch] = result[:, 0]
        return out

    def score(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """Relevance in (0, 1): ``sigmoid(logits)``, float32, in input order."""
        logits = self.logits(query, documents).astype(np.float64)
        return (0.5 * (1.0 + np.tanh(0.5 * logits))).astype(np.float32)  # sigmoid, no overflow



load_reranker = CrossEncoder.load  # load_reranker(name=None, *, path=None, int8=None, ...)
