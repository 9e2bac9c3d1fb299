"""Hybrid retrieval on a public test collection (CISI), through a real 3-shard cluster.

Starts a local cluster (3 Flat shards, no generator, all-MiniLM-L6-v2 in the router), ingests CISI.ALL
with `ragcluster ingest` (the SMART reader), then for each mode — dense, lexical, hybrid (RRF k=60) and
hybrid weighted (alpha 0.5) — runs `ragcluster eval --mode ... --queries CISI.QRY --qrels CISI.REL -k 10`
and reports nDCG@10, recall@10 and MRR@10. Then throughput through the router at --concurrency clients
(`ragcluster loadtest --retrieval dense` vs `--retrieval hybrid`, CISI queries, same run): hybrid QPS must
be at least 0.8x dense. Finally the shards' lexical index: build speed per shard (documents/s, analysis
included; the CISI documents replicated to --build-docs, in process) and memory per document.

The collection is read from its path, never copied:

    .venv/bin/python bench/hybrid_cisi.py /work/shared/data/cisi [--concurrency 32] [--seconds 20] [--json]

Reference (computed outside the project, all-MiniLM-L6-v2 and BM25 over title + abstract with English
stemming and stop words): dense 0.424, BM25 0.386, RRF(60) 0.441 nDCG@10.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from harness import ROOT, bench_parser, loopback_cluster

MODES = [("dense", []), ("lexical", []), ("hybrid", ["--fusion", "rrf"]),
         ("hybrid-weighted", ["--fusion", "weighted", "--alpha", "0.5"])]


def cli(*args: str, timeout: float = 1800) -> str:
    # the benchmark's cluster runs plaintext on loopback (explicit insecure), so the CLI must say so too
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               RAGCLUSTER_INSECURE="true")
    out = subprocess.run([sys.executable, "-m", "ragcluster.tools.cli", *args], capture_output=True, text=True,
                         env=env, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"ragcluster {' '.join(args[:2])} failed: {out.stderr.strip()[-2000:]}")
    return out.stdout


def lexical_build(data: Path, n: int) -> dict:
    """Build speed and memory of one shard's lexical index over ``n`` documents (CISI, replicated)."""
    from ragcluster.hashing import id_key
    from ragcluster.tools.smart import read_smart_documents
    from shard_server.lexical import Analyzer, LexicalIndex, document_text

    docs = read_smart_documents(data / "CISI.ALL")
    texts = [document_text(d.title, d.text) for d in docs]
    ids = [d.id for d in docs]

    def build() -> tuple[LexicalIndex, float]:
        idx = LexicalIndex(Analyzer())
        start = time.perf_counter()
        for first in range(0, n, 1000):  # write batches as a shard applies them
            count = min(1000, n - first)
            batch = [texts[(first + i) % len(texts)] for i in range(count)]
            keys = [id_key(f"{ids[(first + i) % len(ids)]}-{(first + i) // len(ids)}") for i in range(count)]
            idx.add(list(range(first, first + count)), idx.analyze(batch), keys)
        return idx, time.perf_counter() - start

    _, seconds = build()  # timed without tracemalloc (it slows allocation several times)
    tracemalloc.start()
    idx, _ = build()
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"documents": n, "seconds": round(seconds, 2), "docs_per_second": round(n / seconds, 1),
            "terms": idx.terms, "postings": idx.postings, "bytes_per_document": round(current / n, 1),
            "estimated_bytes_per_document": round(idx.memory_bytes() / n, 1)}


