"""Token-aware chunking with the embedding model's own tokenizer (pure: no grpc).

A document becomes windows of ``chunk_tokens`` tokens, each starting ``chunk_tokens - overlap`` tokens
after the previous one; a chunk's text is the exact slice of the original text those tokens cover.
Chunk ids are ``{document id}#{n}`` (n from 0); each chunk's metadata is the document's plus
``parent_id`` and ``chunk``, so every hit reports the document it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from ragcluster.documents import Document
from ragcluster.errors import InvalidArgument


class Tokenizer(Protocol):
    """The part of a Hugging Face fast tokenizer that chunking uses: character offsets of the tokens."""

    def __call__(self, text: str, *, add_special_tokens: bool,
                 return_offsets_mapping: bool) -> Mapping[str, list[tuple[int, int]]]: ...


def load_embedding_tokenizer(spec: str = "all-MiniLM-L6-v2") -> Tokenizer:
    from transformers import AutoTokenizer

    from ragcluster.embedding_models import resolve_embedding_model

    _, path = resolve_embedding_model(spec)
    tokenizer: Tokenizer = AutoTokenizer.from_pretrained(path)
    return tokenizer


class Chunker:
    def __init__(self, tokenizer: Tokenizer, chunk_tokens: int, overlap: int = 0, max_tokens: int = 256) -> None:
        if not 8 <= chunk_tokens <= max_tokens - 2:
            raise InvalidArgument(f"chunk_tokens: must be between 8 and {max_tokens - 2} (the embedding model reads "
                                  f"at most {max_tokens} tokens), got {chunk_tokens}")
        if not 0 <= overlap < chunk_tokens:
            raise InvalidArgument(f"chunk_overlap: must be between 0 and chunk_tokens - 1, got {overlap}")
        self.tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.overlap = overlap

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the chunks of ``text``."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if not offsets:
            return [(0, len(text))]
        step = self.chunk_tokens - self.overlap
        spans = []
        for start in range(0, len(offsets), step):
            end = min(start + self.chunk_tokens, len(offsets))
            spans.append((offsets[start][0], offsets[end - 1][1]))
            if end == len(offsets):
                break
        return spans

    def split(self, doc: Document) -> list[Document]:
        return [
            replace(doc, id=f"{doc.id}#{n}", text=doc.text[a:b],
                    metadata={**doc.metadata, "parent_id": doc.id, "chunk": n})
            for n, (a, b) in enumerate(self.spans(doc.text))
        ]
