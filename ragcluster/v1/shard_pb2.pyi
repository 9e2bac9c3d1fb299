from ragcluster.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShardSearchRequest(_message.Message):
    __slots__ = ("queries", "k", "params", "include_documents", "filter", "unknown_fields_match_nothing", "lexical", "documents_per_list")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELDS_MATCH_NOTHING_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_PER_LIST_FIELD_NUMBER: _ClassVar[int]
    queries: _common_pb2.FloatMatrix
    k: int
    params: _common_pb2.SearchParams
    include_documents: bool
    filter: _common_pb2.Filter
    unknown_fields_match_nothing: bool
    lexical: _containers.RepeatedCompositeFieldContainer[LexicalQuery]
    documents_per_list: int
    def __init__(self, queries: _Optional[_Union[_common_pb2.FloatMatrix, _Mapping]] = ..., k: _Optional[int] = ..., params: _Optional[_Union[_common_pb2.SearchParams, _Mapping]] = ..., include_documents: _Optional[bool] = ..., filter: _Optional[_Union[_common_pb2.Filter, _Mapping]] = ..., unknown_fields_match_nothing: _Optional[bool] = ..., lexical: _Optional[_Iterable[_Union[LexicalQuery, _Mapping]]] = ..., documents_per_list: _Optional[int] = ...) -> None: ...

class LexicalQuery(_message.Message):
    __slots__ = ("terms", "counts", "document_frequencies", "documents", "total_length")
    TERMS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FREQUENCIES_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LENGTH_FIELD_NUMBER: _ClassVar[int]
    terms: _containers.RepeatedScalarFieldContainer[str]
    counts: _containers.RepeatedScalarFieldContainer[int]
    document_frequencies: _containers.RepeatedScalarFieldContainer[int]
    documents: int
    total_length: int
    def __init__(self, terms: _Optional[_Iterable[str]] = ..., counts: _Optional[_Iterable[int]] = ..., document_frequencies: _Optional[_Iterable[int]] = ..., documents: _Optional[int] = ..., total_length: _Optional[int] = ...) -> None: ...

class TermStatsRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryTermStats(_message.Message):
    __slots__ = ("terms", "counts", "document_frequencies")
    TERMS_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FREQUENCIES_FIELD_NUMBER: _ClassVar[int]
    terms: _containers.RepeatedScalarFieldContainer[str]
    counts: _containers.RepeatedScalarFieldContainer[int]
    document_frequencies: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, terms: _Optional[_Iterable[str]] = ..., counts: _Optional[_Iterable[int]] = ..., document_frequencies: _Optional[_Iterable[int]] = ...) -> None: ...

class TermStatsResponse(_message.Message):
    __slots__ = ("queries", "documents", "total_length", "shard", "lexical_config")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_CONFIG_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[QueryTermStats]
    documents: int
    total_length: int
    shard: int
    lexical_config: str
    def __init__(self, queries: _Optional[_Iterable[_Union[QueryTermStats, _Mapping]]] = ..., documents: _Optional[int] = ..., total_length: _Optional[int] = ..., shard: _Optional[int] = ..., lexical_config: _Optional[str] = ...) -> None: ...

class TopK(_message.Message):
    __slots__ = ("ids", "scores", "keys")
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    keys: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., keys: _Optional[_Iterable[int]] = ...) -> None: ...

class ShardSearchResponse(_message.Message):
    __slots__ = ("results", "documents", "vectors_searched", "shard", "unknown_fields", "metric", "lexical_results", "lexical_documents")
    class DocumentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: _common_pb2.Document
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[_common_pb2.Document, _Mapping]] = ...) -> None: ...
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_SEARCHED_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELDS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_RESULTS_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TopK]
    documents: _containers.MessageMap[int, _common_pb2.Document]
    vectors_searched: int
    shard: int
    unknown_fields: _containers.RepeatedScalarFieldContainer[str]
    metric: _common_pb2.Metric
    lexical_results: _containers.RepeatedCompositeFieldContainer[TopK]
    lexical_documents: int
    def __init__(self, results: _Optional[_Iterable[_Union[TopK, _Mapping]]] = ..., documents: _Optional[_Mapping[int, _common_pb2.Document]] = ..., vectors_searched: _Optional[int] = ..., shard: _Optional[int] = ..., unknown_fields: _Optional[_Iterable[str]] = ..., metric: _Optional[_Union[_common_pb2.Metric, str]] = ..., lexical_results: _Optional[_Iterable[_Union[TopK, _Mapping]]] = ..., lexical_documents: _Optional[int] = ...) -> None: ...

