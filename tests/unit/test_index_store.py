import numpy as np
import pytest

from ragcluster.documents import Document
from ragcluster.errors import FailedPrecondition, InvalidArgument
from shard_server.config import ShardOptions
from shard_server.index import VectorIndex
from shard_server.shard import Shard

DIM = 16


def _vecs(n, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _docs(n, prefix="d"):
    return [Document(f"{prefix}{i}", f"text {i}", metadata={"i": i}) for i in range(n)]


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF4,Flat"])
def test_upsert_replaces_and_delete_removes(tmp_path, factory):
    shard = Shard(ShardOptions(str(tmp_path), dim=DIM, index_factory=factory))
    shard.index.train_min = 200  # train the IVF index inside this small test
    x = _vecs(300)
    shard.upsert(_docs(300), x)
    assert shard.info().documents == 300
    # d0's own vector finds d0
    res = shard.search(x[:1], 1, nprobe=4, include_documents=True)
    assert res.documents[int(res.ids[0][0])].id == "d0"
    # upsert d0 with d1's vector: d0 now answers for x[1] (tie with d1), and nothing answers as the old d0
    shard.upsert([Document("d0", "new text")], x[1:2])
    res = shard.search(x[:1], 5, nprobe=4, include_documents=True)
    found = [res.documents[int(i)] for i in res.ids[0]]
    assert all(not (d.id == "d0" and d.text == "text 0") for d in found)
    assert shard.info().documents == 300
    assert shard.fetch(["d0"])[0].text == "new text"
    # delete removes everywhere
    deleted, _ = shard.delete(["d1", "d0", "missing"])
    assert deleted == 2
    res = shard.search(x[:2], 10, nprobe=4, include_documents=True)
    ids = {res.documents[int(i)].id for row in res.ids for i in row}
    assert not ids & {"d0", "d1"}
    assert shard.info().documents == 298
    shard.close()


def test_reopen_keeps_everything(tmp_path):
    shard = Shard(ShardOptions(str(tmp_path), dim=DIM))
    x = _vecs(50)
    shard.upsert(_docs(50), x)
    shard.delete(["d3"])
    before = shard.search(x[:5], 5, include_documents=True)
    seq = shard.info().sequence
    shard.close()
    again = Shard(ShardOptions(str(tmp_path), dim=DIM))
    after = again.search(x[:5], 5, include_documents=True)
    assert again.info().documents == 49 and again.info().sequence == seq == 2
    for a, b in zip(before.ids, after.ids):
        assert a.tolist() == b.tolist()
    assert again.fetch(["d3"]) == []
    again.close()


def test_reopen_with_other_dim_is_refused(tmp_path):
    Shard(ShardOptions(str(tmp_path), dim=DIM)).close()
    with pytest.raises(FailedPrecondition, match="dim"):
        Shard(ShardOptions(str(tmp_path), dim=DIM * 2))


@pytest.mark.parametrize("bad,match", [
    (lambda x: x[:, :8], "dimension"),
    (lambda x: np.where(np.arange(DIM) == 3, np.nan, x).astype(np.float32), "NaN"),
    (lambda x: np.where(np.arange(DIM) == 3, np.inf, x).astype(np.float32), "NaN or infinity"),
])
def test_bad_vectors(tmp_path, bad, match):
    shard = Shard(ShardOptions(str(tmp_path), dim=DIM))
    with pytest.raises(InvalidArgument, match=match):
        shard.upsert(_docs(2), bad(_vecs(2)))
    with pytest.raises(InvalidArgument, match=match):
        shard.search(bad(_vecs(2)), 3)
    assert shard.info().documents == 0 and shard.info().sequence == 0  # nothing half-written


def test_guards(tmp_path):
    shard = Shard(ShardOptions(str(tmp_path), dim=DIM, max_k=50, max_upsert_batch=10))
    with pytest.raises(InvalidArgument, match="k: must be between 1 and 50"):
        shard.search(_vecs(1), 0)
    with pytest.raises(InvalidArgument, match="k: must be between 1 and 50"):
        shard.search(_vecs(1), 51)
    with pytest.raises(InvalidArgument, match="duplicate id"):
        shard.upsert([Document("a", "x"), Document("a", "y")], _vecs(2))
    with pytest.raises(InvalidArgument, match="id: must not be empty"):
        shard.upsert([Document("", "x")], _vecs(1))
    with pytest.raises(InvalidArgument, match="longer than 512 bytes"):
        shard.upsert([Document("x" * 513, "x")], _vecs(1))
    with pytest.raises(InvalidArgument, match="exceeds the maximum 10"):
        shard.upsert(_docs(11), _vecs(11))
    with pytest.raises(InvalidArgument, match="nprobe"):
        shard.search(_vecs(1), 1, nprobe=0)
    shard.upsert(_docs(3), _vecs(3), embedding_model="m1")
    with pytest.raises(FailedPrecondition, match="mixing models"):
        shard.upsert(_docs(1, "z"), _vecs(1), embedding_model="m2")


def test_untrained_index_searches_exactly_then_trains():
    ix = VectorIndex(DIM, "IVF4,Flat", "ip", train_min=100)
    x = ix.prepare(_vecs(150))
    ix.add(np.arange(50), x[:50])
    assert not ix.trained
    _, ids = ix.search(x[:3], 1)
    assert ids[:, 0].tolist() == [0, 1, 2]
    ix.add(np.arange(50, 150), x[50:])
    assert ix.trained and ix.ntotal == 150
    _scores, ids = ix.search(x[:3], 1, nprobe=4)
    assert ids[:, 0].tolist() == [0, 1, 2]


def test_bad_factory_and_metric():
    with pytest.raises(InvalidArgument, match="index_factory"):
        VectorIndex(DIM, "NoSuchIndex42")
    with pytest.raises(InvalidArgument, match="metric"):
        VectorIndex(DIM, "Flat", "hamming")
