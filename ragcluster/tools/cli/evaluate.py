"""`ragcluster eval`: retrieval metrics on BEIR queries/qrels, generation metrics on a QA set."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from ragcluster.client import RouterClient
from ragcluster.config import option
from ragcluster.errors import InvalidArgument
from ragcluster.tools.cli.common import ConnectOptions, RetrievalOptions, connect, console, fail, retrieval_kwargs


@dataclass
class EvalOptions(RetrievalOptions, ConnectOptions):
    queries: str = option("", "BEIR queries JSONL ({'_id'|'id', 'text'}) for retrieval metrics")
    qrels: str = option("", "BEIR qrels TSV (query-id, corpus-id, score; header line) for retrieval metrics")
    k: int = option(10, "cut-off for recall@k, precision@k, nDCG@k, MRR@k, MAP@k", short="-k")
    per_query: bool = option(False, "also print (or include in --json) every query's metrics")
    qa: str = option("", "QA JSONL ({'id', 'question', 'answers': [str]}) for generation metrics (EM, F1, BLEU)")
    max_tokens: int = option(64, "answer length for --qa")
    concurrency: int = option(4, "requests in flight")
    timeout: float = option(120.0, "deadline per request in seconds")
    json: bool = option(False, "print the report as JSON")


T = TypeVar("T")
R = TypeVar("R")


def _progress(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: list[T], desc: str, quiet: bool) -> Iterator[R]:
    from tqdm import tqdm

    return iter(tqdm(pool.map(fn, items), total=len(items), desc=desc, unit="q", disable=quiet or None))


def _retrieval(opts: EvalOptions, client: RouterClient, pool: ThreadPoolExecutor) -> dict[str, Any]:
    from ragcluster.tools.evaluation import evaluate_retrieval, load_qrels, load_queries

    queries, qrels = load_queries(opts.queries), load_qrels(opts.qrels)
    wanted = [q for q in qrels if q in queries]
    missing = [q for q in qrels if q not in queries]

    def search(qid: str) -> tuple[str, list[tuple[str, float]]]:
        # chunked corpora: ask for more, then rank each parent document once, at its best chunk
        hits = client.search(queries[qid], k=min(opts.k * 4, 100), **retrieval_kwargs(opts)).hits
        best: dict[str, float] = {}
        for h in hits:
            parent = h.parent_id or h.id
            best[parent] = max(best.get(parent, float("-inf")), h.score)
        return qid, sorted(best.items(), key=lambda kv: -kv[1])[: opts.k]

    runs = dict(_progress(pool, search, wanted, "eval retrieval", opts.json))
    result = evaluate_retrieval(runs, {q: qrels[q] for q in wanted + missing}, opts.k)
    report: dict[str, Any] = {
        "k": opts.k, "queries": result.evaluated, "skipped_no_relevant": result.skipped_no_relevant,
        "missing_query_text": len(missing),
        "metrics": {f"{m}@{opts.k}": round(v, 6) for m, v in result.means.items()},
    }
    if opts.per_query:
        report["per_query"] = result.per_query
    return report


def _qa_items(path: str) -> list[tuple[str, str, list[str]]]:
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            question, answers = obj.get("question") or obj.get("text"), obj.get("answers")
            if not isinstance(question, str) or not isinstance(answers, list) or not answers:
                raise InvalidArgument(f"{path}:{n}: needs 'question' and a non-empty 'answers' list")
            items.append((str(obj.get("id", obj.get("_id", n))), question, [str(a) for a in answers]))
    return items


def _generation(opts: EvalOptions, client: RouterClient, pool: ThreadPoolExecutor) -> dict[str, Any]:
    from ragcluster.tools.evaluation import corpus_bleu, exact_match, token_f1

    items = _qa_items(opts.qa)

    def ask(item: tuple[str, str, list[str]]) -> tuple[str, str]:
        qid, question, _ = item
        return qid, client.ask(question, max_tokens=opts.max_tokens, temperature=0.0,
                               **retrieval_kwargs(opts)).answer.strip()

    answers = dict(_progress(pool, ask, items, "eval generation", opts.json))
    preds = [answers[qid] for qid, _, _ in items]
    refs = [refs for _, _, refs in items]
    em = [exact_match(p, r) for p, r in zip(preds, refs, strict=True)]
    f1 = [token_f1(p, r) for p, r in zip(preds, refs, strict=True)]
    report: dict[str, Any] = {
        "questions": len(items), "exact_match": sum(em) / max(len(em), 1),
        "f1": sum(f1) / max(len(f1), 1), "bleu": corpus_bleu(preds, refs),
    }
    if opts.per_query:
        report["per_question"] = {qid: {"answer": p, "exact_match": e, "f1": f}
                                  for (qid, _, _), p, e, f in zip(items, preds, em, f1, strict=True)}
    return report


def _print(report: dict[str, Any], opts: EvalOptions) -> None:
    from rich.table import Table

    from ragcluster.tools.evaluation import RETRIEVAL_METRICS

    out = console()
    if "retrieval" in report:
        r = report["retrieval"]
        table = Table(title=f"retrieval — {r['queries']} queries with relevant documents, k={r['k']}")
        for m in RETRIEVAL_METRICS:
            table.add_column(f"{m}@{r['k']}", justify="right")
        table.add_row(*(f"{r['metrics'][f'{m}@{opts.k}']:.4f}" for m in RETRIEVAL_METRICS))
        out.print(table)
        if opts.per_query:
            pq = Table(title="per query")
            pq.add_column("query")
            for m in RETRIEVAL_METRICS:
                pq.add_column(m, justify="right")
            for qid, values in r["per_query"].items():
                pq.add_row(qid, *(f"{values[m]:.4f}" for m in RETRIEVAL_METRICS))
            out.print(pq)
    if "generation" in report:
        g = report["generation"]
        out.print(f"generation — {g['questions']} questions: exact match {g['exact_match']:.4f}, "
                  f"F1 {g['f1']:.4f}, BLEU {g['bleu']:.2f}")


def cmd_eval(opts: EvalOptions, ns: object) -> int:
    if not ((opts.queries and opts.qrels) or opts.qa):
        return fail("give --queries and --qrels (retrieval), and/or --qa (generation)")
    report: dict[str, Any] = {}
    try:
        with connect(opts, timeout=opts.timeout) as client, ThreadPoolExecutor(opts.concurrency) as pool:
            if opts.queries and opts.qrels:
                report["retrieval"] = _retrieval(opts, client, pool)
            if opts.qa:
                report["generation"] = _generation(opts, client, pool)
    except (InvalidArgument, OSError) as exc:
        return fail(str(exc))
    if opts.json:
        print(json.dumps(report))
    else:
        _print(report, opts)
    return 0
