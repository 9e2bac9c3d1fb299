"""`ragcluster search`: exact global top-k by text, as a table or JSON."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from ragcluster.config import option
from ragcluster.tools.cli.common import QueryOptions, connect, console, escape, fail, query_kwargs

if TYPE_CHECKING:
    from rich.table import Table

    from ragcluster.types import SearchResult


@dataclass
class SearchOptions(QueryOptions):
    k: int = option(10, "number of hits", short="-k")
    min_coverage: float = option(0.0, "fail unless this share of shards (0..1] answers; 0 = accept partial results")
    collection: str = option("", "collection to search (default: the active one)")
    timeout: float = option(30.0, "deadline in seconds")
    json: bool = option(False, "print JSON: {hits: [{id, score, shard, text, metadata, dense_rank, dense_score, "
                               "lexical_rank, lexical_score, fused_score}], coverage, mode}")


def cmd_search(opts: SearchOptions, ns: argparse.Namespace) -> int:
    from ragcluster.client import coverage_from_error
    from ragcluster.convert import to_json

    query = query_kwargs(opts)
    with connect(opts) as client:
        try:
            result = client.search(ns.text, k=opts.k, timeout=opts.timeout, min_coverage=opts.min_coverage or None,
                                   collection=opts.collection, **query)
        except grpc.RpcError as exc:
            coverage = coverage_from_error(exc)
            if coverage is None:
                raise
            if opts.json:
                print(json.dumps({"error": exc.code().name, "message": exc.details(), "coverage": to_json(coverage)}))
            return fail(f"{exc.code().name}: {exc.details()}")
    if opts.json:
        shown = to_json(result)
        del shown["timings"]
        print(json.dumps(shown))
        return 0
    console().print(hits_table(result))
    return 0


def hits_table(result: SearchResult) -> Table:
    """The hits as a rich table; document text is shown literally (its [markup] is escaped)."""
    from rich.table import Table

    cov = result.coverage
    table = Table(title=f"{len(result.hits)} hits ({result.mode}) — {cov.shards_answered}/"
                        f"{cov.shards_total} shards" + (" [red](degraded)[/]" if cov.degraded else ""))
    hybrid = result.mode == "hybrid"
    for col in ("#", "score", *(("dense #", "lexical #") if hybrid else ()), "shard", "id", "title / text"):
        table.add_column(col, overflow="fold")
    for i, h in enumerate(result.hits, 1):
        snippet = (h.title + " — " if h.title else "") + h.text[:100]
        ranks = (str(h.dense_rank or "–"), str(h.lexical_rank or "–")) if hybrid else ()
        table.add_row(str(i), f"{h.score:.4f}", *ranks, str(h.shard), escape(h.id), escape(snippet))
    return table
