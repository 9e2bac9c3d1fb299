"""Shard core: checkpoint + replay, corrupt checkpoints, tombstone rebuilds, filters, quotas, recall."""

import numpy as np
import pytest

from ragcluster.documents import Document
from ragcluster.errors import InvalidArgument, ResourceExhausted
from shard_server import metrics
from shard_server.config import ShardOptions
from shard_server.filters import Condition, Filter
from shard_server.shard import CHECKPOINT_FILE, Shard

DIM = 32
FACTORIES = ["Flat", "HNSW16", "IVF16,Flat"]


def clustered(n, seed=0, centers=20, dim=DIM):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def docs(n, start=0, prefix="d"):
    return [Document(f"{prefix}{i}", f"text {i}", metadata={"n": i, "parity": "even" if i % 2 == 0 else "odd",
                                                             "rare": i % 50 == 0})
            for i in range(start, start + n)]


def open_shard(path, factory, **kw):
    shard = Shard(ShardOptions(str(path), dim=DIM, index_factory=factory, **kw))
    shard.index.train_min = 500
    return shard


def top_ids(shard, x, k=5):
    res = shard.search(x, k, nprobe=16, include_documents=True)
    return [[res.documents[int(i)].id for i in row] for row in res.ids]


@pytest.mark.parametrize("factory", FACTORIES)
def test_checkpoint_then_replay_equals_rebuild(tmp_path, factory):
    x = clustered(1500)
    shard = open_shard(tmp_path, factory)
    for start in range(0, 1000, 250):
        shard.upsert(docs(250, start), x[start:start + 250])
    assert shard.checkpoint() and (tmp_path / CHECKPOINT_FILE).exists()
    assert not shard.checkpoint()  # nothing new
    # writes after the checkpoint: new docs, a replacement, deletes
    shard.upsert(docs(500, 1000), x[1000:1500])
    shard.upsert([Document("d3", "replaced", metadata={"n": 3})], x[7:8])
    shard.delete(["d4", "d1200"])
    expected = top_ids(shard, x[:40])
    seq = shard.info().sequence
    shard.close(checkpoint=False)  # crash-like: the checkpoint is behind the store

    again = open_shard(tmp_path, factory)
    info = again.info()
    assert info.checkpoint_sequence < seq == info.sequence
    assert info.documents == info.stored_documents == 1498
    assert top_ids(again, x[:40]) == expected
    again.close()
    # and the same from a full rebuild (no checkpoint at all)
    (tmp_path / CHECKPOINT_FILE).unlink()
    rebuilt = open_shard(tmp_path, factory)
    assert rebuilt.info().documents == 1498
    if factory == "Flat":
        assert top_ids(rebuilt, x[:40]) == expected
    rebuilt.close()


def test_corrupt_checkpoint_is_rebuilt_from_store(tmp_path):
    x = clustered(300)
    shard = open_shard(tmp_path, "Flat")
    shard.upsert(docs(300), x)
    shard.close()  # writes a checkpoint
    path = tmp_path / CHECKPOINT_FILE
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    path.write_bytes(bytes(raw))
    before = metrics.CHECKPOINT_FAILURES.labels(0, "load")._value.get()
    again = open_shard(tmp_path, "Flat")
    assert metrics.CHECKPOINT_FAILURES.labels(0, "load")._value.get() == before + 1
    assert again.info().documents == 300
    assert top_ids(again, x[:5], 1) == [["d0"], ["d1"], ["d2"], ["d3"], ["d4"]]
    again.close()


def test_checkpoint_of_another_index_type_is_not_trusted(tmp_path):
    x = clustered(200)
    shard = open_shard(tmp_path, "Flat")
    shard.upsert(docs(200), x)
    shard.close()
    hnsw = open_shard(tmp_path, "HNSW16")  # the factory changed: rebuild, do not load the Flat checkpoint
    assert hnsw.info().documents == 200 and hnsw.info().index_factory == "HNSW16"
    hnsw.close()


def test_tombstones_trigger_rebuild_and_vanish(tmp_path):
    x = clustered(400)
    shard = open_shard(tmp_path, "HNSW16", rebuild_tombstone_share=0.2)
    shard.upsert(docs(400), x)
    shard.delete([f"d{i}" for i in range(0, 100)])
    assert shard.info().tombstones == 100 and shard.needs_rebuild()
    expected = top_ids(shard, x[100:120])
    assert all(not any(i in {f"d{j}" for j in range(100)} for i in row) for row in top_ids(shard, x[:20]))
    shard.rebuild()
    info = shard.info()
    assert info.tombstones == 0 and info.documents == 300 and not shard.needs_rebuild()
    assert top_ids(shard, x[100:120]) == expected
    shard.close()


