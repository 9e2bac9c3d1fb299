"""Last writer wins, the same on every replica whatever the order writes arrive in (issue 16, item 11):
versioned upserts and deletes applied in two different orders leave identical stores; the hybrid clock
strictly increases and moves past versions it observes."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from ragcluster.documents import Document
from router.versions import HybridClock
from shard_server.config import ShardOptions
from shard_server.shard import Shard

DIM = 8


def test_versioned_writes_commute(tmp_path):
    rng = random.Random(3)
    ops: list[tuple[str, Any, int]] = []  # ("delete", id, version) or ("upsert", Document, version)
    for version in range(1, 301):
        doc_id = f"d{rng.randrange(20)}"
        if rng.random() < 0.25:
            ops.append(("delete", doc_id, version))
        else:
            ops.append(("upsert", Document(doc_id, f"text {version}"), version))
    vector = np.ones((1, DIM), np.float32)
    digests = []
    for n, order in enumerate((ops, rng.sample(ops, len(ops)))):
        shard = Shard(ShardOptions(str(tmp_path / f"s{n}"), dim=DIM))
        for kind, item, version in order:
            if kind == "delete":
                shard.delete([item], [version])
            else:
                shard.upsert([item], vector, versions=[version])
        digests.append(shard.digest())
        assert shard.info().documents == sum(1 for e in digests[-1] if not e[3])  # index matches the store
        shard.close(checkpoint=False)
    assert digests[0] == digests[1]
    final: dict[str, tuple] = {}
    for kind, item, version in ops:  # the highest version of each id decides
        final[item if kind == "delete" else item.id] = (kind, item, version)
    live = {e[0]: e[1] for e in digests[0] if not e[3]}
    assert set(live) == {i for i, (kind, _, _) in final.items() if kind == "upsert"}
    assert all(live[i] == final[i][2] for i in live)


def test_an_older_write_never_overwrites_or_resurrects(tmp_path):
    shard = Shard(ShardOptions(str(tmp_path), dim=DIM))
    v = np.ones((1, DIM), np.float32)
    shard.upsert([Document("a", "new")], v, versions=[10])
    shard.upsert([Document("a", "old")], v, versions=[5])
    assert shard.fetch(["a"])[0].text == "new"
    shard.delete(["a"], [20])
    shard.upsert([Document("a", "late repair of an old write")], v, versions=[15])
    assert shard.fetch(["a"]) == []
    shard.upsert([Document("a", "newest")], v, versions=[25])
    assert shard.fetch(["a"])[0].text == "newest"
    shard.close(checkpoint=False)


def test_hybrid_clock_increases_and_observes():
    now = [1000.0]
    clock = HybridClock(node=7, wall=lambda: now[0])
    seen = [clock.now() for _ in range(5000)]  # many in one millisecond: the counter carries them
    assert seen == sorted(set(seen))
    now[0] = 999.0  # the wall clock steps back
    assert clock.now() > seen[-1]
    other = HybridClock(node=9, wall=lambda: 2000.0).now()
    clock.observe(other)
    assert clock.now() > other
