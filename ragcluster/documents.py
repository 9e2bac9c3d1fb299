"""The document model shared by all tiers, and its validation (pure: no grpc, no protobuf)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

from ragcluster.errors import InvalidArgument

MAX_ID_BYTES = 512
# One document (id + title + text + metadata) is at most this big, so that a search answer carrying
# documents fits the gRPC message limit: 100 hits (the router's default max_k) take at most 50 MiB of the
# default 64 MiB. The router checks max_k * MAX_DOCUMENT_BYTES against its message limit at start.
MAX_DOCUMENT_BYTES = 512 * 1024
MAX_METADATA_KEYS = 64
MAX_TITLE_BYTES = 4096
MAX_METADATA_KEY_BYTES = 128
MAX_METADATA_VALUE_BYTES = 8192

MetadataValue = str | int | float | bool


@dataclass
class Document:
    id: str
    text: str
    title: str = ""
    metadata: dict[str, MetadataValue] = field(default_factory=dict)

    def validate(self, where: str = "document") -> None:
        strings: list[tuple[str, object]] = [("id", self.id), ("title", self.title), ("text", self.text)]
        strings += [(f"metadata[{k[:64]!r}]", v) for k, v in self.metadata.items() if isinstance(v, str)]
        strings += [(f"metadata key {k[:64]!r}", k) for k in self.metadata]
        for name, text in strings:
            if not isinstance(text, str):
                raise InvalidArgument(f"{where}.{name}: must be a string")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgument(f"{where}.{name}: not valid UTF-8 (a lone surrogate)") from None
        validate_id(self.id, f"{where}.id")
        if len(self.text.encode("utf-8")) > MAX_DOCUMENT_BYTES:  # cheap early answer for one huge field
            raise InvalidArgument(f"{where}.text: longer than {MAX_DOCUMENT_BYTES} bytes (id {self.id!r}); "
                                  "split it into chunks (ragcluster ingest --chunk-tokens)")
        if len(self.title.encode("utf-8")) > MAX_TITLE_BYTES:
            raise InvalidArgument(f"{where}.title: longer than {MAX_TITLE_BYTES} bytes (id {self.id!r})")
        if len(self.metadata) > MAX_METADATA_KEYS:
            raise InvalidArgument(f"{where}.metadata: more than {MAX_METADATA_KEYS} keys (id {self.id!r})")
        for key, value in self.metadata.items():
            if not key:
                raise InvalidArgument(f"{where}.metadata: empty key (id {self.id!r})")
            if len(key.encode("utf-8")) > MAX_METADATA_KEY_BYTES:
                raise InvalidArgument(f"{where}.metadata: a key longer than {MAX_METADATA_KEY_BYTES} bytes "
                                      f"(id {self.id!r})")
            if isinstance(value, str) and len(value.encode("utf-8")) > MAX_METADATA_VALUE_BYTES:
                raise InvalidArgument(f"{where}.metadata[{key[:64]!r}]: longer than {MAX_METADATA_VALUE_BYTES} "
                                      f"bytes (id {self.id!r})")
            if not isinstance(value, (str, int, float, bool)):
                raise InvalidArgument(
                    f"{where}.metadata[{key!r}]: must be a string, number or bool, not {type(value).__name__}"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidArgument(f"{where}.metadata[{key!r}]: not a finite number")
        if self.size_bytes() > MAX_DOCUMENT_BYTES:
            raise InvalidArgument(f"{where}: {self.size_bytes()} bytes (id, title, text and metadata) exceeds the "
                                  f"maximum {MAX_DOCUMENT_BYTES}; split it into chunks (ragcluster ingest "
                                  "--chunk-tokens)")

    def size_bytes(self) -> int:
        """Encoded size of everything a search answer carries for this document."""
        metadata = json.dumps(self.metadata, ensure_ascii=False, separators=(",", ":")) if self.metadata else ""
        return sum(len(part.encode("utf-8")) for part in (self.id, self.title, self.text, metadata))

    def content_hash(self) -> str:
        """Stable hash of title, text and metadata: resumable ingest skips documents stored unchanged."""
        payload = json.dumps([self.title, self.text, self.metadata], sort_keys=True, ensure_ascii=False,
                             separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]

    def to_json(self) -> dict:
        return {"id": self.id, "title": self.title, "text": self.text, "metadata": dict(self.metadata)}

    @classmethod
    def from_json(cls, obj: object, where: str = "document") -> Document:
        """From a JSON object ``{"id": str, "text": str, "title"?: str, "metadata"?: {str: str|number}}``."""
        if not isinstance(obj, dict):
            raise InvalidArgument(f"{where}: expected a JSON object, got {type(obj).__name__}")
        doc_id, text = obj.get("id"), obj.get("text")
        if not isinstance(doc_id, str):
            raise InvalidArgument(f"{where}: 'id' must be a string")
        if not isinstance(text, str):
            raise InvalidArgument(f"{where}: 'text' must be a string")
        title = obj.get("title", "") or ""
        if not isinstance(title, str):
            raise InvalidArgument(f"{where}: 'title' must be a string")
        metadata = obj.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise InvalidArgument(f"{where}: 'metadata' must be an object")
        doc = cls(doc_id, text, title, dict(metadata))
        doc.validate(where)
        return doc


def validate_id(doc_id: str, where: str = "id") -> None:
    if not doc_id:
        raise InvalidArgument(f"{where}: must not be empty")
    if len(doc_id.encode("utf-8")) > MAX_ID_BYTES:
        raise InvalidArgument(f"{where}: longer than {MAX_ID_BYTES} bytes")


def validate_batch(docs: list[Document], max_batch: int, item: str = "documents[{i}]") -> None:
    """A write batch: non-empty, at most ``max_batch``, every document valid, no id twice.

    ``item`` names a document in error messages (``{i}`` is its index), e.g. ``documents[{i}].document``.
    """
    if not docs:
        raise InvalidArgument("documents: empty batch")
    if len(docs) > max_batch:
        raise InvalidArgument(f"documents: batch of {len(docs)} exceeds the maximum {max_batch}")
    seen: set[str] = set()
    for i, doc in enumerate(docs):
        where = item.format(i=i)
        doc.validate(where)
        if doc.id in seen:
            raise InvalidArgument(f"{where}.id: duplicate id {doc.id!r} in one batch")
        seen.add(doc.id)
