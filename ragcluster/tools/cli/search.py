"""`ragcluster search`: exact global top-k by text, as a table or JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc

from ragcluster.config import option
from ragcluster.tools.cli.common import (
    DEFAULT_ROUTER,
    WHERE_HELP,
    console,
    fail,
    parse_where,
)


@dataclass
class SearchOptions:
    router: str = option(DEFAULT_ROUTER, "router address host:port")
    k: int = option(10, "number of hits", short="-k")
    where: list[str] = option([], WHERE_HELP, metavar="COND")
    min_coverage: float = option(0.0, "fail unless this share of shards (0..1] answers; 0 = accept partial results")
    collection: str = option("", "collection to search (default: the active one)")
    timeout: float = option(30.0, "deadline in seconds")
    json: bool = option(False, "print JSON: {hits: [{id, score, shard, text, metadata}], coverage}")


def cmd_search(opts: SearchOptions, ns) -> int:
    from ragcluster.client import RouterClient, coverage_from_error

    with RouterClient(opts.router) as client:
        try:
            result = client.search(ns.text, k=opts.k, timeout=opts.timeout, where=parse_where(opts.where),
                                   min_coverage=opts.min_coverage or None, collection=opts.collection)
        except grpc.RpcError as exc:
            coverage = coverage_from_error(exc)
            if coverage is None:
                raise
            if opts.json:
                print(json.dumps({"error": exc.code().name, "message": exc.details(), "coverage": coverage}))
            return fail(f"{exc.code().name}: {exc.details()}")
    if opts.json:
        result.pop("timings", None)
        print(json.dumps(result))
        return 0
    from rich.table import Table

    cov = result["coverage"]
    table = Table(title=f"{len(result['hits'])} hits — {cov['shards_answered']}/{cov['shards_total']} shards"
                        + (" [red](degraded)[/]" if cov["degraded"] else ""))
    for col in ("#", "score", "shard", "id", "title / text"):
        table.add_column(col, overflow="fold")
    for i, h in enumerate(result["hits"], 1):
        snippet = (h["title"] + " — " if h["title"] else "") + h["text"][:100]
        table.add_row(str(i), f"{h['score']:.4f}", str(h["shard"]), h["id"], snippet)
    console().print(table)
    return 0
