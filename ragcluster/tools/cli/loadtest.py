"""`ragcluster loadtest`: closed- or open-loop load with latency percentiles, TTFT and errors."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

from ragcluster.config import option
from ragcluster.tools.cli.common import ConnectOptions, client_security, console, fail


@dataclass
class LoadtestOptions(ConnectOptions):
    workload: str = option("search", "what to send: searches or asks", choices=["search", "ask"])
    # --mode means the retrieval mode (dense|lexical|hybrid) in search, ask and eval, and so does env
    # RAGCLUSTER_MODE: here it is only a deprecated flag for --workload, never read from the environment
    mode: str = option("", "deprecated: use --workload", choices=["", "search", "ask"], env=False)
    retrieval: str = option("", "retrieval mode of the requests: dense, lexical or hybrid (default: the router's)",
                            choices=["", "dense", "lexical", "hybrid"])
    concurrency: int = option(0, "closed loop: clients, each sending when its last request finished (default 8)")
    rate: float = option(0.0, "open loop: requests per second, Poisson arrivals (latency counted from the "
                              "scheduled arrival: no coordinated omission)")
    duration: float = option(10.0, "seconds of load")
    queries: str = option("", "JSONL file with a 'text' field per line (a BEIR queries file works); default: built-in")
    k: int = option(10, "hits per search / passages per ask", short="-k")
    max_tokens: int = option(32, "answer length in ask mode")
    timeout: float = option(30.0, "deadline per request in seconds")
    max_requests: int = option(1_000_000, "stop after this many requests")
    plot: str = option("", "write latency-over-time and histogram charts to this PNG")
    json: bool = option(False, "print the report as JSON")


def cmd_loadtest(opts: LoadtestOptions, ns: argparse.Namespace) -> int:
    import asyncio

    from ragcluster.corpus import make_queries
    from ragcluster.tools.evaluation import load_query_texts
    from ragcluster.tools.loadtest import run_load

    if opts.mode:
        print("ragcluster: warning: loadtest --mode is deprecated, use --workload (and --retrieval for "
              "dense|lexical|hybrid)", file=sys.stderr)
    workload = opts.mode or opts.workload
    if opts.concurrency and opts.rate:
        return fail("give --concurrency (closed loop) or --rate (open loop), not both")
    if opts.duration <= 0 or opts.rate < 0 or opts.concurrency < 0:
        return fail("--duration must be positive; --rate and --concurrency not negative")
    try:
        queries = load_query_texts(opts.queries) if opts.queries else make_queries(200, seed=7)
    except Exception as exc:
        return fail(f"--queries {opts.queries}: {exc}")
    if not opts.json:
        loop = f"open loop at {opts.rate:g}/s" if opts.rate else f"closed loop, {opts.concurrency or 8} clients"
        print(f"loadtest: {workload}, {loop}, {opts.duration:g}s against {opts.router}…", file=sys.stderr)
    report = asyncio.run(run_load(opts.router, workload, queries, opts.duration, opts.concurrency, opts.rate,
                                  opts.k, opts.max_tokens, opts.timeout, opts.max_requests,
                                  retrieval=opts.retrieval, security=client_security(opts)))
    summary = report.summary()
    if opts.plot:
        report.plot(opts.plot)
        summary["plot"] = opts.plot
    if opts.json:
        print(json.dumps(summary))
        return 0
    from rich.table import Table

    table = Table(title=f"{summary['workload']} — {summary['requests']} requests, {summary['ok']} ok, "
                        f"{summary['throughput_per_second']:.1f}/s")
    columns = ["p50", "p90", "p99", "p99.9", "max"]
    table.add_column("ms")
    for c in columns:
        table.add_column(c, justify="right")
    for name in ("latency_ms", "ttft_ms"):
        if summary.get(name):
            table.add_row(name.replace("_ms", ""), *(f"{summary[name][c]:.1f}" for c in columns))
    out = console()
    out.print(table)
    if summary["errors"]:
        out.print("errors: " + ", ".join(f"{c} {n}" for c, n in summary["errors"].items()))
    if opts.plot:
        out.print(f"plot written to {opts.plot}")
    return 0