def main() -> int:
    parser = bench_parser(__doc__, concurrency=32, seconds=20.0)
    parser.add_argument("data", help="the CISI folder (CISI.ALL, CISI.QRY, CISI.REL); read in place")
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--build-docs", type=int, default=50_000)
    args = parser.parse_args()
    data = Path(args.data)
    for name in ("CISI.ALL", "CISI.QRY", "CISI.REL"):
        if not (data / name).is_file():
            raise SystemExit(f"{data / name}: missing (give the folder holding the CISI files)")

    from ragcluster.client import RouterClient
    from ragcluster.tools.evaluation import load_queries

    report: dict = {"collection": str(data), "shards": args.shards}
    with tempfile.TemporaryDirectory(prefix="hybrid-cisi-") as tmp, \
            loopback_cluster(shards=args.shards, timeout=600) as cluster:
        router = cluster.router_address
        start = time.perf_counter()
        ingest = json.loads(cli("ingest", "--router", router, str(data / "CISI.ALL"), "--json"))
        report["ingest"] = {"documents": ingest["acknowledged"], "seconds": round(time.perf_counter() - start, 1)}
        with RouterClient(router) as client:
            report["ingest"]["per_shard"] = [s.documents for s in client.status().shards]
        report["quality"] = {}
        for label, extra in MODES:
            mode = label.split("-")[0]
            out = json.loads(cli("eval", "--router", router, "--queries", str(data / "CISI.QRY"),
                                 "--qrels", str(data / "CISI.REL"), "-k", "10", "--mode", mode, *extra, "--json"))
            m = out["retrieval"]["metrics"]
            report["quality"][label] = {"ndcg@10": m["ndcg@10"], "recall@10": m["recall@10"],
                                        "mrr@10": m["mrr@10"], "queries": out["retrieval"]["queries"]}
            if not args.json:
                print(f"{label:<16} nDCG@10 {m['ndcg@10']:.4f}  recall@10 {m['recall@10']:.4f}  "
                      f"MRR@10 {m['mrr@10']:.4f}", file=sys.stderr)
        queries = Path(tmp) / "queries.jsonl"
        texts = load_queries(data / "CISI.QRY").values()
        queries.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        report["throughput"] = {}
        for mode in ("dense", "hybrid", "lexical"):
            out = json.loads(cli("loadtest", "--router", router, "--workload", "search", "--retrieval", mode,
                                 "--concurrency", str(args.concurrency), "--duration", str(args.seconds),
                                 "--queries", str(queries), "-k", "10", "--json"))
            report["throughput"][mode] = {"qps": out["throughput_per_second"],
                                          "p50_ms": out["latency_ms"]["p50"], "p99_ms": out["latency_ms"]["p99"],
                                          "errors": sum(out["errors"].values())}
            if not args.json:
                print(f"{mode:<8} {out['throughput_per_second']:.1f} q/s at {args.concurrency} clients",
                      file=sys.stderr)
    q, t = report["quality"], report["throughput"]
    report["hybrid_over_dense_qps"] = round(t["hybrid"]["qps"] / t["dense"]["qps"], 3) if t["dense"]["qps"] else None
    report["goals"] = {
        "hybrid_ndcg_at_least_0.44": q["hybrid"]["ndcg@10"] >= 0.44,
        "hybrid_above_both_single_modes": q["hybrid"]["ndcg@10"] > max(q["dense"]["ndcg@10"], q["lexical"]["ndcg@10"]),
        "hybrid_qps_at_least_0.8x_dense": (report["hybrid_over_dense_qps"] or 0) >= 0.8,
    }
    report["lexical_index"] = lexical_build(data, args.build_docs)
    report["goals"]["lexical_build_at_least_5000_docs_per_second"] = report["lexical_index"]["docs_per_second"] >= 5000
    report["load_average"] = os.getloadavg()
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"\nCISI through a {args.shards}-shard cluster ({report['ingest']['documents']} documents, "
          f"per shard {report['ingest']['per_shard']}), k = 10")
    print(f"{'mode':<16} {'nDCG@10':>8} {'recall@10':>10} {'MRR@10':>8}")
    for label, v in q.items():
        print(f"{label:<16} {v['ndcg@10']:>8.4f} {v['recall@10']:>10.4f} {v['mrr@10']:>8.4f}")
    print(f"\nthroughput at {args.concurrency} clients: " + ", ".join(
        f"{m} {v['qps']:.1f} q/s (p50 {v['p50_ms']:.0f} ms, p99 {v['p99_ms']:.0f} ms)" for m, v in t.items())
        + f"; hybrid / dense = {report['hybrid_over_dense_qps']}")
    li = report["lexical_index"]
    print(f"lexical index build: {li['docs_per_second']:.0f} docs/s ({li['documents']} docs); "
          f"{li['bytes_per_document']:.0f} bytes/document (tracemalloc), {li['terms']} terms")
    print(f"goals: {report['goals']}  (load average {report['load_average']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
