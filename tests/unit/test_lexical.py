"""The shard's lexical (BM25) index: analysis, scores, corpus-wide statistics across shards, updates, and
the shard keeping it in step with the store (writes, deletes, reopen, rebuild)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from ragcluster.corpus import make_documents
from ragcluster.documents import Document
from ragcluster.errors import InvalidArgument
from ragcluster.hashing import shard_for
from shard_server.config import ShardOptions
from shard_server.lexical import Analyzer, AnalyzerConfig, CorpusStats, LexicalIndex, LexicalQuery, document_text
from shard_server.shard import Shard

DIM = 8


def index_of(docs, analyzer=None, start_iid=1):
    idx = LexicalIndex(analyzer or Analyzer())
    idx.add(list(range(start_iid, start_iid + len(docs))), idx.analyze(document_text(d.title, d.text) for d in docs))
    return idx


def test_analyzer_stems_drops_stop_words_and_single_characters():
    a = Analyzer()
    assert a.terms("The Libraries are indexing X-rays of the running systems") == \
        ["librari", "index", "ray", "run", "system"]
    plain = Analyzer(AnalyzerConfig(stemmer="none", stopwords="none"))
    assert plain.terms("The libraries are indexing") == ["the", "libraries", "are", "indexing"]
    custom = Analyzer(AnalyzerConfig(stemmer="porter", stopwords="libraries,the"))
    assert custom.terms("The libraries are indexing") == ["ar", "index"]
    with pytest.raises(InvalidArgument, match="lexical_stemmer"):
        Analyzer(AnalyzerConfig(stemmer="klingon"))


def test_scores_are_bm25_with_lucene_idf():
    docs = [Document("a", "apple banana apple"), Document("b", "banana cherry"), Document("c", "cherry date elder fig")]
    idx = index_of(docs, Analyzer(AnalyzerConfig("none", "none")))
    k1, b = idx.k1, idx.b
    avg = (3 + 2 + 4) / 3

    def expected(tf, dl, df):
        idf = math.log(1 + (3 - df + 0.5) / (df + 0.5))
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avg))

    ids, scores = idx.search(LexicalQuery(["apple", "cherry"], [1, 1]), 10)
    want = {1: expected(2, 3, 1), 2: expected(1, 2, 2), 3: expected(1, 4, 2)}
    assert sorted(ids.tolist()) == [1, 2, 3]
    for i, s in zip(ids.tolist(), scores.tolist()):
        assert s == pytest.approx(want[i], rel=1e-12)
    assert list(ids) == sorted(want, key=lambda i: -want[i])
    # a term counted twice in the query weighs twice
    _, twice = idx.search(LexicalQuery(["apple"], [2]), 1)
    assert twice[0] == pytest.approx(2 * want[1], rel=1e-12)
    assert idx.search(LexicalQuery(["zebra"], [1]), 5)[0].size == 0


def corpus(n=600, seed=0):
    docs = make_documents(n, seed=seed)
    rng = random.Random(seed)
    words = [w for d in docs[:50] for w in d.text.split()]
    for d in docs:  # some rare tokens, so idf differs a lot between terms
        if rng.random() < 0.1:
            d.text += f" zyx{rng.randint(0, 9)}"
    queries = [" ".join(rng.sample(words, 4)) for _ in range(60)] + [f"zyx{i} river" for i in range(10)]
    return docs, queries


def sharded_search(shards: list[LexicalIndex], text: str, k: int) -> list[tuple[int, float]]:
    """What the router does: gather term statistics from every shard, sum them, search each shard with the
    corpus-wide statistics, merge by score."""
    per_shard = [s.query_terms(text) for s in shards]
    terms, counts = per_shard[0].terms, per_shard[0].counts
    df = [sum(p.document_frequencies[i] for p in per_shard) for i in range(len(terms))]
    stats = CorpusStats(sum(s.documents for s in shards), sum(s.total_length for s in shards))
    hits = []
    for s in shards:
        ids, scores = s.search(LexicalQuery(terms, counts, df, stats), k)
        hits += list(zip(ids.tolist(), scores.tolist()))
    return sorted(hits, key=lambda h: (-h[1], h[0]))[:k]


def test_three_shards_with_global_statistics_rank_exactly_like_one_index():
    docs, queries = corpus()
    iid = {d.id: n + 1 for n, d in enumerate(docs)}  # the same iid everywhere, so results compare directly
    whole = index_of(docs)
    shards = []
    for s in range(3):
        mine = [d for d in docs if shard_for(d.id, 3) == s]
        idx = LexicalIndex(Analyzer())
        idx.add([iid[d.id] for d in mine], idx.analyze(document_text(d.title, d.text) for d in mine))
        shards.append(idx)
    local_differs = 0
    for text in queries:
        ids, scores = whole.search(LexicalQuery(*_terms(whole, text)), 10)
        merged = sharded_search(shards, text, 10)
        assert [i for i, _ in merged] == ids.tolist(), text
        assert np.allclose([s for _, s in merged], scores, rtol=1e-12)
        # without the global statistics (each shard scoring with its own), rankings differ
        local = sorted(((i, s) for sh in shards for i, s in zip(*[a.tolist() for a in sh.search(
            LexicalQuery(*_terms(sh, text)), 10)])), key=lambda h: (-h[1], h[0]))[:10]
        local_differs += [i for i, _ in local] != ids.tolist()
    assert local_differs > 0  # the test can tell global from local statistics


def _terms(idx, text):
    q = idx.query_terms(text)
    return q.terms, q.counts


def test_updates_and_deletes_change_statistics_and_results():
    idx = index_of([Document("a", "red apple"), Document("b", "green apple"), Document("c", "red cherry")])
    assert idx.document_frequency("appl") == 2 and idx.stats() == CorpusStats(3, 6)
    idx.remove([2])
    assert idx.document_frequency("appl") == 1 and idx.stats() == CorpusStats(2, 4)
    assert idx.search(LexicalQuery(["green"], [1]), 5)[0].size == 0
    idx.add([4], idx.analyze(["green green tea"]))  # a replacement gets a new iid
    assert idx.search(LexicalQuery(["green"], [1]), 5)[0].tolist() == [4]
    assert idx.dead == 1 and idx.dead_share == pytest.approx(0.25)
    allowed = np.array([3], np.int64)
    assert idx.search(LexicalQuery(["red"], [1]), 5, allowed)[0].tolist() == [3]


def open_shard(path, **kw):
    return Shard(ShardOptions(str(path), dim=DIM, **kw))


def vecs(n, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def lexical_ids(shard, text, k=10, flt=None):
    q = shard.term_stats([text]).queries[0]
    res = shard.search(np.zeros((0, DIM), np.float32), k, include_documents=True, flt=flt,
                       lexical=[LexicalQuery(q.terms, q.counts)])
    return [res.documents[int(i)].id for i in res.lexical_ids[0]]


def test_shard_keeps_lexical_index_in_step_with_the_store(tmp_path):
    docs = make_documents(300, seed=1)
    shard = open_shard(tmp_path / "s")
    shard.upsert(docs, vecs(300))
    info = shard.info()
    assert info.lexical_documents == info.stored_documents == 300 and info.lexical_terms > 10
    target = docs[7]
    shard.upsert([Document(target.id, "quasar plankton", target.title)], vecs(1, 9))  # replace
    shard.upsert([Document("new", "quasar nebula")], vecs(1, 10))
    assert lexical_ids(shard, "quasar plankton")[:2] == [target.id, "new"]
    shard.delete(["new"])
    assert lexical_ids(shard, "nebula") == []
    before = {t: lexical_ids(shard, t) for t in ("river glacier", "quasar", docs[3].text)}
    shard.close()
    reopened = open_shard(tmp_path / "s")  # rebuilt from the store
    assert {t: lexical_ids(reopened, t) for t in before} == before
    assert reopened.info().lexical_documents == 300
    reopened.close()


def test_lexical_search_with_filters_and_dense_in_one_call(tmp_path):
    shard = open_shard(tmp_path / "s")
    docs = [Document(f"d{i}", f"common word {'special' if i % 3 == 0 else ''}", metadata={"n": i}) for i in range(60)]
    x = vecs(60, 2)
    shard.upsert(docs, x)
    from shard_server.filters import Condition, Filter

    flt = Filter([Condition("n", lt=30)])
    got = lexical_ids(shard, "special common", k=50, flt=flt)
    assert set(got) == {f"d{i}" for i in range(0, 30)} and set(got[:10]) == {f"d{i}" for i in range(0, 30, 3)}
    from ragcluster.hashing import id_key

    assert got[:10] == sorted(got[:10], key=id_key)  # equal scores rank by the hash of the document id
    q = shard.term_stats(["special"]).queries[0]
    res = shard.search(x[:2], 3, include_documents=True, lexical=[LexicalQuery(q.terms, q.counts)])
    assert res.documents[int(res.ids[0][0])].id == "d0"  # dense: its own vector first
    assert len(res.lexical_ids) == 1 and len(res.lexical_ids[0]) == 3
    with pytest.raises(InvalidArgument, match="queries"):
        shard.search(np.zeros((0, DIM), np.float32), 3)
    with pytest.raises(InvalidArgument, match=r"lexical\[0\].counts"):
        shard.search(np.zeros((0, DIM), np.float32), 3, lexical=[LexicalQuery(["a", "b"], [1])])
    shard.close()


def test_deleted_documents_trigger_a_rebuild_that_drops_their_postings(tmp_path):
    shard = open_shard(tmp_path / "s", rebuild_tombstone_share=0.3)
    docs = make_documents(100, seed=3)
    shard.upsert(docs, vecs(100))
    shard.delete([d.id for d in docs[:40]])
    assert shard.needs_rebuild()  # Flat deletes its vectors, but the lexical postings are still there
    before = lexical_ids(shard, docs[50].text)
    postings = shard.lexical.postings
    shard.rebuild()
    assert not shard.needs_rebuild() and shard.lexical.postings < postings
    assert lexical_ids(shard, docs[50].text) == before
    assert shard.info().lexical_documents == 60
    shard.close()
