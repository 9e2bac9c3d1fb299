"""`ragcluster ask`: a streamed answer with its sources."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass

from ragcluster.config import option
from ragcluster.tools.cli.common import QueryOptions, connect, console, escape, query_kwargs


@dataclass
class AskOptions(QueryOptions):
    k: int = option(5, "passages to retrieve", short="-k")
    max_tokens: int = option(256, "longest answer in tokens")
    temperature: float = option(0.0, "sampling temperature (0 = greedy)")
    stream_interval: int = option(0, "tokens per streamed piece after the first (0 = the generator node's "
                                     "default, 1 = every token as it is sampled)")
    timeout: float = option(180.0, "deadline in seconds")
    json: bool = option(False, "print JSON: {answer, citations, hits, timings} at the end instead of streaming")


def cmd_ask(opts: AskOptions, ns: argparse.Namespace) -> int:
    out = console()
    query = query_kwargs(opts)
    with connect(opts) as client:
        ask = functools.partial(client.ask, ns.question, k=opts.k, max_tokens=opts.max_tokens,
                                temperature=opts.temperature, stream_interval=opts.stream_interval or None,
                                timeout=opts.timeout, **query)
        if opts.json:
            from ragcluster.convert import to_json

            print(json.dumps(to_json(ask())))
            return 0
        result = ask(on_delta=lambda t: (sys.stdout.write(t), sys.stdout.flush()))
    print()
    by_id = {h.id: h for h in result.hits}
    if result.citations:
        out.print("\n[bold]Sources[/]")
        for n, doc_id in enumerate(result.citations, 1):
            h = by_id.get(doc_id)
            out.print(f"  \\[{n}] {escape(doc_id)}" + (f" — {escape(h.title)}" if h and h.title else "")
                      + (f" (score {h.score:.3f})" if h else ""))
    t = result.timings
    out.print(f"[dim]{result.completion_tokens} tokens; "
              f"first token {t.time_to_first_token_seconds:.2f}s, total {t.total_seconds:.2f}s; "
              f"{escape(result.model)} at {escape(result.generator)}[/]")
    return 0