@pytest.mark.parametrize("factory", FACTORIES)
def test_filters_return_k_matching_hits(tmp_path, factory):
    x = clustered(2000, seed=3)
    shard = open_shard(tmp_path, factory)
    for start in range(0, 2000, 500):
        shard.upsert(docs(500, start), x[start:start + 500])
    q = clustered(8, seed=9)
    cases = [
        (Filter([Condition("parity", equals="even")]), lambda m: m["parity"] == "even"),
        (Filter([Condition("rare", equals=True)]), lambda m: m["rare"] is True),  # 40 matches, spread out
        (Filter([Condition("n", gte=100, lt=130), Condition("parity", any_of=["odd"])]),
         lambda m: 100 <= m["n"] < 130 and m["parity"] == "odd"),
    ]
    for flt, matches in cases:
        res = shard.search(q, 10, nprobe=1, include_documents=True, flt=flt)
        for row in res.ids:
            assert len(row) == 10, (factory, flt)
            assert all(matches(res.documents[int(i)].metadata) for i in row)
    # fewer matches than k: all of them
    res = shard.search(q[:1], 10, include_documents=True, flt=Filter([Condition("n", equals=7)]))
    assert [res.documents[int(i)].id for i in res.ids[0]] == ["d7"]
    with pytest.raises(InvalidArgument, match="unknown metadata field 'color'"):
        shard.search(q[:1], 10, flt=Filter([Condition("color", equals="red")]))
    lenient = shard.search(q[:1], 10, flt=Filter([Condition("color", equals="red")]), unknown_fields_match_nothing=True)
    assert lenient.unknown_fields == ["color"] and len(lenient.ids[0]) == 0
    shard.close()


def test_filtered_exact_results_match_brute_force(tmp_path):
    x = clustered(1000, seed=5)
    shard = open_shard(tmp_path, "Flat")
    shard.upsert(docs(1000), x)
    q = clustered(5, seed=6)
    res = shard.search(q, 10, include_documents=True, flt=Filter([Condition("parity", equals="odd")]))
    odd = np.arange(1, 1000, 2)
    for qi, row in enumerate(res.ids):
        expect = odd[np.argsort(-(x[odd] @ q[qi]), kind="stable")[:10]]
        assert [res.documents[int(i)].id for i in row] == [f"d{i}" for i in expect]


def test_store_quota_refuses_writes_and_loses_nothing(tmp_path):
    shard = Shard(ShardOptions(str(tmp_path), dim=DIM, max_store_bytes=256 * 1024))
    x = clustered(2000)
    acked = 0
    with pytest.raises(ResourceExhausted, match="storage full"):
        for start in range(0, 2000, 100):
            shard.upsert(docs(100, start), x[start:start + 100])
            acked += 100
    assert 0 < acked < 2000
    info = shard.info()
    assert info.documents == info.stored_documents == acked
    assert top_ids(shard, x[:3], 1) == [["d0"], ["d1"], ["d2"]]
    shard.close()


@pytest.mark.parametrize("factory,params,floor", [
    ("Flat", {}, 1.0),
    ("IVF64,Flat", {"nprobe": 16}, 0.95),
    ("HNSW32", {"ef_search": 128}, 0.95),
    ("HNSW32,Flat", {"ef_search": 128}, 0.95),
    ("IVF64,PQ16", {"nprobe": 16}, 0.3),  # lossy codes: reported, not held to 0.95
])
def test_recall_against_brute_force(tmp_path, factory, params, floor, record_property):
    import faiss

    n, dim = 4000, 64
    x = clustered(n, seed=11, centers=50, dim=dim)
    q = clustered(200, seed=12, centers=50, dim=dim)
    shard = Shard(ShardOptions(str(tmp_path), dim=dim, index_factory=factory))
    shard.index.train_min = 3000
    for start in range(0, n, 1000):
        shard.upsert(docs(1000, start), x[start:start + 1000])
    assert shard.info().trained
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    _, truth = flat.search(q, 10)
    res = shard.search(q, 10, include_documents=True, **params)
    got = [[int(res.documents[int(i)].id[1:]) for i in row] for row in res.ids]
    recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth.tolist())])
    record_property("recall_at_10", float(recall))
    print(f"\n{factory} {params}: recall@10 = {recall:.4f}")
    assert recall >= floor
    if factory == "Flat":
        assert got == truth.tolist()
    shard.close()
