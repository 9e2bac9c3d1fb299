"""ragcluster — run and use a distributed RAG cluster.

Every flag can also be set by an environment variable RAGCLUSTER_<FLAG> (shown in each --help).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass

import grpc

from ragcluster.config import add_config_arguments, config_from_args, option

DEFAULT_ROUTER = "127.0.0.1:50051"


# --- per-command options (flags + env vars) -------------------------------------------------------
@dataclass
class UpOptions:
    shards: int = option(2, "number of shards")
    replicas: int = option(1, "replicas per shard")
    generators: int = option(1, "generator nodes (0 = search only)")
    model: str = option("tiny", "generator model: tiny, smollm2 or a local HF model folder")
    data_dir: str = option("./data", "where shards keep their data, logs and cluster.json")
    port: int = option(50051, "router gRPC port")
    index_factory: str = option("Flat", "FAISS index_factory string for every shard")
    max_model_len: int = option(2048, "generator context length (vLLM --max-model-len)")
    kv_cache_bytes: int = option(256 * 1024 * 1024, "generator KV cache size (vLLM --kv-cache-memory-bytes)")
    timeout: float = option(600.0, "seconds to wait for every process to be SERVING")
    json: bool = option(False, "print cluster.json once ready instead of a table")


@dataclass
class IngestOptions:
    router: str = option(DEFAULT_ROUTER, "router address host:port")
    format: str = option("auto", "source format (auto: a directory is dir, *.csv/*.tsv is csv, else jsonl)",
                         choices=["auto", "jsonl", "csv", "dir"])
    id_col: str = option("id", "csv/sql: the id column")
    text_col: str = option("text", "csv/sql: the text column")
    title_col: str = option("title", "csv/sql: the title column (optional); other columns become metadata")
    sql: str = option("", "ingest the rows of this query (columns as for csv) from --db instead of files")
    db: str = option("", "for --sql: a SQLite file or any SQLAlchemy URL (sqlite:///f.db, postgresql://...)")
    chunk_tokens: int = option(0, "split documents into chunks of this many embedding-model tokens (0 = one "
                                  "document, one vector); chunk ids are ID#n with metadata parent_id and chunk")
    chunk_overlap: int = option(0, "tokens shared by consecutive chunks")
    resume: bool = option(True, "skip documents already stored with the same content (id and content hash)")
    collection: str = option("", "collection to write to (e.g. a new index built with another embedding model; "
                                 "see `ragcluster switch`); default: the active one")
    batch_size: int = option(64, "documents per request")
    on_error: str = option("stop", "a bad line: report it and stop, or report it and skip it", choices=["stop", "skip"])
    json: bool = option(False, "print a JSON summary")


WHERE_HELP = ("metadata filter, ANDed when repeated: FIELD=VALUE, FIELD>=N, FIELD>N, FIELD<=N, FIELD<N, "
              "FIELD~=A,B,C (any of)")


@dataclass
class SearchOptions:
    router: str = option(DEFAULT_ROUTER, "router address host:port")
    k: int = option(10, "number of hits", short="-k")
    where: list[str] = option([], WHERE_HELP, metavar="COND")
    min_coverage: float = option(0.0, "fail unless this share of shards (0..1] answers; 0 = accept partial results")
    collection: str = option("", "collection to search (default: the active one)")
    timeout: float = option(30.0, "deadline in seconds")
    json: bool = option(False, "print JSON: {hits: [{id, score, shard, text, metadata}], coverage}")


@dataclass
class AskOptions:
    router: str = option(DEFAULT_ROUTER, "router address host:port")
    k: int = option(5, "passages to retrieve", short="-k")
    where: list[str] = option([], WHERE_HELP, metavar="COND")
    max_tokens: int = option(256, "longest answer in tokens")
    temperature: float = option(0.0, "sampling temperature (0 = greedy)")
    timeout: float = option(180.0, "deadline in seconds")
    json: bool = option(False, "print JSON: {answer, citations, hits, timings} at the end instead of streaming")


@dataclass
class EvalOptions:
    router: str = option(DEFAULT_ROUTER, "router address host:port")
    queries: str = option("", "BEIR queries JSONL ({'_id'|'id', 'text'}) for retrieval metrics")
    qrels: str = option("", "BEIR qrels TSV (query-id, corpus-id, score; header line) for retrieval metrics")
    k: int = option(10, "cut-off for recall@k, precision@k, nDCG@k, MRR@k, MAP@k", short="-k")
    per_query: bool = option(False, "also print (or include in --json) every query's metrics")
    qa: str = option("", "QA JSONL ({'id', 'question', 'answers': [str]}) for generation metrics (EM, F1, BLEU)")
    max_tokens: int = option(64, "answer length for --qa")
    concurrency: int = option(4, "requests in flight")
    timeout: float = option(120.0, "deadline per request in seconds")
    json: bool = option(False, "print the report as JSON")


@dataclass
class LoadtestOptions:
    router: str = option(DEFAULT_ROUTER, "router address host:port")
    mode: str = option("search", "what to send", choices=["search", "ask"])
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


@dataclass
class SwitchOptions:
    router: str = option(DEFAULT_ROUTER, "router address host:port")
    json: bool = option(False, "print JSON: {previous, active, documents, embedding_model}")


@dataclass
class StatusOptions:
    router: str = option(DEFAULT_ROUTER, "router address host:port")
    collection: str = option("", "collection to describe (default: the active one)")
    json: bool = option(False, "print JSON: {documents, shards: [{shard, documents, replicas}], generators}")


def _value(text: str):
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_where(conditions: list[str]) -> list[dict]:
    """``["topic=science", "words>=30", "topic~=a,b"]`` -> filter conditions for the client."""
    out = []
    for cond in conditions:
        for op, key in ((">=", "gte"), ("<=", "lte"), ("~=", "any_of"), (">", "gt"), ("<", "lt"), ("=", "equals")):
            field, sep, value = cond.partition(op)
            if sep and field.strip():
                field = field.strip()
                if key == "any_of":
                    out.append({"field": field, "any_of": [_value(v) for v in value.split(",") if v.strip()]})
                elif key == "equals":
                    out.append({"field": field, "equals": _value(value.strip())})
                else:
                    try:
                        out.append({"field": field, key: float(value)})
                    except ValueError:
                        raise SystemExit(f"ragcluster: error: --where {cond!r}: {op} needs a number") from None
                break
        else:
            raise SystemExit(f"ragcluster: error: --where {cond!r}: expected FIELD=VALUE, FIELD>=N, ... or FIELD~=A,B")
    return out


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _fail(message: str, code: int = 2) -> int:
    print(f"ragcluster: error: {message}", file=sys.stderr)
    return code


# --- commands ---------------------------------------------------------------------------------------
def cmd_up(opts: UpOptions, ns) -> int:
    from ragcluster.cluster import ClusterError, ClusterSpec, LocalCluster

    spec = ClusterSpec(
        data_dir=opts.data_dir, shards=opts.shards, replicas=opts.replicas, generators=opts.generators,
        model=opts.model, index_factory=opts.index_factory, port=opts.port, max_model_len=opts.max_model_len,
        kv_cache_bytes=opts.kv_cache_bytes,
    )
    if opts.shards < 1 or opts.replicas < 1 or opts.generators < 0:
        return _fail("--shards and --replicas must be >= 1, --generators >= 0")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    err = _console(stderr=True)
    cluster = LocalCluster(spec)
    start = time.monotonic()
    try:
        cluster.start(timeout=opts.timeout, progress=lambda m: err.print(
            f"  [green]ready[/] {m.role}{'' if m.shard is None else f' {m.shard}'}"
            f"{'' if m.replica is None else f' r{m.replica}'} at {m.grpc} (metrics {m.metrics})"))
    except ClusterError as exc:
        return _fail(str(exc))
    try:
        elapsed = time.monotonic() - start
        if opts.json:
            print((cluster.dir / "cluster.json").read_text(), flush=True)
        else:
            err.print(f"cluster up in {elapsed:.1f}s — router at [bold]{cluster.router_address}[/]; "
                      f"{cluster.dir / 'cluster.json'}; Ctrl-C to stop")
            print(cluster.router_address, flush=True)
        while not stop.wait(timeout=3600):
            pass
    finally:
        err.print("stopping cluster…")
        cluster.stop()
        err.print("stopped")
    return 0


def _ingest_records(opts: IngestOptions, files: list[str]):
    """(records iterator, expected count or None) for the chosen source."""
    from pathlib import Path

    from ragcluster.sources import read_csv, read_dir, read_jsonl, read_sql

    if opts.sql:
        if not opts.db:
            raise SystemExit("ragcluster: error: --sql needs --db (a SQLite file or a SQLAlchemy URL)")
        return read_sql(opts.db, opts.sql, opts.id_col, opts.text_col, opts.title_col), None
    if not files:
        raise SystemExit("ragcluster: error: give FILE... (or --sql with --db)")
    fmt = opts.format
    if fmt == "auto":
        kinds = {"dir" if Path(f).is_dir() else "csv" if f.lower().endswith((".csv", ".tsv")) else "jsonl"
                 for f in files}
        if len(kinds) > 1:
            raise SystemExit(f"ragcluster: error: mixed sources {sorted(kinds)}: ingest them separately or set --format")
        fmt = kinds.pop()
    total = 0
    for f in files:
        p = Path(f)
        if fmt == "dir":
            if not p.is_dir():
                raise SystemExit(f"ragcluster: error: {f}: not a directory")
            total += sum(1 for x in p.rglob("*") if x.is_file() and x.suffix.lower() in (".txt", ".md", ".markdown",
                                                                                       ".html", ".htm"))
        else:
            try:
                with open(p, "rb") as fh:
                    total += sum(1 for line in fh if line.strip()) - (1 if fmt == "csv" else 0)
            except OSError as exc:
                raise SystemExit(f"ragcluster: error: {f}: {exc.strerror}") from None
    if fmt == "csv":
        delimiter = "\t" if all(f.lower().endswith(".tsv") for f in files) else ","
        return read_csv(files, opts.id_col, opts.text_col, opts.title_col, delimiter), total
    if fmt == "dir":
        return read_dir(files), total
    return read_jsonl(files), total


def cmd_ingest(opts: IngestOptions, ns) -> int:
    from tqdm import tqdm

    from ragcluster.client import RouterClient

    records, total = _ingest_records(opts, ns.files)
    chunker = None
    if opts.chunk_tokens:
        from ragcluster.chunking import Chunker, load_embedding_tokenizer
        from ragcluster.errors import InvalidArgument

        try:
            chunker = Chunker(load_embedding_tokenizer(), opts.chunk_tokens, opts.chunk_overlap)
        except InvalidArgument as exc:
            return _fail(str(exc))
    summary = {"read": 0, "skipped": 0, "unchanged": 0, "chunks": 0, "acknowledged": 0, "errors": [],
               "seconds": 0.0, "docs_per_second": 0.0}
    stopped = []
    bar = tqdm(total=None if chunker else total, unit="chunk" if chunker else "doc", desc="ingest",
               disable=opts.json or None, dynamic_ncols=True)

    def documents():
        for record in records:
            if record.error:
                summary["errors"].append({"file": record.file, "line": record.line, "error": record.error})
                if opts.json:
                    print(f"{record.where}: {record.error}", file=sys.stderr)
                else:
                    bar.write(f"{record.where}: {record.error}", file=sys.stderr)
                if opts.on_error == "stop":
                    stopped.append(record)
                    return
                summary["skipped"] += 1
                continue
            summary["read"] += 1
            if chunker is None:
                yield record.document
            else:
                chunks = chunker.split(record.document)
                summary["chunks"] += len(chunks)
                yield from chunks

    start = time.perf_counter()
    try:
        with RouterClient(opts.router) as client:
            result = client.ingest(documents(), batch_size=opts.batch_size, resume=opts.resume,
                                   on_ack=bar.update, on_skip=bar.update, collection=opts.collection)
    except grpc.RpcError as exc:
        bar.close()
        return _fail(f"ingest failed: {exc.code().name}: {exc.details()} (re-run to resume: acknowledged documents "
                     f"are skipped)")
    bar.close()
    summary["acknowledged"] = result.acknowledged
    summary["unchanged"] = result.unchanged
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["docs_per_second"] = round(result.acknowledged / max(summary["seconds"], 1e-9), 1)
    if opts.json:
        print(json.dumps(summary))
    else:
        what = f"{result.acknowledged} chunks of {summary['read']} documents" if chunker else \
            f"{result.acknowledged} documents"
        print(f"acknowledged {what} in {summary['seconds']:.1f}s ({summary['docs_per_second']:.0f}/s); "
              f"{result.unchanged} unchanged, {summary['skipped']} bad skipped")
    if stopped:
        return _fail(f"stopped at {stopped[0].where} (use --on-error skip to continue past bad lines)", 1)
    return 0


def cmd_search(opts: SearchOptions, ns) -> int:
    from ragcluster.client import RouterClient

    from ragcluster.client import coverage_from_error

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
            return _fail(f"{exc.code().name}: {exc.details()}")
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
    _console().print(table)
    return 0


def cmd_ask(opts: AskOptions, ns) -> int:
    from ragcluster.client import RouterClient

    out = _console()
    kwargs = dict(k=opts.k, max_tokens=opts.max_tokens, temperature=opts.temperature, timeout=opts.timeout,
                  where=parse_where(opts.where))
    with RouterClient(opts.router) as client:
        if opts.json:
            print(json.dumps(client.ask(ns.question, **kwargs)))
            return 0
        result = client.ask(ns.question, on_delta=lambda t: (sys.stdout.write(t), sys.stdout.flush()), **kwargs)
    print()
    by_id = {h["id"]: h for h in result["hits"]}
    if result["citations"]:
        out.print("\n[bold]Sources[/]")
        for n, doc_id in enumerate(result["citations"], 1):
            h = by_id.get(doc_id, {})
            out.print(f"  [{n}] {doc_id}" + (f" — {h['title']}" if h.get("title") else "")
                      + (f" (score {h['score']:.3f})" if h else ""))
    t = result["timings"]
    out.print(f"[dim]{result.get('completion_tokens', 0)} tokens; first token {t.get('time_to_first_token_seconds', 0):.2f}s, "
              f"total {t.get('total_seconds', 0):.2f}s; {result.get('model', '')} at {result.get('generator', '')}[/]")
    return 0


def cmd_status(opts: StatusOptions, ns) -> int:
    from ragcluster.client import RouterClient

    with RouterClient(opts.router) as client:
        status = client.status(opts.collection)
    if opts.json:
        print(json.dumps(status))
        return 0
    from rich.table import Table

    others = [c for c in status["collections"] if c != status["collection"]]
    table = Table(title=f"ragcluster at {opts.router} — collection {status['collection']!r}: {status['documents']} "
                        f"documents, embedding {status['embedding_model']} ({status['dim']}d)"
                        + (f"; other collections: {', '.join(others)}" if others else ""))
    for col in ("shard", "replica", "health", "documents", "sequence", "index"):
        table.add_column(col)
    for s in status["shards"]:
        for r in s["replicas"]:
            color = "green" if r["health"] == "SERVING" else "red"
            table.add_row(str(s["shard"]), r["address"], f"[{color}]{r['health']}[/]", str(r["documents"]),
                          str(r["sequence"]), r["index_factory"])
    console = _console()
    console.print(table)
    if status["generators"]:
        gen = Table(title="generators")
        for col in ("address", "health", "model", "context"):
            gen.add_column(col)
        for g in status["generators"]:
            color = "green" if g["health"] == "SERVING" else "red"
            gen.add_row(g["address"], f"[{color}]{g['health']}[/]", g["model"], str(g["max_context_length"]))
        console.print(gen)
    return 0


def cmd_eval(opts: EvalOptions, ns) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from ragcluster.client import RouterClient
    from ragcluster.errors import InvalidArgument
    from ragcluster.evaluation import (RETRIEVAL_METRICS, corpus_bleu, evaluate_retrieval, exact_match,
                                       load_qrels, load_queries, token_f1)

    if not ((opts.queries and opts.qrels) or opts.qa):
        return _fail("give --queries and --qrels (retrieval), and/or --qa (generation)")
    report: dict = {}
    try:
        with RouterClient(opts.router, timeout=opts.timeout) as client, ThreadPoolExecutor(opts.concurrency) as pool:
            if opts.queries and opts.qrels:
                queries, qrels = load_queries(opts.queries), load_qrels(opts.qrels)
                wanted = [q for q in qrels if q in queries]
                missing = [q for q in qrels if q not in queries]

                def search(qid):
                    # chunked corpora: ask for more, then rank each parent document once, at its best chunk
                    hits = client.search(queries[qid], k=min(opts.k * 4, 100))["hits"]
                    best: dict[str, float] = {}
                    for h in hits:
                        parent = h.get("parent_id") or h["id"]
                        best[parent] = max(best.get(parent, float("-inf")), h["score"])
                    return qid, sorted(best.items(), key=lambda kv: -kv[1])[: opts.k]

                runs = dict(tqdm(pool.map(search, wanted), total=len(wanted), desc="eval retrieval", unit="q",
                                 disable=opts.json or None))
                result = evaluate_retrieval(runs, {q: qrels[q] for q in wanted + missing}, opts.k)
                report["retrieval"] = {
                    "k": opts.k, "queries": result.evaluated, "skipped_no_relevant": result.skipped_no_relevant,
                    "missing_query_text": len(missing),
                    "metrics": {f"{m}@{opts.k}": round(v, 6) for m, v in result.means.items()},
                }
                if opts.per_query:
                    report["retrieval"]["per_query"] = result.per_query
            if opts.qa:
                import json as _json

                items = []
                for n, line in enumerate(open(opts.qa, encoding="utf-8"), 1):
                    if line.strip():
                        obj = _json.loads(line)
                        question, answers = obj.get("question") or obj.get("text"), obj.get("answers")
                        if not isinstance(question, str) or not isinstance(answers, list) or not answers:
                            raise InvalidArgument(f"{opts.qa}:{n}: needs 'question' and a non-empty 'answers' list")
                        items.append((str(obj.get("id", obj.get("_id", n))), question, [str(a) for a in answers]))

                def ask(item):
                    qid, question, answers = item
                    return qid, client.ask(question, max_tokens=opts.max_tokens, temperature=0.0)["answer"].strip()

                answers = dict(tqdm(pool.map(ask, items), total=len(items), desc="eval generation", unit="q",
                                    disable=opts.json or None))
                preds = [answers[qid] for qid, _, _ in items]
                refs = [refs for _, _, refs in items]
                em = [exact_match(p, r) for p, r in zip(preds, refs)]
                f1 = [token_f1(p, r) for p, r in zip(preds, refs)]
                report["generation"] = {
                    "questions": len(items), "exact_match": sum(em) / max(len(em), 1),
                    "f1": sum(f1) / max(len(f1), 1), "bleu": corpus_bleu(preds, refs),
                }
                if opts.per_query:
                    report["generation"]["per_question"] = {
                        qid: {"answer": p, "exact_match": e, "f1": f} for (qid, _, _), p, e, f in zip(items, preds, em, f1)}
    except (InvalidArgument, OSError) as exc:
        return _fail(str(exc))
    if opts.json:
        print(json.dumps(report))
        return 0
    from rich.table import Table

    console = _console()
    if "retrieval" in report:
        r = report["retrieval"]
        table = Table(title=f"retrieval — {r['queries']} queries with relevant documents, k={r['k']}")
        for m in RETRIEVAL_METRICS:
            table.add_column(f"{m}@{r['k']}", justify="right")
        table.add_row(*(f"{r['metrics'][f'{m}@{opts.k}']:.4f}" for m in RETRIEVAL_METRICS))
        console.print(table)
        if opts.per_query:
            pq = Table(title="per query")
            pq.add_column("query")
            for m in RETRIEVAL_METRICS:
                pq.add_column(m, justify="right")
            for qid, values in r["per_query"].items():
                pq.add_row(qid, *(f"{values[m]:.4f}" for m in RETRIEVAL_METRICS))
            console.print(pq)
    if "generation" in report:
        g = report["generation"]
        console.print(f"generation — {g['questions']} questions: exact match {g['exact_match']:.4f}, "
                      f"F1 {g['f1']:.4f}, BLEU {g['bleu']:.2f}")
    return 0


def cmd_loadtest(opts: LoadtestOptions, ns) -> int:
    import asyncio

    from ragcluster.corpus import make_queries
    from ragcluster.evaluation import load_query_texts
    from ragcluster.loadtest import run_load

    if opts.concurrency and opts.rate:
        return _fail("give --concurrency (closed loop) or --rate (open loop), not both")
    if opts.duration <= 0 or opts.rate < 0 or opts.concurrency < 0:
        return _fail("--duration must be positive; --rate and --concurrency not negative")
    try:
        queries = load_query_texts(opts.queries) if opts.queries else make_queries(200, seed=7)
    except Exception as exc:
        return _fail(f"--queries {opts.queries}: {exc}")
    if not opts.json:
        loop = f"open loop at {opts.rate:g}/s" if opts.rate else f"closed loop, {opts.concurrency or 8} clients"
        print(f"loadtest: {opts.mode}, {loop}, {opts.duration:g}s against {opts.router}…", file=sys.stderr)
    report = asyncio.run(run_load(opts.router, opts.mode, queries, opts.duration, opts.concurrency, opts.rate,
                                  opts.k, opts.max_tokens, opts.timeout, opts.max_requests))
    summary = report.summary()
    if opts.plot:
        report.plot(opts.plot)
        summary["plot"] = opts.plot
    if opts.json:
        print(json.dumps(summary))
        return 0
    from rich.table import Table

    table = Table(title=f"{summary['mode']} — {summary['requests']} requests, {summary['ok']} ok, "
                        f"{summary['throughput_per_second']:.1f}/s")
    columns = ["p50", "p90", "p99", "p99.9", "max"]
    table.add_column("ms")
    for c in columns:
        table.add_column(c, justify="right")
    for name in ("latency_ms", "ttft_ms"):
        if summary.get(name):
            table.add_row(name.replace("_ms", ""), *(f"{summary[name][c]:.1f}" for c in columns))
    console = _console()
    console.print(table)
    if summary["errors"]:
        console.print("errors: " + ", ".join(f"{c} {n}" for c, n in summary["errors"].items()))
    if opts.plot:
        console.print(f"plot written to {opts.plot}")
    return 0


def cmd_switch(opts: SwitchOptions, ns) -> int:
    from ragcluster.client import RouterClient

    with RouterClient(opts.router) as client:
        result = client.switch(ns.name)
    if opts.json:
        print(json.dumps(result))
    else:
        print(f"active collection: {result['previous']} -> {result['active']} ({result['documents']} documents, "
              f"{result['embedding_model']})")
    return 0


COMMANDS = {
    "up": (UpOptions, cmd_up, "start a local cluster (shards, generators, router) until Ctrl-C", []),
    "ingest": (IngestOptions, cmd_ingest, "ingest JSONL, CSV, a directory of text files or SQL rows through the "
                                          "router (resumable, optionally chunked)", ["files"]),
    "search": (SearchOptions, cmd_search, "search by text; exact global top-k over all shards", ["text"]),
    "ask": (AskOptions, cmd_ask, "ask a question; the answer streams with its citations", ["question"]),
    "status": (StatusOptions, cmd_status, "shards, replicas, health, document counts, generators", []),
    "switch": (SwitchOptions, cmd_switch, "make another collection (e.g. re-indexed with a new embedding model) "
                                          "the one searches and asks use, atomically", ["name"]),
    "eval": (EvalOptions, cmd_eval, "retrieval metrics (recall, precision, nDCG, MRR, MAP @k) on BEIR queries/qrels; "
                                    "generation metrics (EM, F1, BLEU) on a QA set", []),
    "loadtest": (LoadtestOptions, cmd_loadtest, "closed- or open-loop load; latency percentiles, TTFT, errors, "
                                                "plots", []),
}

POSITIONALS = {
    "files": dict(nargs="*", metavar="SOURCE", help='JSONL files ({"id", "text", "title"?, "metadata"?} per line), '
                                                    'CSV/TSV files, or directories of .txt/.md/.html files'),
    "text": dict(help="query text"),
    "question": dict(help="the question"),
    "name": dict(help="the collection to switch to"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragcluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (options, _, help_text, positionals) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        for pos in positionals:
            p.add_argument(pos, **POSITIONALS[pos])
        add_config_arguments(p, options)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    options, fn, _, _ = COMMANDS[ns.command]
    opts = config_from_args(options, ns)
    try:
        return fn(opts, ns)
    except grpc.RpcError as exc:
        return _fail(f"{exc.code().name}: {exc.details()}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
