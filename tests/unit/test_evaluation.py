"""Metrics against values computed by hand (trec_eval conventions)."""

import math

import pytest

from ragcluster.errors import InvalidArgument
from ragcluster.tools.evaluation import (
    corpus_bleu,
    evaluate_retrieval,
    exact_match,
    load_qrels,
    load_queries,
    rank,
    token_f1,
)


def test_graded_metrics_by_hand():
    # q1: relevant d1 (grade 2), d3 (grade 1), d9 (grade 1, not retrieved); d2 judged non-relevant (0)
    qrels = {"q1": {"d1": 2, "d3": 1, "d9": 1, "d2": 0}}
    run = {"q1": [("d2", 0.9), ("d1", 0.8), ("x", 0.7), ("d3", 0.6), ("y", 0.5)]}
    r = evaluate_retrieval(run, qrels, k=5).per_query["q1"]
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["precision"] == pytest.approx(2 / 5)
    assert r["mrr"] == pytest.approx(1 / 2)
    assert r["map"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert r["ndcg"] == pytest.approx(dcg / idcg)


def test_cutoff_ties_and_missing_queries():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}  # q3 has no relevant document
    # tie at 0.5: trec_eval orders ties by doc id descending, so "z" ranks before "a"
    run = {"q1": [("a", 0.5), ("z", 0.5)]}  # q2 missing from the run
    assert rank(run["q1"]) == ["z", "a"]
    report = evaluate_retrieval(run, qrels, k=1)
    assert report.evaluated == 2 and report.skipped_no_relevant == 1
    assert report.per_query["q1"]["recall"] == 0.0  # "a" falls outside k=1 because of the tie order
    assert report.per_query["q2"] == {"recall": 0.0, "precision": 0.0, "ndcg": 0.0, "mrr": 0.0, "map": 0.0}
    at2 = evaluate_retrieval(run, qrels, k=2)
    assert at2.per_query["q1"]["mrr"] == 0.5 and at2.per_query["q1"]["map"] == 0.5
    assert at2.means["mrr"] == pytest.approx(0.25)  # mean over q1 and q2
    with pytest.raises(InvalidArgument, match="k"):
        evaluate_retrieval(run, qrels, k=0)


def test_beir_files(tmp_path):
    q = tmp_path / "queries.jsonl"
    q.write_text('{"_id": "q1", "text": "first"}\n{"id": 2, "text": "second"}\n\n')
    assert load_queries(q) == {"q1": "first", "2": "second"}
    qr = tmp_path / "qrels.tsv"
    qr.write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\n2\td3\t1\n")
    assert load_qrels(qr) == {"q1": {"d1": 2, "d2": 0}, "2": {"d3": 1}}
    bad = tmp_path / "bad.tsv"
    bad.write_text("query-id\tcorpus-id\tscore\nq1\td1\thigh\n")
    with pytest.raises(InvalidArgument, match=r"bad\.tsv:2"):
        load_qrels(bad)
    q.write_text('{"text": "no id"}\n')
    with pytest.raises(InvalidArgument, match=r"queries\.jsonl:1"):
        load_queries(q)


def test_generation_metrics():
    assert exact_match("The Paris.", ["paris"]) == 1.0
    assert exact_match("Paris, France", ["paris"]) == 0.0
    assert token_f1("the capital is Paris", ["Paris"]) == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert token_f1("London", ["Paris", "london"]) == 1.0
    assert corpus_bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(100.0)
    assert corpus_bleu(["completely different words here"], [["the cat sat on the mat"]]) < 10
