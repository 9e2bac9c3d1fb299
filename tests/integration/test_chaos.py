"""The chaos run's short form (issue 16): 3 routers with skewed clocks, 2 shards x 3 replicas, mixed load,
kill -9 / SIGSTOP / restarts and a partition, tombstones pruned; then the checker reads every replica directly:
nothing acknowledged is lost, no deleted document is returned, replicas are identical. The full form is
`make chaos` (10 minutes)."""

from __future__ import annotations

import copy

from tests.chaos.run_chaos import Chaos


def test_chaos_short_form(tmp_path, embedder):
    # each router with its own clock, one 200 ms ahead and one 200 ms behind: still one winner per document
    chaos = Chaos(tmp_path, seconds=30.0, seed=16, embedder=embedder, clock_skew_ms=200.0)
    result = chaos.run_all()
    print(result)
    assert result["lost"] == 0, result["lost_ids"]
    assert result["ghost_hits"] == 0
    assert result["replicas_identical"]
    assert not result["unexpected_exits"], result["unexpected_exits"]  # no replica died unless killed
    assert result["faults"]["kill9"] + result["faults"]["sigstop"] >= 3 and result["faults"]["partition"] == 1
    assert result["acknowledged_writes_checked"] > 100

    # the checker can fail: drop one acknowledged document from the replicas' final state
    doctored = copy.deepcopy(chaos.finals)
    acked = {i for op in chaos.history if op.ok and op.kind == "upsert" for i in op.ids}
    shard, victim = next((s, i) for s, d in doctored.items() for i, e in d.items() if i in acked and not e[2]
                         and i.startswith("u"))
    del doctored[shard][victim]
    assert chaos.check(doctored)["lost"] == 1
