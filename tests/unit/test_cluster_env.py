"""Thread placement of a local cluster (ragcluster up): the router embeds on every core with sleeping idle
threads (no single-thread pin beside vLLM engines), shards split the cores between them."""

from __future__ import annotations

import pytest

from ragcluster.tools import cluster


@pytest.mark.parametrize("cores,shards,threads", [(2, 4, "1"), (16, 4, "4"), (8, 3, "2"), (1, 1, "1")])
def test_shards_split_the_cores(monkeypatch, cores, shards, threads):
    monkeypatch.setattr(cluster, "cores", lambda: cores)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = cluster.shard_env(shards)
    assert env["OMP_NUM_THREADS"] == threads and env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_router_threads_sleep_when_idle_and_are_not_pinned(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = cluster.router_env()
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "OMP_NUM_THREADS" not in env


def test_generator_engine_threads_sleep_when_idle(monkeypatch):
    """Spinning vLLM CPU threads starved the router beside them: a cancel reached it only after the
    generation had run to its end."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cluster.generator_env()["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cluster.generator_env()["OMP_WAIT_POLICY"] == "ACTIVE"


def test_an_operators_environment_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cluster.shard_env(4)["OMP_NUM_THREADS"] == "7"
    assert cluster.router_env()["OMP_WAIT_POLICY"] == "ACTIVE"


def test_router_gets_no_embedding_thread_pin_beside_generators(tmp_path, monkeypatch):
    spawned: list[tuple[str, list[str], dict | None]] = []

    class Started(Exception):
        pass

    def spawn(self, member, module, args, env=None):
        spawned.append((module, args, env))
        if module == "router":
            raise Started
        return object()

    monkeypatch.setattr(cluster.LocalCluster, "_spawn", spawn)
    monkeypatch.setattr(cluster.LocalCluster, "_wait_ready", lambda self, procs, timeout, progress=None: None)
    monkeypatch.setattr(cluster.LocalCluster, "stop", lambda self, timeout=30.0: None)
    spec = cluster.ClusterSpec(data_dir=str(tmp_path), shards=2, generators=1, insecure=True, port=0)
    with pytest.raises(Started):
        cluster.LocalCluster(spec).start()
    router_args, router_env = next((a, e) for m, a, e in spawned if m == "router")
    assert "--embedding-threads" not in router_args
    assert router_env is not None and router_env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert all(e is not None and "OMP_NUM_THREADS" in e for m, a, e in spawned if m == "shard_server")
