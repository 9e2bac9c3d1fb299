"""A checkpoint taken while a background rebuild runs must not prune the removal records the rebuild
replays at its end: otherwise ids deleted or replaced meanwhile come back ("ghost" hits) once the rebuilt
index is swapped in (issue 16, item 3). No deleted id may ever be returned."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ragcluster.documents import Document
from shard_server.config import ShardOptions
from shard_server.shard import Shard

DIM = 16


def vectors(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16"])
def test_checkpoint_during_rebuild_leaves_no_ghosts(tmp_path, factory):
    shard = Shard(ShardOptions(str(tmp_path), dim=DIM, index_factory=factory))
    x = vectors(300, 1)
    shard.upsert([Document(f"d{i}", f"text {i}") for i in range(300)], x)
    snapshot_taken, go_on = threading.Event(), threading.Event()
    real_iter = shard.store.iter_vectors

    def paused_iter(conn=None, since_sequence=0, batch=10_000):
        if conn is not None and not snapshot_taken.is_set():  # the rebuild's read of its snapshot
            snapshot_taken.set()
            assert go_on.wait(60)
        yield from real_iter(conn, since_sequence, batch)

    shard.store.iter_vectors = paused_iter  # type: ignore[method-assign]  # pause the rebuild in its read
    rebuild = threading.Thread(target=shard.rebuild)
    rebuild.start()
    assert snapshot_taken.wait(60)
    # while the rebuild holds its snapshot: delete some ids, replace others, checkpoint
    deleted = [f"d{i}" for i in range(0, 300, 3)]
    shard.delete(deleted)
    shard.upsert([Document(f"d{i}", f"new text {i}") for i in range(1, 300, 3)], vectors(100, 2))
    assert shard.checkpoint()
    go_on.set()
    rebuild.join(60)
    assert not rebuild.is_alive()

    live = set(shard.store.get_by_ids([f"d{i}" for i in range(300)]))
    assert live == {f"d{i}" for i in range(300)} - set(deleted)
    live_iids = {int(i) for i in shard.store.get_by_iids(range(0, 10_000))}
    result = shard.search(np.concatenate([x, vectors(50, 3)]), 20, include_documents=True)
    returned = {int(i) for row in result.ids for i in row}
    assert returned <= live_iids, f"ghosts: {sorted(returned - live_iids)[:10]}"
    assert shard.index.ntotal == len(live)  # live vectors (tombstones excluded)
    shard.close()
