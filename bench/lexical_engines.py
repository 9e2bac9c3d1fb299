"""Which lexical engine for the shards? SQLite FTS5 vs tantivy vs bm25s vs ragcluster's own index
(shard_server/lexical.py), on the same documents and queries, each engine in its own process:

- indexing speed (documents/s, analysis included), and the time to apply 1,000 updates (replace);
- query latency at N documents (default 100,000): p50 / p99 of top-10 for the CISI queries;
- memory: resident memory the index added (RSS delta of the process) and bytes per document;
- what each can do: updates in place, corpus-wide statistics supplied by the caller (what the router's
  dfs_query_then_fetch needs), stemmer and stop words.

Documents: CISI's vocabulary and term distribution (a unigram model over CISI.ALL's title + abstract
tokens, document lengths drawn from CISI's), scaled to N; queries: CISI.QRY. The collection is read from
its path (never copied):

    .venv/bin/python bench/lexical_engines.py /work/shared/data/cisi [--docs 100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from harness import Table, bench_parser, log, percentiles_ms, report, timed

ENGINES = ["ragcluster", "fts5", "tantivy", "bm25s"]
CAPABILITIES = {
    "ragcluster": dict(updates="yes (in memory, after the store's commit; rebuilt from the store on start)",
                       global_stats="yes (df, N, total length per query)", analysis="Snowball stemmers, stop words"),
    "fts5": dict(updates="yes (same SQLite transaction as the store)", global_stats="no (bm25() uses the table's)",
                 analysis="Porter only, no stop words"),
    "tantivy": dict(updates="yes (delete + add, visible after commit)", global_stats="no (searcher's own)",
                    analysis="en_stem (Snowball), stop words via custom analyzer"),
    "bm25s": dict(updates="no (index rebuilt from scratch)", global_stats="no (idf baked in at index time)",
                  analysis="PyStemmer, stop words"),
}


def corpus(data: Path, n: int, seed: int = 0) -> tuple[list[tuple[str, str]], list[str]]:
    from ragcluster.tools.evaluation import load_queries
    from ragcluster.tools.smart import read_smart_documents

    docs = read_smart_documents(data / "CISI.ALL")
    tokens = [t for d in docs for t in re.findall(r"\w+", f"{d.title} {d.text}")]
    lengths = [len(re.findall(r"\w+", d.text)) for d in docs]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.choices(tokens, k=max(5, rng.choice(lengths)))
        out.append((" ".join(words[:8]), " ".join(words[8:])))
    return out, list(load_queries(data / "CISI.QRY").values())


def run_engine(engine: str, data: Path, n: int) -> dict:
    docs, queries = corpus(data, n)
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    workdir = Path(tempfile.mkdtemp(prefix=f"lex-{engine}-"))
    update_ids = list(range(0, n, max(1, n // 1000)))[:1000]
    t0 = time.perf_counter()
    if engine == "ragcluster":
        from shard_server.lexical import Analyzer, LexicalIndex, LexicalQuery

        idx = LexicalIndex(Analyzer())
        for start in range(0, n, 1000):
            batch = docs[start:start + 1000]
            idx.add(list(range(start, start + len(batch))), idx.analyze(f"{t}\n{b}" for t, b in batch))
        build = time.perf_counter() - t0

        def search(q: str):
            terms = idx.query_terms(q)  # the router's phase one (local here), then scoring with the stats
            return idx.search(LexicalQuery(terms.terms, terms.counts, terms.document_frequencies, idx.stats()), 10)

        def update():
            idx.remove(update_ids)
            idx.add(list(range(n, n + len(update_ids))), idx.analyze(f"{docs[i][0]}\n{docs[i][1]}" for i in update_ids))
        disk = 0
    elif engine == "fts5":
        import sqlite3

        db = sqlite3.connect(workdir / "fts.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE VIRTUAL TABLE docs USING fts5(title, body, tokenize='porter unicode61')")
        for start in range(0, n, 1000):
            db.execute("BEGIN")
            db.executemany("INSERT INTO docs(rowid, title, body) VALUES (?, ?, ?)",
                           [(start + i, t, b) for i, (t, b) in enumerate(docs[start:start + 1000])])
            db.execute("COMMIT")
        build = time.perf_counter() - t0

        def search(q: str):
            terms = " OR ".join(f'"{w}"' for w in re.findall(r"\w\w+", q.lower()))
            return db.execute("SELECT rowid, bm25(docs) FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) LIMIT 10",
                              (terms,)).fetchall()

        def update():
            db.execute("BEGIN")
            db.executemany("DELETE FROM docs WHERE rowid = ?", [(i,) for i in update_ids])
            db.executemany("INSERT INTO docs(rowid, title, body) VALUES (?, ?, ?)",
                           [(n + i, docs[i][0], docs[i][1]) for i in update_ids])
            db.execute("COMMIT")
        disk = sum(p.stat().st_size for p in workdir.iterdir())
    elif engine == "tantivy":
        import tantivy

        builder = tantivy.SchemaBuilder()
        builder.add_integer_field("id", stored=True, indexed=True)
        builder.add_text_field("title", tokenizer_name="en_stem")
        builder.add_text_field("body", tokenizer_name="en_stem")
        schema = builder.build()
        index = tantivy.Index(schema, path=str(workdir))
        writer = index.writer(heap_size=256 * 1024 * 1024, num_threads=1)
        for i, (t, b) in enumerate(docs):
            writer.add_document(tantivy.Document(id=i, title=t, body=b))
        writer.commit()
        writer.wait_merging_threads()
        index.reload()
        build = time.perf_counter() - t0
        searcher = index.searcher()

        def search(q: str):
            query = index.parse_query(" ".join(re.findall(r"\w\w+", q.lower())), ["title", "body"])
            return searcher.search(query, 10).hits

        def update():
            nonlocal searcher
            w = index.writer(heap_size=64 * 1024 * 1024, num_threads=1)
            for i in update_ids:
                w.delete_documents("id", i)
                w.add_document(tantivy.Document(id=n + i, title=docs[i][0], body=docs[i][1]))
            w.commit()
            w.wait_merging_threads()
            index.reload()
            searcher = index.searcher()
        disk = sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file())
    elif engine == "bm25s":
        import bm25s
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize([f"{t}\n{b}" for t, b in docs], stopwords="en", stemmer=stemmer,
                                       show_progress=False), show_progress=False)
        build = time.perf_counter() - t0

        def search(q: str):
            return retriever.retrieve(bm25s.tokenize([q], stopwords="en", stemmer=stemmer, show_progress=False),
                                      k=10, show_progress=False)

        def update():  # no incremental update: the whole index is rebuilt
            r = bm25s.BM25()
            r.index(bm25s.tokenize([f"{t}\n{b}" for t, b in docs], stopwords="en", stemmer=stemmer,
                                   show_progress=False), show_progress=False)
        disk = 0
    else:
        raise SystemExit(f"unknown engine {engine}")
    rss = proc.memory_info().rss - rss0
    for q in queries[:10]:  # warm up
        search(q)
    # three passes over the queries; a slow engine stops after a minute of queries (at least 20)
    latencies = timed(search, queries * 3, seconds=60, min_samples=20)
    t0 = time.perf_counter()
    update()
    update_seconds = time.perf_counter() - t0
    lat = percentiles_ms(latencies)
    return {"engine": engine, "documents": n, "index_docs_per_second": round(n / build, 1),
            "build_seconds": round(build, 2), "query_p50_ms": round(lat["p50_ms"], 3),
            "query_p99_ms": round(lat["p99_ms"], 3), "queries_timed": len(latencies),
            "rss_bytes": int(rss),
            "rss_bytes_per_document": round(rss / n, 1), "disk_bytes": int(disk),
            "update_1000_seconds": round(update_seconds, 3), **CAPABILITIES[engine]}


def main() -> int:
    parser = bench_parser(__doc__, docs=100_000)
    parser.add_argument("data", help="the CISI collection folder (CISI.ALL, CISI.QRY)")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: run one engine, print JSON
    args = parser.parse_args()
    data = Path(args.data)
    if args.one:
        print(json.dumps(run_engine(args.one, data, args.docs)))
        return 0
    results = []
    for engine in args.engines.split(","):  # each in a process of its own (this script, --one ENGINE)
        out = subprocess.run([sys.executable, __file__, str(data), "--docs", str(args.docs), "--one", engine],
                             capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            results.append({"engine": engine, "error": out.stderr.strip().splitlines()[-1:]})
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if not args.json:
            log(json.dumps(results[-1]))

    def render() -> None:
        print(f"\n{args.docs} documents (CISI vocabulary), {len(corpus(data, 1)[1])} CISI queries, top-10")
        table = Table([("engine", "<11"), ("index docs/s", ">12.0f"), ("p50 ms", ">8.2f"), ("p99 ms", ">8.2f"),
                       ("RSS B/doc", ">10.0f"), ("disk MB", ">8.1f"), ("1k updates s", ">12.3f")])
        print(table.header())
        for r in results:
            if "error" in r:
                print(f"{r['engine']:<11} failed: {r['error']}")
                continue
            print(table.row(r["engine"], r["index_docs_per_second"], r["query_p50_ms"], r["query_p99_ms"],
                            r["rss_bytes_per_document"], r["disk_bytes"] / 1e6, r["update_1000_seconds"]))

    return report(args, results, render)


if __name__ == "__main__":
    sys.exit(main())
