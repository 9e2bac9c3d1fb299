"""Retrieval and generation metrics (pure: no grpc), computed as trec_eval / BEIR (pytrec_eval) do.

Retrieval, per query with at least one relevant document (qrels grade >= 1), over the top k:
- recall@k = relevant retrieved / relevant
- precision@k = relevant retrieved / k
- nDCG@k with linear gains (the grade) and log2(rank + 1) discounts; the ideal ranking sorts every judged
  document by grade
- MRR@k = 1 / rank of the first relevant document (0 if none in the top k)
- MAP@k = sum of precision@rank at each relevant retrieved rank, divided by the number of relevant documents
Ties in scores are broken as trec_eval does: by document id, descending. Queries without any relevant
document are left out of the means; a query with judgments but no results scores 0.

Generation: exact match and token F1 after SQuAD normalisation (lowercase, no punctuation, no articles,
single spaces), the best over the reference answers; BLEU from sacrebleu over the corpus.
"""

from __future__ import annotations

import csv
import json
import math
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ragcluster.errors import InvalidArgument
from ragcluster.tools.smart import is_smart, numeric_first_line, read_smart, read_smart_qrels

RETRIEVAL_METRICS = ("recall", "precision", "ndcg", "mrr", "map")


def load_queries(path: str | Path) -> dict[str, str]:
    """BEIR queries JSONL (``{"_id" | "id": str, "text": str}`` per line), or a SMART query file
    (``CISI.QRY``, ``cran.qry``, ``MED.QRY``, ...: recognised by its first line starting with ``.I``)."""
    if is_smart(path):
        return {r.id: r.text for r in read_smart(path)}
    queries: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgument(f"{path}:{n}: invalid JSON: {exc.msg}") from exc
            qid = obj.get("_id", obj.get("id"))
            if qid is None or not isinstance(obj.get("text"), str):
                raise InvalidArgument(f"{path}:{n}: needs '_id' (or 'id') and 'text'")
            queries[str(qid)] = obj["text"]
    return queries


def load_query_texts(path: str | Path) -> list[str]:
    """The ``text`` field of every JSONL line (ids optional): loadtest input; a BEIR queries file works."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line).get("text")
            except (json.JSONDecodeError, AttributeError) as exc:
                raise InvalidArgument(f"{path}:{n}: expected a JSON object with a 'text' field") from exc
            if not isinstance(text, str) or not text.strip():
                raise InvalidArgument(f"{path}:{n}: 'text' must be a non-empty string")
            texts.append(text)
    if not texts:
        raise InvalidArgument(f"{path}: no queries")
    return texts


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV: ``query-id<TAB>corpus-id<TAB>score`` with a header line (graded relevance); a file
    whose first line is all numbers is read as SMART/TREC relevance judgements (``read_smart_qrels``)."""
    if numeric_first_line(path):
        return read_smart_qrels(path)
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise InvalidArgument(f"{path}:{n}: expected query-id, corpus-id, score")
            try:
                grade = int(float(row[-1]))
            except ValueError:
                if n == 1:
                    continue  # the header
                raise InvalidArgument(f"{path}:{n}: score {row[-1]!r} is not a number") from None
            qrels.setdefault(row[0], {})[row[1]] = grade
    return qrels


def rank(results: list[tuple[str, float]]) -> list[str]:
    """Doc ids by score (desc), ties by doc id (desc), as trec_eval orders a run."""
    ordered = sorted(results, key=lambda r: r[0], reverse=True)  # secondary: doc id, descending
    ordered.sort(key=lambda r: -r[1])  # primary: score, descending (the sort is stable)
    return [doc_id for doc_id, _ in ordered]


def query_metrics(ranked: list[str], judged: dict[str, int], k: int) -> dict[str, float]:
    top = ranked[:k]
    relevant = {d for d, g in judged.items() if g >= 1}
    hits = [d in relevant for d in top]
    n_rel = len(relevant)
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top) if judged.get(d, 0) > 0)
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    first = next((i for i, h in enumerate(hits) if h), None)
    ap, found = 0.0, 0
    for i, h in enumerate(hits):
        if h:
            found += 1
            ap += found / (i + 1)
    return {
        "recall": sum(hits) / n_rel if n_rel else 0.0,
        "precision": sum(hits) / k,
        "ndcg": dcg / idcg if idcg else 0.0,
        "mrr": 1.0 / (first + 1) if first is not None else 0.0,
        "map": ap / n_rel if n_rel else 0.0,
    }


@dataclass
class RetrievalReport:
    k: int
    means: dict[str, float]
    per_query: dict[str, dict[str, float]]
    evaluated: int
    skipped_no_relevant: int


def evaluate_retrieval(runs: dict[str, list[tuple[str, float]]], qrels: dict[str, dict[str, int]],
                       k: int) -> RetrievalReport:
    """``runs``: query id -> [(doc id, score)]; queries missing from ``runs`` score 0."""
    if k <= 0:
        raise InvalidArgument(f"k: must be positive, got {k}")
    per_query, skipped = {}, 0
    for qid, judged in qrels.items():
        if not any(g >= 1 for g in judged.values()):
            skipped += 1
            continue
        per_query[qid] = query_metrics(rank(runs.get(qid, [])), judged, k)
    means = {m: (sum(q[m] for q in per_query.values()) / len(per_query) if per_query else 0.0)
             for m in RETRIEVAL_METRICS}
    return RetrievalReport(k, means, per_query, len(per_query), skipped)


# --- generation -------------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: list[str]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(r) for r in references))


def token_f1(prediction: str, references: list[str]) -> float:
    best = 0.0
    pred = normalize_answer(prediction).split()
    for ref in references:
        gold = normalize_answer(ref).split()
        common = Counter(pred) & Counter(gold)
        same = sum(common.values())
        if not pred or not gold:
            f1 = float(pred == gold)
        elif same == 0:
            f1 = 0.0
        else:
            precision, recall = same / len(pred), same / len(gold)
            f1 = 2 * precision * recall / (precision + recall)
        best = max(best, f1)
    return best


def corpus_bleu(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU (sacrebleu, default 13a tokenisation) with a variable number of references."""
    try:
        import sacrebleu
    except ImportError as exc:  # pragma: no cover - install-time problem
        raise RuntimeError("BLEU needs sacrebleu: pip install sacrebleu") from exc
    width = max((len(r) for r in references), default=1)
    streams = [[refs[i] if i < len(refs) else "" for refs in references] for i in range(width)]
    return float(sacrebleu.corpus_bleu(predictions, streams).score)
