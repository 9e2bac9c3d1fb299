"""Shared fixtures: real servers on ephemeral ports, the real embedding model, real vLLM (CPU)."""

from __future__ import annotations

import os

import pytest

from ragcluster.corpus import make_documents

os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



@pytest.fixture(scope="session")
def embedder():
    from router.embedding import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """3 Flat shards, 1 tiny vLLM generator (default multiprocess engine), 1 router: separate processes."""
    from ragcluster.tools.cluster import ClusterSpec, LocalCluster

    spec = ClusterSpec(data_dir=str(tmp_path_factory.mktemp("cluster")), shards=3, generators=1, model="tiny",
                       port=0, kv_cache_bytes=64 * 1024 * 1024, insecure=True)
    c = LocalCluster(spec).start(timeout=600)
    yield c
    c.stop()


@pytest.fixture(scope="session")
def corpus():
    import json

    from ragcluster.corpus import sample_corpus_path
    from ragcluster.documents import Document

    with open(sample_corpus_path(), encoding="utf-8") as f:
        sample = [Document.from_json(json.loads(line)) for line in f]
    return sample + make_documents(400)


@pytest.fixture(scope="session")
def ingested(cluster, corpus):
    from ragcluster.client import RouterClient

    with RouterClient(cluster.router_address) as client:
        result = client.ingest(corpus, batch_size=64)
    assert result.acknowledged == len(corpus)
    return corpus
