from ragcluster.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RetrievalMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RETRIEVAL_MODE_UNSPECIFIED: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_DENSE: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_LEXICAL: _ClassVar[RetrievalMode]
    RETRIEVAL_MODE_HYBRID: _ClassVar[RetrievalMode]

class FusionMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FUSION_METHOD_UNSPECIFIED: _ClassVar[FusionMethod]
    FUSION_METHOD_RRF: _ClassVar[FusionMethod]
    FUSION_METHOD_WEIGHTED: _ClassVar[FusionMethod]
RETRIEVAL_MODE_UNSPECIFIED: RetrievalMode
RETRIEVAL_MODE_DENSE: RetrievalMode
RETRIEVAL_MODE_LEXICAL: RetrievalMode
RETRIEVAL_MODE_HYBRID: RetrievalMode
FUSION_METHOD_UNSPECIFIED: FusionMethod
FUSION_METHOD_RRF: FusionMethod
FUSION_METHOD_WEIGHTED: FusionMethod

class SwitchCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SwitchCollectionResponse(_message.Message):
    __slots__ = ("previous", "active", "documents", "embedding_model")
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    previous: str
    active: str
    documents: int
    embedding_model: str
    def __init__(self, previous: _Optional[str] = ..., active: _Optional[str] = ..., documents: _Optional[int] = ..., embedding_model: _Optional[str] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("ids", "collection")
    IDS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    collection: str
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., collection: _Optional[str] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("ids", "content_hashes")
    IDS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASHES_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    content_hashes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., content_hashes: _Optional[_Iterable[str]] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Fusion(_message.Message):
    __slots__ = ("method", "rrf_k", "alpha", "window")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    RRF_K_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    method: FusionMethod
    rrf_k: int
    alpha: float
    window: int
    def __init__(self, method: _Optional[_Union[FusionMethod, str]] = ..., rrf_k: _Optional[int] = ..., alpha: _Optional[float] = ..., window: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("text", "vector", "k", "params", "filter", "min_coverage", "collection", "mode", "fusion")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MIN_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    text: str
    vector: Vector
    k: int
    params: _common_pb2.SearchParams
    filter: _common_pb2.Filter
    min_coverage: float
    collection: str
    mode: RetrievalMode
    fusion: Fusion
    def __init__(self, text: _Optional[str] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., k: _Optional[int] = ..., params: _Optional[_Union[_common_pb2.SearchParams, _Mapping]] = ..., filter: _Optional[_Union[_common_pb2.Filter, _Mapping]] = ..., min_coverage: _Optional[float] = ..., collection: _Optional[str] = ..., mode: _Optional[_Union[RetrievalMode, str]] = ..., fusion: _Optional[_Union[Fusion, _Mapping]] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("embed_seconds", "retrieve_seconds", "prompt_seconds", "time_to_first_token_seconds", "generate_seconds", "total_seconds")
    EMBED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    embed_seconds: float
    retrieve_seconds: float
    prompt_seconds: float
    time_to_first_token_seconds: float
    generate_seconds: float
    total_seconds: float
    def __init__(self, embed_seconds: _Optional[float] = ..., retrieve_seconds: _Optional[float] = ..., prompt_seconds: _Optional[float] = ..., time_to_first_token_seconds: _Optional[float] = ..., generate_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "coverage", "timings", "collection", "embedding_model", "mode")
    HITS_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[_common_pb2.Hit]
    coverage: _common_pb2.Coverage
    timings: Timings
    collection: str
    embedding_model: str
    mode: RetrievalMode
    def __init__(self, hits: _Optional[_Iterable[_Union[_common_pb2.Hit, _Mapping]]] = ..., coverage: _Optional[_Union[_common_pb2.Coverage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., collection: _Optional[str] = ..., embedding_model: _Optional[str] = ..., mode: _Optional[_Union[RetrievalMode, str]] = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("question", "k", "sampling", "filter", "min_coverage", "collection", "mode", "fusion")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    MIN_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FUSION_FIELD_NUMBER: _ClassVar[int]
    question: str
    k: int
    sampling: _common_pb2.SamplingParams
    filter: _common_pb2.Filter
    min_coverage: float
    collection: str
    mode: RetrievalMode
    fusion: Fusion
    def __init__(self, question: _Optional[str] = ..., k: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., filter: _Optional[_Union[_common_pb2.Filter, _Mapping]] = ..., min_coverage: _Optional[float] = ..., collection: _Optional[str] = ..., mode: _Optional[_Union[RetrievalMode, str]] = ..., fusion: _Optional[_Union[Fusion, _Mapping]] = ...) -> None: ...

class AskHits(_message.Message):
    __slots__ = ("hits", "coverage", "collection", "embedding_model", "mode")
    HITS_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[_common_pb2.Hit]
    coverage: _common_pb2.Coverage
    collection: str
    embedding_model: str
    mode: RetrievalMode
    def __init__(self, hits: _Optional[_Iterable[_Union[_common_pb2.Hit, _Mapping]]] = ..., coverage: _Optional[_Union[_common_pb2.Coverage, _Mapping]] = ..., collection: _Optional[str] = ..., embedding_model: _Optional[str] = ..., mode: _Optional[_Union[RetrievalMode, str]] = ...) -> None: ...

class AnswerDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class AskComplete(_message.Message):
    __slots__ = ("citations", "finish_reason", "prompt_tokens", "completion_tokens", "timings", "generator", "model")
    CITATIONS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    citations: _containers.RepeatedScalarFieldContainer[str]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    generator: str
    model: str
    def __init__(self, citations: _Optional[_Iterable[str]] = ..., finish_reason: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., generator: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class AskEvent(_message.Message):
    __slots__ = ("hits", "delta", "complete")
    HITS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    hits: AskHits
    delta: AnswerDelta
    complete: AskComplete
    def __init__(self, hits: _Optional[_Union[AskHits, _Mapping]] = ..., delta: _Optional[_Union[AnswerDelta, _Mapping]] = ..., complete: _Optional[_Union[AskComplete, _Mapping]] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("documents", "collection")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[_common_pb2.Document]
    collection: str
    def __init__(self, documents: _Optional[_Iterable[_Union[_common_pb2.Document, _Mapping]]] = ..., collection: _Optional[str] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("acknowledged", "total_acknowledged")
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    acknowledged: int
    total_acknowledged: int
    def __init__(self, acknowledged: _Optional[int] = ..., total_acknowledged: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("ids", "collection")
    IDS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    collection: str
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., collection: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("address", "health", "documents", "sequence", "index_factory")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FACTORY_FIELD_NUMBER: _ClassVar[int]
    address: str
    health: str
    documents: int
    sequence: int
    index_factory: str
    def __init__(self, address: _Optional[str] = ..., health: _Optional[str] = ..., documents: _Optional[int] = ..., sequence: _Optional[int] = ..., index_factory: _Optional[str] = ...) -> None: ...

class ShardStatus(_message.Message):
    __slots__ = ("shard", "replicas", "documents")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    documents: int
    def __init__(self, shard: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ..., documents: _Optional[int] = ...) -> None: ...

class GeneratorStatus(_message.Message):
    __slots__ = ("address", "health", "model", "max_context_length")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    address: str
    health: str
    model: str
    max_context_length: int
    def __init__(self, address: _Optional[str] = ..., health: _Optional[str] = ..., model: _Optional[str] = ..., max_context_length: _Optional[int] = ...) -> None: ...

class ClusterStatusResponse(_message.Message):
    __slots__ = ("shards", "documents", "generators", "embedding_model", "dim", "max_k", "collection", "collections")
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    GENERATORS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MAX_K_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedCompositeFieldContainer[ShardStatus]
    documents: int
    generators: _containers.RepeatedCompositeFieldContainer[GeneratorStatus]
    embedding_model: str
    dim: int
    max_k: int
    collection: str
    collections: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, shards: _Optional[_Iterable[_Union[ShardStatus, _Mapping]]] = ..., documents: _Optional[int] = ..., generators: _Optional[_Iterable[_Union[GeneratorStatus, _Mapping]]] = ..., embedding_model: _Optional[str] = ..., dim: _Optional[int] = ..., max_k: _Optional[int] = ..., collection: _Optional[str] = ..., collections: _Optional[_Iterable[str]] = ...) -> None: ...
