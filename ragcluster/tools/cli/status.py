"""`ragcluster status`: shards, replicas, health, documents, generators."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from ragcluster.config import option
from ragcluster.tools.cli.common import ConnectOptions, connect, console, escape


@dataclass
class StatusOptions(ConnectOptions):
    collection: str = option("", "collection to describe (default: the active one)")
    json: bool = option(False, "print JSON: {documents, shards: [{shard, documents, replicas}], generators}")


def cmd_status(opts: StatusOptions, ns: argparse.Namespace) -> int:
    with connect(opts) as client:
        status = client.status(opts.collection)
    if opts.json:
        from ragcluster.convert import to_json

        print(json.dumps(to_json(status)))
        return 0
    from rich.table import Table

    others = [c for c in status.collections if c != status.collection]
    table = Table(title=f"ragcluster at {opts.router} — collection {status.collection!r}: {status.documents} "
                        f"documents, embedding {status.embedding_model} ({status.dim}d)"
                        + (f"; other collections: {', '.join(others)}" if others else ""))
    for col in ("shard", "replica", "health", "documents", "sequence", "index"):
        table.add_column(col)
    for s in status.shards:
        for r in s.replicas:
            color = "green" if r.health == "SERVING" else "red"
            table.add_row(str(s.shard), escape(r.address), f"[{color}]{r.health}[/]", str(r.documents),
                          str(r.sequence), escape(r.index_factory))
    out = console()
    out.print(table)
    if status.generators:
        gen = Table(title="generators")
        for col in ("address", "health", "model", "context"):
            gen.add_column(col)
        for g in status.generators:
            color = "green" if g.health == "SERVING" else "red"
            gen.add_row(escape(g.address), f"[{color}]{g.health}[/]", escape(g.model), str(g.max_context_length))
        out.print(gen)
    return 0
