"""RouterService servicer: embed, fan out, merge, generate. Thin: the logic lives in fanout, merge,
prompt and generate."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar, cast

import grpc
import numpy as np
from grpc.aio import ServicerContext
from grpc_health.v1 import health_pb2

from ragcluster import tracing
from ragcluster.channels import health_stub
from ragcluster.convert import document_from_pb, matrix_to_pb
from ragcluster.documents import MAX_METADATA_KEY_BYTES, Document, validate_batch, validate_id
from ragcluster.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from ragcluster.hashing import shard_for
from ragcluster.log import annotate, request_id
from ragcluster.tokens import MAX_STREAM_INTERVAL
from ragcluster.v1 import common_pb2, generator_pb2, router_pb2, router_pb2_grpc, shard_pb2
from router import metrics
from router.collections import Collection, write_active
from router.config import RouterConfig
from router.embedding import Embedder
from router.fusion import FUSIONS, MODES, FusedHit, GlobalTerms, ShardTermStats, combine_term_stats, rrf, single
from router.fusion import weighted as weighted_fusion
from router.generate import GeneratorNode, GeneratorPool
from router.merge import ShardTopK, merge_topk
from router.prompt import Passage, Prompt, PromptTemplate
from router.replicas import Replica, SearchBatcher, ShardGroup, count_search, fan_out

logger = logging.getLogger(__name__)
_Info = TypeVar("_Info")

MAX_QUERY_CHARS = 10_000
MAX_WINDOW = 1000  # hybrid candidates per retriever (a shard's default --max-k)
MAX_IDS = 10_000  # ids in one Delete / Lookup
MAX_FILTER_CONDITIONS = 64
MAX_ANY_OF = 1024
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256


def check_filter(flt: common_pb2.Filter | None) -> None:
    """Bounds on a metadata filter (its semantics are checked by the shards)."""
    if flt is None:
        return
    if len(flt.must) > MAX_FILTER_CONDITIONS:
        raise InvalidArgument(f"filter.must: at most {MAX_FILTER_CONDITIONS} conditions")
    for i, cond in enumerate(flt.must):
        if not cond.field or len(cond.field.encode()) > MAX_METADATA_KEY_BYTES:
            raise InvalidArgument(f"filter.must[{i}].field: 1 to {MAX_METADATA_KEY_BYTES} bytes")
        if cond.WhichOneof("test") == "any_of" and len(cond.any_of.values) > MAX_ANY_OF:
            raise InvalidArgument(f"filter.must[{i}].any_of: at most {MAX_ANY_OF} values")
        if cond.WhichOneof("test") is None:
            raise InvalidArgument(f"filter.must[{i}]: set equals, any_of or range")


def check_sampling(sampling: common_pb2.SamplingParams) -> None:
    if len(sampling.stop) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_CHARS for s in sampling.stop):
        raise InvalidArgument(f"sampling.stop: at most {MAX_STOP_SEQUENCES} strings of {MAX_STOP_CHARS} characters")
    for name in ("temperature", "top_p", "repetition_penalty"):
        if sampling.HasField(name) and not math.isfinite(getattr(sampling, name)):
            raise InvalidArgument(f"sampling.{name}: not a finite number")
    if sampling.HasField("stream_interval") and not 1 <= sampling.stream_interval <= MAX_STREAM_INTERVAL:
        raise InvalidArgument(f"sampling.stream_interval: must be between 1 and {MAX_STREAM_INTERVAL} (1 = every "
                              f"token), got {sampling.stream_interval}")


def embedding_text(title: str, text: str) -> str:
    """What is embedded for a document: its title (if any) and text."""
    return f"{title}\n{text}" if title else text


@dataclass(frozen=True)
class Retrieval:
    """How one request retrieves: mode, and for hybrid the fusion and its candidate window."""

    mode: str = "dense"
    fusion: str = "rrf"
    rrf_k: int = 60
    alpha: float = 0.5
    window: int = 10


_MODE_NAMES: dict[router_pb2.RetrievalMode.ValueType, str] = {
    router_pb2.RETRIEVAL_MODE_DENSE: "dense", router_pb2.RETRIEVAL_MODE_LEXICAL: "lexical",
    router_pb2.RETRIEVAL_MODE_HYBRID: "hybrid"}
_MODE_PB = {name: value for value, name in _MODE_NAMES.items()}
_FUSION_NAMES: dict[router_pb2.FusionMethod.ValueType, str] = {
    router_pb2.FUSION_METHOD_RRF: "rrf", router_pb2.FUSION_METHOD_WEIGHTED: "weighted"}


def higher_is_better(responses: list[shard_pb2.ShardSearchResponse]) -> bool:
    """How the shards' scores compare: inner product (higher is better) or L2 distance (lower is better).
    Shards that disagree cannot be merged into one ranking."""
    metrics_seen = {r.metric for r in responses} - {common_pb2.METRIC_UNSPECIFIED}  # unspecified: an older shard
    if len(metrics_seen) > 1:
        raise FailedPrecondition("shards use different metrics (inner product and L2); their scores cannot be "
                                 "merged: rebuild them with one --metric")
    return metrics_seen != {common_pb2.METRIC_L2}


def no_shard_answered(failures: list[common_pb2.ShardFailure]) -> DeadlineExceeded | Unavailable:
    """The error when no shard answered: DEADLINE_EXCEEDED when every shard ran out of the caller's budget
    (the shard calls get what is left of it), else UNAVAILABLE."""
    reasons = "; ".join(f"shard {f.shard}: {f.message}" for f in failures)
    if failures and all(f.reason == common_pb2.SHARD_FAILURE_REASON_TIMEOUT for f in failures):
        return DeadlineExceeded(f"no shard answered within the request's deadline: {reasons}")
    return Unavailable(f"no shard answered: {reasons}")


def _timing_fields(timings: router_pb2.Timings) -> dict[str, float]:
    """A request's timings for its access-log line, in milliseconds (those that were measured)."""
    return {f"{field.name.removesuffix('_seconds')}_ms": round(value * 1000, 3)
            for field, value in timings.ListFields()}


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, config: RouterConfig, groups: list[ShardGroup], pool: GeneratorPool,
                 embedder: Embedder | None = None, template: PromptTemplate | None = None,
                 collections: dict[str, Collection] | None = None, active: str | None = None) -> None:
        self.config = config
        self.collections = collections or {config.collection: Collection(config.collection, groups,
                                                                         config.embedding_model)}
        self.active = active or config.collection
        if self.active not in self.collections:
            raise InvalidArgument(f"collection: active collection {self.active!r} is not configured")
        self.pool = pool
        self.template = template or PromptTemplate()
        self._embed_executor = ThreadPoolExecutor(1, thread_name_prefix="embed")  # one encode at a time
        self.search_batcher = SearchBatcher(config.fanout_max_batch)  # dense searches share shard calls
        self.in_flight = 0
        metrics.MAX_IN_FLIGHT.set(config.max_in_flight)
        if embedder is not None:
            self.embedder = embedder

    @property
    def groups(self) -> list[ShardGroup]:
        return self.collections[self.active].groups

    @property
    def embedder(self) -> Embedder | None:
        return self.collections[self.active].embedder

    @embedder.setter
    def embedder(self, embedder: Embedder) -> None:
        """Use ``embedder`` for every collection whose model it is (all of them when none is set yet)."""
        for col in self.collections.values():
            if col.embedder is None and col.model_spec in (embedder.name, self.config.embedding_model):
                self.set_collection_embedder(col, embedder)

    def set_collection_embedder(self, col: Collection, embedder: Embedder) -> None:
        col.set_embedder(embedder, self.config.embed_max_batch, self.config.embed_max_wait_us, self._embed_executor,
                         self.config.embed_bulk_chunk)

    def _collection(self, name: str = "") -> Collection:
        """The collection a request uses from start to end (resolved once: a switch cannot split it)."""
        name = name or self.active
        col = self.collections.get(name)
        if col is None:
            raise InvalidArgument(f"collection: unknown {name[:64]!r} (configured: "
                                  f"{', '.join(sorted(self.collections))})")
        if col.embedder is None:
            raise Unavailable("router is still loading its embedding model")
        return col

    async def close(self) -> None:
        for col in self.collections.values():
            if col.batcher is not None:
                await col.batcher.close()
        await self.search_batcher.close()
        self._embed_executor.shutdown(wait=False)

    # --- helpers --------------------------------------------------------------------------------
    def _budget(self, context: ServicerContext | None) -> float:
        """Time for the shard calls: the caller's remaining deadline minus a margin to answer in time."""
        remaining = context.time_remaining() if context is not None else None
        if remaining is None:
            return self.config.timeout_seconds
        return max(min(remaining - self.config.deadline_margin_ms / 1000, self.config.timeout_seconds), 0.001)

    ADMITTED = frozenset({"Search", "Ask", "Ingest"})  # the RPCs that take an admission slot

    def overloaded(self, method: str) -> str | None:
        """Asked by the server's interceptor as each call arrives, before any per-request work (parsing,
        request id, tracing, logging context): the refusal message when ``method`` takes a slot and none is
        free, else None. A call that passes still takes its slot in ``_admit`` (which refuses it if the slots
        filled up meanwhile)."""
        if method not in self.ADMITTED or self.in_flight < self.config.max_in_flight:
            return None
        metrics.REJECTED.inc()
        return self._busy()

    def _busy(self) -> str:
        return f"router busy: {self.in_flight} requests in flight (limit {self.config.max_in_flight})"

    @contextlib.contextmanager
    def _admit(self) -> Iterator[None]:
        """Admission control: RESOURCE_EXHAUSTED at once beyond max_in_flight, never a growing queue."""
        if self.in_flight >= self.config.max_in_flight:
            metrics.REJECTED.inc()
            raise ResourceExhausted(self._busy())
        self.in_flight += 1
        metrics.IN_FLIGHT.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            metrics.IN_FLIGHT.set(self.in_flight)

    @staticmethod
    def _check_coverage(coverage: common_pb2.Coverage,
                        request: router_pb2.SearchRequest | router_pb2.AskRequest) -> None:
        if not request.HasField("min_coverage"):
            return
        wanted = request.min_coverage
        if not 0 < wanted <= 1:
            raise InvalidArgument(f"min_coverage: must be in (0, 1], got {wanted}")
        have = coverage.shards_answered / max(coverage.shards_total, 1)
        if have + 1e-9 < wanted:
            reasons = "; ".join(f"shard {f.shard}: {common_pb2.ShardFailureReason.Name(f.reason)}"
                                for f in coverage.failures)
            raise Unavailable(f"coverage {coverage.shards_answered}/{coverage.shards_total} shards is below "
                              f"min_coverage {wanted:g} ({reasons})", details=[coverage])

    @tracing.traced("embed")
    async def _embed(self, col: Collection, texts: list[str], kind: str) -> np.ndarray:
        """Queries go through the micro-batcher; document batches through its low-priority bulk lane, in
        small chunks encoded only when no query waits (one encode at a time on one embedding thread: the
        model uses all cores itself)."""
        embedder, batcher = col.embedder, col.batcher
        if embedder is None or batcher is None:  # _collection() already refused a collection still loading
            raise Unavailable("router is still loading its embedding model")
        if kind == "query" and len(texts) == 1:
            return (await batcher.encode(texts[0])).reshape(1, -1)
        if kind == "document" and self.config.embed_bulk_chunk > 0:
            return await batcher.encode_bulk(texts)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._embed_executor, embedder.encode, texts)
        metrics.EMBED_SECONDS.labels(kind).observe(time.perf_counter() - start)
        return vectors

    def _k(self, k: int, default: int) -> int:
        k = k or default
        if not 1 <= k <= self.config.max_k:
            raise InvalidArgument(f"k: must be between 1 and {self.config.max_k}, got {k}")
        return k

    async def _query_vector(self, col: Collection, request: router_pb2.SearchRequest,
                            timings: router_pb2.Timings) -> np.ndarray:
        kind = request.WhichOneof("query")
        if kind == "text":
            text = request.text.strip()
            if not text:
                raise InvalidArgument("text: empty query")
            if len(text) > MAX_QUERY_CHARS:
                raise InvalidArgument(f"text: longer than {MAX_QUERY_CHARS} characters")
            start = time.perf_counter()
            vector = await self._embed(col, [text], "query")
            timings.embed_seconds = time.perf_counter() - start
            return vector
        if kind == "vector":
            values = np.asarray(request.vector.values, dtype=np.float32)
            dim = col.embedder.dim if col.embedder is not None else None
            if values.size == 0:
                raise InvalidArgument("vector.values: empty")
            if dim is not None and values.size != dim:
                raise InvalidArgument(f"vector.values: dimension must be {dim}, got {values.size}")
            if not np.isfinite(values).all():
                raise InvalidArgument("vector.values: contains NaN or infinity")
            return values.reshape(1, -1)
        raise InvalidArgument("query: set text or vector")

    def _retrieval(self, mode: router_pb2.RetrievalMode.ValueType, fusion: router_pb2.Fusion | None,
                   k: int) -> Retrieval:
        """The request's mode and fusion, defaults from the config; bad values are INVALID_ARGUMENT."""
        cfg = self.config
        if mode == router_pb2.RETRIEVAL_MODE_UNSPECIFIED:
            name = cfg.search_mode
        elif mode in _MODE_NAMES:
            name = _MODE_NAMES[mode]
        else:
            raise InvalidArgument(f"mode: unknown retrieval mode {mode}")
        method, rrf_k, alpha, window = cfg.fusion, cfg.rrf_k, cfg.fusion_alpha, cfg.fusion_window
        if fusion is not None:
            if fusion.method != router_pb2.FUSION_METHOD_UNSPECIFIED:
                if fusion.method not in _FUSION_NAMES:
                    raise InvalidArgument(f"fusion.method: unknown fusion method {fusion.method}")
                method = _FUSION_NAMES[fusion.method]
            if fusion.HasField("rrf_k"):
                rrf_k = fusion.rrf_k
            if fusion.HasField("alpha"):
                alpha = fusion.alpha
            if fusion.HasField("window"):
                window = fusion.window
        if not 0.0 <= alpha <= 1.0:
            raise InvalidArgument(f"fusion.alpha: must be in [0, 1], got {alpha:g}")
        if not 0 <= window <= MAX_WINDOW:
            raise InvalidArgument(f"fusion.window: must be at most {MAX_WINDOW}, got {window}")
        if rrf_k > 100_000:
            raise InvalidArgument(f"fusion.rrf_k: must be at most 100000, got {rrf_k}")
        assert name in MODES and method in FUSIONS
        return Retrieval(name, method, rrf_k, alpha, max(window, k))

    async def _term_stats(self, col: Collection, text: str, budget: float
                          ) -> tuple[GlobalTerms, list[ShardGroup], list[common_pb2.ShardFailure]]:
        """Phase one of a lexical search: the query's terms with corpus-wide statistics, summed over every
        shard that answered (those are the shards phase two asks), and the failures of the others."""
        answers = await fan_out(col.groups, shard_pb2.TermStatsRequest(texts=[text]), budget, "TermStats")
        parts: list[ShardTermStats] = []
        answered: list[ShardGroup] = []
        failures: list[common_pb2.ShardFailure] = []
        for group, answer in zip(col.groups, answers):
            if answer.response is None:
                if answer.failure is not None:  # always set when there is no response
                    failures.append(answer.failure)
                count_search(group.shard, answer.failure)  # this shard misses the search
                continue
            r = cast(shard_pb2.TermStatsResponse, answer.response)  # the answer to a TermStats fan-out
            q = r.queries[0]
            parts.append(ShardTermStats(group.shard, q.terms, q.counts, q.document_frequencies, r.documents,
                                        r.total_length, r.lexical_config))
            answered.append(group)
        if not parts:
            raise no_shard_answered(failures)
        return combine_term_stats(parts), answered, failures

    async def _fetch_missing(self, col: Collection, wanted: list[tuple[int, int]],
                             documents: dict[tuple[int, int], common_pb2.Document], budget: float) -> None:
        """Documents of final hits a shard did not send with its results (hybrid: beyond its top-k)."""
        missing: dict[int, list[int]] = defaultdict(list)
        for shard, iid in wanted:
            if (shard, iid) not in documents:
                missing[shard].append(iid)
        if not missing:
            return
        groups = {g.shard: g for g in col.groups}
        found = await asyncio.gather(*(groups[s].fetch_by_iids(iids, budget) for s, iids in missing.items()),
                                     return_exceptions=True)
        for shard, part in zip(missing, found):
            if isinstance(part, BaseException):
                logger.warning("shard %d: fetching hit documents failed: %s", shard, part)
                continue
            for iid, doc in part.items():
                documents[(shard, iid)] = doc

    async def retrieve(self, col: Collection, vector: np.ndarray | Awaitable[np.ndarray] | None, k: int,
                       params: common_pb2.SearchParams | None, budget: float, flt: common_pb2.Filter | None = None,
                       retrieval: Retrieval | None = None, text: str = "",
                       ) -> tuple[list[common_pb2.Hit], common_pb2.Coverage]:
        """Dense, lexical or hybrid top-k over every shard. Lexical search runs in two phases: corpus-wide
        term statistics, then the search with them; hybrid takes ``window`` candidates from each retriever
        (exact global top-``window`` each) and fuses them. ``vector`` may still be computing (an awaitable):
        the term statistics are gathered meanwhile."""
        start = time.perf_counter()
        deadline = start + budget
        retrieval = retrieval or Retrieval(window=k)
        mode = retrieval.mode
        width = k if mode != "hybrid" else retrieval.window
        request = shard_pb2.ShardSearchRequest(k=width, include_documents=True, unknown_fields_match_nothing=True,
                                               documents_per_list=k if width > k else 0)
        groups: list[ShardGroup] = col.groups
        failures: list[common_pb2.ShardFailure] = []
        if mode != "dense":
            phase_one = self._term_stats(col, text, budget)
            if inspect.isawaitable(vector):
                vector, (stats, groups, failures) = await asyncio.gather(vector, phase_one)
            else:
                stats, groups, failures = await phase_one
            request.lexical.add(terms=stats.terms, counts=stats.counts,
                                document_frequencies=stats.document_frequencies, documents=stats.documents,
                                total_length=stats.total_length)
        if inspect.isawaitable(vector):
            vector = await vector
        if mode != "lexical":
            if vector is None:
                raise InvalidArgument("query: a dense or hybrid search needs a query vector")
            request.queries.CopyFrom(matrix_to_pb(vector))
        if params is not None:
            request.params.CopyFrom(params)
        if flt is not None and flt.must:
            request.filter.CopyFrom(flt)
        remaining = max(deadline - time.perf_counter(), 0.001)
        if mode == "dense":  # searches embedded together go to each shard as one call
            answers = await self.search_batcher.fan_out(groups, request, remaining)
        else:
            answers = await fan_out(groups, request, remaining)
        coverage = common_pb2.Coverage(shards_total=len(col.groups))
        dense_parts: list[ShardTopK] = []
        lexical_parts: list[ShardTopK] = []
        documents: dict[tuple[int, int], common_pb2.Document] = {}
        by_shard = {a.shard: a for a in answers}
        answered: list[shard_pb2.ShardSearchResponse] = []
        for group in col.groups:
            answer = by_shard.get(group.shard)
            if answer is None or answer.response is None:
                failure = answer.failure if answer is not None else \
                    next((f for f in failures if f.shard == group.shard), None)
                if failure is not None:  # a shard without an answer has a failure (here or from phase one)
                    coverage.failures.append(failure)
                coverage.documents_total += group.last_documents
                continue
            response = cast(shard_pb2.ShardSearchResponse, answer.response)  # the answer to a Search fan-out
            answered.append(response)
            searched = response.lexical_documents if mode == "lexical" else response.vectors_searched
            coverage.shards_answered += 1
            coverage.documents_searched += searched
            coverage.documents_total += searched
            ids: list[int] = []
            if mode != "lexical":
                top = response.results[answer.row]  # a batched answer holds a row per search
                ids += top.ids
                dense_parts.append(ShardTopK(answer.shard, np.array(top.ids, dtype=np.int64),
                                             np.array(top.scores, np.float32)))
            if mode != "dense":
                lex = response.lexical_results[0]
                ids += lex.ids
                lexical_parts.append(ShardTopK(answer.shard, np.array(lex.ids, dtype=np.int64),
                                               np.array(lex.scores, np.float32), np.array(lex.keys, np.uint64)))
            sent = response.documents  # a batched answer carries the documents of every search it holds
            for iid in ids:
                if iid in sent:
                    documents[(answer.shard, iid)] = sent[iid]
        coverage.degraded = coverage.shards_answered < coverage.shards_total
        annotate(collection=col.name, shards=f"{coverage.shards_answered}/{coverage.shards_total}",
                 documents_searched=coverage.documents_searched)
        metrics.COVERAGE_RATIO.observe(coverage.shards_answered / max(coverage.shards_total, 1))
        if coverage.shards_answered == 0:
            raise no_shard_answered(list(coverage.failures))
        unknown_everywhere = set.intersection(*(set(r.unknown_fields) for r in answered))
        if unknown_everywhere:
            raise InvalidArgument(f"filter: unknown metadata field(s) {', '.join(sorted(unknown_everywhere))}")
        dense_better = higher_is_better(answered) if mode != "lexical" else True
        fused: list[FusedHit]
        if mode == "dense":
            fused = single(merge_topk(dense_parts, k, dense_better), "dense")
        elif mode == "lexical":
            fused = single(merge_topk(lexical_parts, k, True), "lexical")
        else:
            dense_top = merge_topk(dense_parts, width, dense_better)
            lexical_top = merge_topk(lexical_parts, width, True)
            if retrieval.fusion == "rrf":
                fused = rrf(dense_top, lexical_top, k, retrieval.rrf_k)
            else:
                fused = weighted_fusion(dense_top, lexical_top, k, retrieval.alpha, dense_better)
            await self._fetch_missing(col, [(h.shard, h.id) for h in fused], documents,
                                      max(deadline - time.perf_counter(), 0.001))
        hits = [
            common_pb2.Hit(document=documents[(h.shard, h.id)], score=h.score, shard=h.shard, dense_rank=h.dense_rank,
                           dense_score=h.dense_score, lexical_rank=h.lexical_rank, lexical_score=h.lexical_score,
                           fused_score=h.fused_score)
            for h in fused
            if (h.shard, h.id) in documents
        ]
        metrics.FANOUT_SECONDS.observe(time.perf_counter() - start)
        metrics.SEARCHES.labels(mode).inc()
        return hits, coverage

    async def _query(self, col: Collection, request: router_pb2.SearchRequest, retrieval: Retrieval,
                     timings: router_pb2.Timings) -> tuple[np.ndarray | Awaitable[np.ndarray] | None, str]:
        """The query vector (dense; for hybrid a coroutine computing it, awaited by ``retrieve`` while it
        gathers term statistics) and text (lexical, hybrid) of a search request."""
        if retrieval.mode == "dense":
            return await self._query_vector(col, request, timings), ""
        if request.WhichOneof("query") != "text":
            raise InvalidArgument(f"text: {retrieval.mode} search needs a text query (a vector has no words)")
        text = request.text.strip()
        if not text:
            raise InvalidArgument("text: empty query")
        if len(text) > MAX_QUERY_CHARS:
            raise InvalidArgument(f"text: longer than {MAX_QUERY_CHARS} characters")
        if retrieval.mode == "lexical":
            return None, text
        return self._query_vector(col, request, timings), text

    # --- RPCs -----------------------------------------------------------------------------------
    async def Search(self, request: router_pb2.SearchRequest, context: ServicerContext) -> router_pb2.SearchResponse:
        with self._admit():
            return await self._search(request, context)

    async def _search(self, request: router_pb2.SearchRequest, context: ServicerContext) -> router_pb2.SearchResponse:
        start = time.perf_counter()
        budget = self._budget(context)
        col = self._collection(request.collection)
        k = self._k(request.k, self.config.default_k)
        retrieval = self._retrieval(request.mode, request.fusion if request.HasField("fusion") else None, k)
        timings = router_pb2.Timings()
        vector, text = await self._query(col, request, retrieval, timings)
        t = time.perf_counter()
        params = request.params if request.HasField("params") else None
        flt = request.filter if request.HasField("filter") else None
        check_filter(flt)
        hits, coverage = await self.retrieve(col, vector, k, params, budget - (time.perf_counter() - start), flt,
                                             retrieval, text)
        self._check_coverage(coverage, request)
        timings.retrieve_seconds = time.perf_counter() - t
        timings.total_seconds = time.perf_counter() - start
        annotate(mode=retrieval.mode, hits=len(hits), **_timing_fields(timings))
        return router_pb2.SearchResponse(hits=hits, coverage=coverage, timings=timings, collection=col.name,
                                         embedding_model=col.model_name, mode=_MODE_PB[retrieval.mode])

    async def Ask(self, request: router_pb2.AskRequest, context: ServicerContext) -> AsyncIterator[router_pb2.AskEvent]:
        # closed here, not left to garbage collection: a client that cancels while Ask sits at its yield
        # reaches _ask's finally (which cancels the generation it started) at once
        with self._admit():
            async with contextlib.aclosing(self._ask(request, context)) as events:
                async for event in events:
                    yield event

    async def _ask(self, request: router_pb2.AskRequest,
                   context: ServicerContext) -> AsyncGenerator[router_pb2.AskEvent]:
        start = time.perf_counter()
        question = request.question.strip()
        if not question:
            raise InvalidArgument("question: empty")
        if len(question) > MAX_QUERY_CHARS:
            raise InvalidArgument(f"question: longer than {MAX_QUERY_CHARS} characters")
        col = self._collection(request.collection)
        k = self._k(request.k, self.config.ask_k)
        sampling = common_pb2.SamplingParams()
        sampling.CopyFrom(request.sampling)
        if not sampling.HasField("max_tokens"):
            sampling.max_tokens = self.config.default_max_tokens
        if sampling.max_tokens == 0:
            raise InvalidArgument("sampling.max_tokens: must be positive")
        check_sampling(sampling)
        retrieval = self._retrieval(request.mode, request.fusion if request.HasField("fusion") else None, k)
        timings = router_pb2.Timings()

        async def embed() -> np.ndarray:
            began = time.perf_counter()
            vector = await self._embed(col, [question], "query")
            timings.embed_seconds = time.perf_counter() - began
            return vector

        t = time.perf_counter()
        vector: np.ndarray | Awaitable[np.ndarray] | None = None
        if retrieval.mode == "dense":
            vector = await embed()
            t = time.perf_counter()
        elif retrieval.mode == "hybrid":
            vector = embed()  # embedded while the term statistics are gathered
        flt = request.filter if request.HasField("filter") else None
        check_filter(flt)
        hits, coverage = await self.retrieve(col, vector, k, None, self._budget(context), flt, retrieval, question)
        self._check_coverage(coverage, request)
        timings.retrieve_seconds = time.perf_counter() - t
        passages = [Passage(h.document.id, h.document.text, h.document.title, h.score) for h in hits]
        gen_budget = context.time_remaining() if context.time_remaining() is not None else None
        gen_timeout = min(gen_budget, self.config.generate_timeout_seconds) if gen_budget else \
            self.config.generate_timeout_seconds
        t = time.perf_counter()
        prompt: Prompt | None = None
        stream = self.pool.generate(question, passages, sampling, self.template, gen_timeout, request_id.get())
        # the generation starts now (prompt fitted, Generate sent) while the hits go out to the client
        first: asyncio.Future[tuple[GeneratorNode, Prompt | None, generator_pb2.GenerateEvent | None]] = \
            asyncio.ensure_future(anext(stream))
        try:
            yield router_pb2.AskEvent(hits=router_pb2.AskHits(hits=hits, coverage=coverage, collection=col.name,
                                                              embedding_model=col.model_name,
                                                              mode=_MODE_PB[retrieval.mode]))
            item: tuple[GeneratorNode, Prompt | None, generator_pb2.GenerateEvent | None] | None = await first
            while item is not None:
                node, new_prompt, event = item
                if new_prompt is not None:
                    prompt = new_prompt
                    timings.prompt_seconds = time.perf_counter() - t
                elif event is not None and event.HasField("delta"):
                    if not timings.time_to_first_token_seconds:
                        timings.time_to_first_token_seconds = time.perf_counter() - start
                        metrics.TTFT_SECONDS.observe(timings.time_to_first_token_seconds)
                    yield router_pb2.AskEvent(delta=router_pb2.AnswerDelta(text=event.delta.text))
                elif event is not None and event.HasField("complete"):
                    done = event.complete
                    timings.generate_seconds = time.perf_counter() - t
                    timings.total_seconds = time.perf_counter() - start
                    metrics.observe_completion(done.completion_tokens, timings)
                    annotate(completion_tokens=done.completion_tokens, generator=node.address,
                             **_timing_fields(timings))
                    yield router_pb2.AskEvent(complete=router_pb2.AskComplete(
                        citations=prompt.citations if prompt else [], finish_reason=done.finish_reason,
                        prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens, timings=timings,
                        generator=node.address, model=node.info.model if node.info else "",
                    ))
                item = await anext(stream, None)
        finally:
            if not first.done():  # the client left (or the hits failed to go out) before the first token
                first.cancel()  # unwinds the pool's generator: the Generate call is cancelled, the engine aborts
                await asyncio.wait([first])
            elif not first.cancelled():
                first.exception()  # retrieved: it was raised above, or the client left after it failed
            await stream.aclose()

    async def Ingest(self, request_iterator: AsyncIterator[router_pb2.IngestRequest],
                     context: ServicerContext) -> AsyncIterator[router_pb2.IngestResponse]:
        with self._admit():
            async with contextlib.aclosing(self._ingest(request_iterator, context)) as responses:
                async for response in responses:
                    yield response

    async def _ingest(self, request_iterator: AsyncIterator[router_pb2.IngestRequest],
                      context: ServicerContext) -> AsyncGenerator[router_pb2.IngestResponse]:
        """Embed batch i+1 while batch i is being written to the shards (so embedding, the slow part,
        runs back to back); acknowledgements still go out in order, each once its batch is durable."""
        total = 0
        writing: asyncio.Task | None = None
        col: Collection | None = None
        messages = aiter(request_iterator)
        idle = self.config.ingest_idle_timeout_seconds
        try:
            while True:
                try:  # an idle stream must not hold its admission slot forever
                    request = await asyncio.wait_for(anext(messages), idle if idle > 0 else None)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    if writing is not None:  # what was sent is still written and acknowledged
                        count = await writing
                        writing = None
                        total += count
                        yield router_pb2.IngestResponse(acknowledged=count, total_acknowledged=total)
                    raise DeadlineExceeded(f"ingest: no message for {idle:g} s; the stream was closed to free its "
                                           "admission slot (batches acknowledged so far are durable; reopen the "
                                           "stream to send more)") from None
                if col is None:
                    col = self._collection(request.collection)  # for the whole stream
                elif request.collection and request.collection != col.name:
                    raise InvalidArgument(f"collection: this stream writes to {col.name!r}, not {request.collection!r}")
                docs = [document_from_pb(d) for d in request.documents]
                validate_batch(docs, self.config.max_ingest_batch)
                vectors = await self._embed(col, [embedding_text(d.title, d.text) for d in docs], "document")
                if writing is not None:
                    count = await writing
                    total += count
                    yield router_pb2.IngestResponse(acknowledged=count, total_acknowledged=total)
                writing = asyncio.create_task(self._write_batch(col, request, docs, vectors, self._budget(context)))
            if writing is not None:
                count = await writing
                writing = None
                total += count
                yield router_pb2.IngestResponse(acknowledged=count, total_acknowledged=total)
        finally:
            if writing is not None and not writing.done():
                writing.cancel()

    async def _write_batch(self, col: Collection, request: router_pb2.IngestRequest, docs: list[Document],
                           vectors: np.ndarray, budget: float) -> int:
        by_shard: dict[int, shard_pb2.UpsertRequest] = defaultdict(
            lambda: shard_pb2.UpsertRequest(embedding_model=col.model_name)
        )
        for doc, pb, vector in zip(docs, request.documents, vectors):
            entry = by_shard[shard_for(doc.id, len(col.groups))].documents.add()
            entry.document.CopyFrom(pb)
            entry.vector.extend(vector.tolist())
        acked = await asyncio.gather(*(col.groups[s].upsert(req, budget) for s, req in by_shard.items()))
        count = int(sum(acked))
        metrics.INGESTED.inc(count)
        return count

    @staticmethod
    def _ids_by_shard(col: Collection, ids: Sequence[str]) -> dict[int, list[str]]:
        """Ids grouped by the shard that owns them; an empty id is INVALID_ARGUMENT."""
        by_shard: dict[int, list[str]] = defaultdict(list)
        for i, doc_id in enumerate(ids):
            validate_id(doc_id, f"ids[{i}]")
            by_shard[shard_for(doc_id, len(col.groups))].append(doc_id)
        return by_shard

    async def Delete(self, request: router_pb2.DeleteRequest, context: ServicerContext) -> router_pb2.DeleteResponse:
        if len(request.ids) > MAX_IDS:
            raise InvalidArgument(f"ids: at most {MAX_IDS} per call")
        if not request.ids:
            raise InvalidArgument("ids: empty")
        col = self._collection(request.collection)
        by_shard = self._ids_by_shard(col, request.ids)
        budget = self._budget(context)
        deleted = await asyncio.gather(*(col.groups[s].delete(ids, budget) for s, ids in by_shard.items()))
        return router_pb2.DeleteResponse(deleted=int(sum(deleted)))

    async def Lookup(self, request: router_pb2.LookupRequest, context: ServicerContext) -> router_pb2.LookupResponse:
        if len(request.ids) > MAX_IDS:
            raise InvalidArgument(f"ids: at most {MAX_IDS} per call")
        col = self._collection(request.collection)
        by_shard = self._ids_by_shard(col, request.ids)
        budget = self._budget(context)
        found = await asyncio.gather(*(col.groups[s].fetch_hashes(ids, budget) for s, ids in by_shard.items()))
        hashes = {k: v for part in found for k, v in part.items()}
        ids = [i for i in request.ids if i in hashes]
        return router_pb2.LookupResponse(ids=ids, content_hashes=[hashes[i] for i in ids])

    async def ClusterStatus(self, request: router_pb2.ClusterStatusRequest,
                            context: ServicerContext) -> router_pb2.ClusterStatusResponse:
        timeout = min(self._budget(context), 2.0)
        name = request.collection or self.active
        if name not in self.collections:
            raise InvalidArgument(f"collection: unknown {name[:64]!r} (configured: "
                                  f"{', '.join(sorted(self.collections))})")
        col = self.collections[name]
        response = router_pb2.ClusterStatusResponse(
            embedding_model=col.model_name or col.model_spec, dim=col.embedder.dim if col.embedder else 0,
            max_k=self.config.max_k, collection=name, collections=sorted(self.collections),
        )

        async def probe(channel: grpc.aio.Channel, info_call: Callable[[float], Awaitable[_Info]],
                        status: router_pb2.ReplicaStatus | router_pb2.GeneratorStatus) -> _Info | None:
            """Fill ``status`` from a health check and an Info call; unreachable leaves UNREACHABLE."""
            try:
                check = await health_stub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
                status.health = health_pb2.HealthCheckResponse.ServingStatus.Name(check.status)
                return await info_call(timeout)
            except grpc.aio.AioRpcError:
                return None

        async def replica_status(replica: Replica) -> router_pb2.ReplicaStatus:
            status = router_pb2.ReplicaStatus(address=replica.address, health="UNREACHABLE")
            info = await probe(replica.channel, lambda t: replica.stub.Info(shard_pb2.ShardInfoRequest(), timeout=t),
                               status)
            if info is not None:
                status.documents, status.sequence = info.documents, info.sequence
                status.index_factory = info.index_factory
            return status

        async def generator_status(node: GeneratorNode) -> router_pb2.GeneratorStatus:
            status = router_pb2.GeneratorStatus(address=node.address, health="UNREACHABLE")
            info = await probe(node.channel,
                               lambda t: node.stub.Info(generator_pb2.GeneratorInfoRequest(), timeout=t), status)
            if info is not None:
                status.model, status.max_context_length = info.model, info.max_context_length
            return status

        for group in col.groups:
            replicas = await asyncio.gather(*(replica_status(r) for r in group.replicas))
            serving = [r for r in replicas if r.health == "SERVING"]
            documents = max((r.documents for r in serving), default=0)
            response.shards.append(router_pb2.ShardStatus(shard=group.shard, replicas=replicas, documents=documents))
            response.documents += documents
        response.generators.extend(await asyncio.gather(*(generator_status(n) for n in self.pool.nodes)))
        return response

    async def SwitchCollection(self, request: router_pb2.SwitchCollectionRequest, context: ServicerContext
                               ) -> router_pb2.SwitchCollectionResponse:
        col = self._collection(request.name or "")
        if not request.name:
            raise InvalidArgument("name: the collection to switch to is required")
        documents = 0
        for group in col.groups:
            readable = group.readable()
            if not readable:
                raise FailedPrecondition(f"collection {col.name!r}: shard {group.shard} has no SERVING replica")
            infos = await asyncio.gather(*(r.stub.Info(shard_pb2.ShardInfoRequest(), timeout=5) for r in readable))
            for replica, info in zip(readable, infos):
                if info.embedding_model != col.model_name and not (info.embedding_model == "" and info.documents == 0):
                    raise FailedPrecondition(
                        f"collection {col.name!r}: shard {group.shard} replica {replica.address} holds vectors of "
                        f"{info.embedding_model!r}, not {col.model_name!r}; mixing models is refused")
            documents += max(i.documents for i in infos)
        if documents < self.config.switch_min_documents and not request.force:
            raise FailedPrecondition(
                f"collection {col.name!r} holds {documents} documents, fewer than --switch-min-documents "
                f"{self.config.switch_min_documents}: ingest into it first, or set force to switch anyway")
        previous, self.active = self.active, col.name  # one assignment: requests resolve it once
        await asyncio.to_thread(write_active, self.config.state_file, col.name)
        logger.info("active collection %s -> %s (%d documents, %s)", previous, col.name, documents, col.model_name)
        return router_pb2.SwitchCollectionResponse(previous=previous, active=col.name, documents=documents,
                                                   embedding_model=col.model_name)
