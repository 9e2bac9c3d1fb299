"""Re-indexing with another embedding model: build a second collection while the first serves, switch
atomically under load (no request fails, none mixes models), refuse collections whose shards hold another
model's vectors, and keep the active collection across router restarts."""

from __future__ import annotations

import json
import shutil
import threading
import time

import grpc
import pytest

from ragcluster.client import RouterClient
from ragcluster.corpus import make_queries, sample_corpus_path
from ragcluster.embedding_models import resolve_embedding_model
from ragcluster.tools.sources import read_jsonl
from ragcluster.types import SwitchResult
from router.config import RouterConfig
from tests.helpers import RouterInThread, shard_process


@pytest.fixture(scope="module")
def reindexed_model(tmp_path_factory):
    """A second embedding model under its own name (a stand-in for a fine-tuned retriever)."""
    _, path = resolve_embedding_model("all-MiniLM-L6-v2")
    target = tmp_path_factory.mktemp("models") / "minilm-reindexed"
    shutil.copytree(path, target)
    return str(target)


def test_reindex_then_switch_atomically(tmp_path, embedder, reindexed_model):
    procs = {name: shard_process(tmp_path, s, 0, data_tag=f"-{name}") for name, s in
             (("d0", 0), ("d1", 1), ("n0", 0), ("n1", 1))}
    for p in procs.values():
        p.wait_ready(120)
    state = tmp_path / "router-state.json"
    config = RouterConfig(
        port=0, metrics_port=-1, state_file=str(state),
        shard=[f"0={procs['d0'].grpc}", f"1={procs['d1'].grpc}"],
        collection_shard=[f"v2:0={procs['n0'].grpc}", f"v2:1={procs['n1'].grpc}",
                          f"bad:0={procs['d0'].grpc}", f"bad:1={procs['d1'].grpc}"],
        collection_model=[f"v2={reindexed_model}", f"bad={reindexed_model}"])
    router = RouterInThread(config, embedder)
    docs = [r.document for r in read_jsonl([str(sample_corpus_path())]) if r.document]
    try:
        with RouterClient(router.address) as client:
            assert client.ingest(docs).acknowledged == len(docs)
            assert client.search("honeybees", k=1).collection == "default"
            # an empty collection is not switched to by mistake (it would answer every search with nothing)
            with pytest.raises(grpc.RpcError) as err:
                client.switch("v2")
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "switch-min-documents" in (err.value.details() or "")
            assert client.switch("v2", force=True).active == "v2"  # unless forced
            assert client.switch("default").active == "default"
            # the new index is built while the old one serves
            assert client.ingest(docs, collection="v2").acknowledged == len(docs)
            status = client.status("v2")
            assert status.collection == "v2" and status.documents == len(docs)
            assert status.embedding_model == "minilm-reindexed"
            assert set(status.collections) == {"default", "v2", "bad"}
            # a collection whose shards hold another model's vectors can neither be written nor switched to
            with pytest.raises(grpc.RpcError) as err:
                client.ingest(docs[:2], collection="bad")
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "mixing models" in (err.value.details() or "")
            with pytest.raises(grpc.RpcError) as err:
                client.switch("bad")
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "mixing models" in (err.value.details() or "")
            with pytest.raises(grpc.RpcError) as err:
                client.switch("nope")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        seen: list[list[tuple[str, str]]] = [[], []]
        errors: list = []
        stop = threading.Event()

        def load(n: int) -> None:
            queries = make_queries(50, seed=n)
            with RouterClient(router.address) as c:
                for i in range(5000):  # bounded; stopped by the event
                    if stop.is_set():
                        return
                    try:
                        r = c.search(queries[i % 50], k=3, timeout=10)
                        seen[n].append((r.collection, r.embedding_model))
                    except grpc.RpcError as exc:
                        errors.append(exc)

        threads = [threading.Thread(target=load, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while min(len(s) for s in seen) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        with RouterClient(router.address) as client:
            switched = client.switch("v2")
        counts = [len(s) for s in seen]
        deadline = time.monotonic() + 60  # its own bound: the first phase may have used its time on a busy machine
        while min(len(s) - c for s, c in zip(seen, counts)) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join(30)
        assert switched == SwitchResult(previous="default", active="v2", documents=len(docs),
                                        embedding_model="minilm-reindexed")
        assert not errors
        allowed = {("default", "all-MiniLM-L6-v2"), ("v2", "minilm-reindexed")}
        for s in seen:
            assert set(s) <= allowed  # every response came from one whole index
            names = [c for c, _ in s]
            first_v2 = names.index("v2")
            assert set(names[:first_v2]) == {"default"} and set(names[first_v2:]) == {"v2"}  # a clean cut-over
        assert json.loads(state.read_text()) == {"active": "v2"}
    finally:
        router.stop()

    again = RouterInThread(config, embedder)  # a restarted router keeps serving the switched-to collection
    try:
        with RouterClient(again.address) as client:
            assert client.status().collection == "v2"
            assert client.search("honeybees", k=1).hits[0].id == "honeybees"
    finally:
        again.stop()
        for p in procs.values():
            p.terminate(30)