class DocumentVector(_message.Message):
    __slots__ = ("document", "vector", "version")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    document: _common_pb2.Document
    vector: _containers.RepeatedScalarFieldContainer[float]
    version: int
    def __init__(self, document: _Optional[_Union[_common_pb2.Document, _Mapping]] = ..., vector: _Optional[_Iterable[float]] = ..., version: _Optional[int] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("documents", "embedding_model")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[DocumentVector]
    embedding_model: str
    def __init__(self, documents: _Optional[_Iterable[_Union[DocumentVector, _Mapping]]] = ..., embedding_model: _Optional[str] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted", "sequence")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    sequence: int
    def __init__(self, upserted: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class ShardDeleteRequest(_message.Message):
    __slots__ = ("ids", "versions")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., versions: _Optional[_Iterable[int]] = ...) -> None: ...

class ShardDeleteResponse(_message.Message):
    __slots__ = ("deleted", "sequence")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    sequence: int
    def __init__(self, deleted: _Optional[int] = ..., sequence: _Optional[int] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("ids", "hashes_only", "iids", "include_vectors")
    IDS_FIELD_NUMBER: _ClassVar[int]
    HASHES_ONLY_FIELD_NUMBER: _ClassVar[int]
    IIDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    hashes_only: bool
    iids: _containers.RepeatedScalarFieldContainer[int]
    include_vectors: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., hashes_only: _Optional[bool] = ..., iids: _Optional[_Iterable[int]] = ..., include_vectors: _Optional[bool] = ...) -> None: ...

class FetchResponse(_message.Message):
    __slots__ = ("documents", "ids", "content_hashes", "documents_by_iid", "records")
    class DocumentsByIidEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: _common_pb2.Document
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[_common_pb2.Document, _Mapping]] = ...) -> None: ...
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASHES_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_BY_IID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[_common_pb2.Document]
    ids: _containers.RepeatedScalarFieldContainer[str]
    content_hashes: _containers.RepeatedScalarFieldContainer[str]
    documents_by_iid: _containers.MessageMap[int, _common_pb2.Document]
    records: _containers.RepeatedCompositeFieldContainer[DocumentVector]
    def __init__(self, documents: _Optional[_Iterable[_Union[_common_pb2.Document, _Mapping]]] = ..., ids: _Optional[_Iterable[str]] = ..., content_hashes: _Optional[_Iterable[str]] = ..., documents_by_iid: _Optional[_Mapping[int, _common_pb2.Document]] = ..., records: _Optional[_Iterable[_Union[DocumentVector, _Mapping]]] = ...) -> None: ...

class DigestRequest(_message.Message):
    __slots__ = ("after_id", "limit")
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    after_id: str
    limit: int
    def __init__(self, after_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class DigestResponse(_message.Message):
    __slots__ = ("ids", "versions", "content_hashes", "deleted")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASHES_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    versions: _containers.RepeatedScalarFieldContainer[int]
    content_hashes: _containers.RepeatedScalarFieldContainer[str]
    deleted: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., versions: _Optional[_Iterable[int]] = ..., content_hashes: _Optional[_Iterable[str]] = ..., deleted: _Optional[_Iterable[bool]] = ...) -> None: ...

class ShardInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShardInfoResponse(_message.Message):
    __slots__ = ("shard", "documents", "dim", "metric", "index_factory", "embedding_model", "sequence", "trained", "max_k", "max_batch", "stored_documents", "tombstones", "checkpoint_sequence", "index_bytes", "lexical_documents", "lexical_terms", "lexical_postings", "lexical_bytes", "lexical_config")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_FACTORY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TRAINED_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    STORED_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_TERMS_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_POSTINGS_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_CONFIG_FIELD_NUMBER: _ClassVar[int]
    shard: int
    documents: int
    dim: int
    metric: _common_pb2.Metric
    index_factory: str
    embedding_model: str
    sequence: int
    trained: bool
    max_k: int
    max_batch: int
    stored_documents: int
    tombstones: int
    checkpoint_sequence: int
    index_bytes: int
    lexical_documents: int
    lexical_terms: int
    lexical_postings: int
    lexical_bytes: int
    lexical_config: str
    def __init__(self, shard: _Optional[int] = ..., documents: _Optional[int] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[_common_pb2.Metric, str]] = ..., index_factory: _Optional[str] = ..., embedding_model: _Optional[str] = ..., sequence: _Optional[int] = ..., trained: _Optional[bool] = ..., max_k: _Optional[int] = ..., max_batch: _Optional[int] = ..., stored_documents: _Optional[int] = ..., tombstones: _Optional[int] = ..., checkpoint_sequence: _Optional[int] = ..., index_bytes: _Optional[int] = ..., lexical_documents: _Optional[int] = ..., lexical_terms: _Optional[int] = ..., lexical_postings: _Optional[int] = ..., lexical_bytes: _Optional[int] = ..., lexical_config: _Optional[str] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotHeader(_message.Message):
    __slots__ = ("shard", "sequence", "size_bytes", "dim", "metric", "index_factory", "embedding_model", "documents")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_FACTORY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    sequence: int
    size_bytes: int
    dim: int
    metric: _common_pb2.Metric
    index_factory: str
    embedding_model: str
    documents: int
    def __init__(self, shard: _Optional[int] = ..., sequence: _Optional[int] = ..., size_bytes: _Optional[int] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[_common_pb2.Metric, str]] = ..., index_factory: _Optional[str] = ..., embedding_model: _Optional[str] = ..., documents: _Optional[int] = ...) -> None: ...

class SnapshotTrailer(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("header", "data", "trailer")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    header: SnapshotHeader
    data: bytes
    trailer: SnapshotTrailer
    def __init__(self, header: _Optional[_Union[SnapshotHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., trailer: _Optional[_Union[SnapshotTrailer, _Mapping]] = ...) -> None: ...

class RebuildRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RebuildResponse(_message.Message):
    __slots__ = ("documents", "sequence", "seconds")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    documents: int
    sequence: int
    seconds: float
    def __init__(self, documents: _Optional[int] = ..., sequence: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("source",)
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    source: str
    def __init__(self, source: _Optional[str] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("sequence", "documents", "seconds")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    documents: int
    seconds: float
    def __init__(self, sequence: _Optional[int] = ..., documents: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...
