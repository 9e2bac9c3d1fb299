"""Search latency through the router vs in-process FAISS, on the same data, in one script.

Starts a local cluster (shards only, no generator), ingests a synthetic corpus through the router, embeds
the same documents in this process into one IndexFlatIP, then times sequential single-query searches:

  - by vector: router Search(vector) [gRPC + fan-out + merge + documents] vs IndexFlatIP.search
  - by text:   router Search(text)   [+ query embedding in the router]    vs encode + IndexFlatIP.search

    .venv/bin/python bench/search_latency.py [--docs 2000] [--queries 300] [--shards 2] [--json]
"""

from __future__ import annotations

import sys
import time
from argparse import Namespace

import numpy as np
from harness import bench_parser, loopback_cluster, percentiles_ms, report, timed


def percentiles(samples: list[float]) -> dict[str, float]:
    return percentiles_ms(samples, (50, 90, 99), mean=True)


def main() -> int:
    parser = bench_parser(__doc__, docs=2000, k=10)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()

    import faiss

    from ragcluster.client import RouterClient
    from ragcluster.corpus import make_documents, make_queries
    from router.embedding import Embedder
    from router.service import embedding_text

    docs = make_documents(args.docs, seed=11)
    queries = make_queries(args.queries, seed=12)
    embedder = Embedder()
    with loopback_cluster(shards=args.shards) as cluster, RouterClient(cluster.router_address) as client:
        t = time.perf_counter()
        acked = client.ingest(docs, batch_size=64).acknowledged
        ingest_s = time.perf_counter() - t
        assert acked == len(docs)
        texts = [embedding_text(d.title, d.text) for d in docs]
        t = time.perf_counter()
        xb = np.concatenate([embedder.encode(texts[i:i + 64]) for i in range(0, len(texts), 64)])
        encode_s = time.perf_counter() - t
        index = faiss.IndexFlatIP(xb.shape[1])
        index.add(xb)
        qv = embedder.encode(queries)
        # warm up both paths
        for v in qv[:20]:
            client.search(vector=v.tolist(), k=args.k)
            index.search(v.reshape(1, -1), args.k)
        router_vec = timed(lambda v: client.search(vector=v.tolist(), k=args.k), qv)
        faiss_vec = timed(lambda v: index.search(v.reshape(1, -1), args.k), qv)
        router_text = timed(lambda q: client.search(q, k=args.k), queries)
        local_text = timed(lambda q: index.search(embedder.encode([q]), args.k), queries)
    result = {
        "docs": args.docs, "queries": args.queries, "shards": args.shards, "k": args.k,
        "router_vector": percentiles(router_vec), "faiss_vector": percentiles(faiss_vec),
        "router_text": percentiles(router_text), "local_text": percentiles(local_text),
        "ingest_docs_per_s": args.docs / ingest_s, "encode_docs_per_s": args.docs / encode_s,
    }
    result["ratio_vector_p50"] = result["router_vector"]["p50_ms"] / result["faiss_vector"]["p50_ms"]
    result["ratio_text_p50"] = result["router_text"]["p50_ms"] / result["local_text"]["p50_ms"]
    result["router_overhead_vector_p50_ms"] = result["router_vector"]["p50_ms"] - result["faiss_vector"]["p50_ms"]
    return report(args, result, lambda: render(args, result))


def render(args: Namespace, result: dict) -> None:
    print(f"{args.docs} docs, {args.shards} Flat shards, k={args.k}, {args.queries} sequential queries")
    print(f"{'path':<34}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    for name, key in [("router Search(vector)", "router_vector"), ("in-process IndexFlatIP.search", "faiss_vector"),
                      ("router Search(text)", "router_text"), ("in-process encode + search", "local_text")]:
        p = result[key]
        print(f"{name:<34}{p['p50_ms']:>9.3f}{p['p90_ms']:>9.3f}{p['p99_ms']:>9.3f}")
    print(f"p50 ratio router/in-process: by vector {result['ratio_vector_p50']:.1f}x "
          f"(+{result['router_overhead_vector_p50_ms']:.2f} ms), by text {result['ratio_text_p50']:.2f}x")
    ingest_ratio = result["ingest_docs_per_s"] / result["encode_docs_per_s"]
    print(f"ingest through router {result['ingest_docs_per_s']:.0f} docs/s vs in-process encode "
          f"{result['encode_docs_per_s']:.0f} docs/s ({ingest_ratio:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
