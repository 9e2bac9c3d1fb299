"""Shared fixtures: real servers on ephemeral ports, the real embedding model, real vLLM (CPU)."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_SUBJECTS = ["the river", "a glacier", "the old library", "a migrating flock", "the harbour crane", "a coral colony",
             "the night train", "a solar panel", "the mountain village", "an orchard", "the city council",
             "a research vessel", "the desert wind", "a bakery", "the radio telescope", "a beekeeper"]
_VERBS = ["slowly reshapes", "quietly protects", "measures", "feeds", "illuminates", "connects", "erodes",
          "shelters", "powers", "records", "cools", "surveys"]
_OBJECTS = ["the valley floor", "ancient manuscripts", "distant galaxies", "fresh bread", "the coastline",
            "winter crops", "underground water", "the town square", "rare orchids", "cargo ships",
            "the morning fog", "migratory birds", "copper wires", "salt marshes"]
_EXTRAS = ["during the monsoon", "every spring", "after the storm", "since the nineteenth century",
           "under strict rules", "with little help", "at high altitude", "despite the drought", "by moonlight"]


def make_documents(n: int, seed: int = 0, prefix: str = "syn"):
    """Deterministic synthetic documents with varied wording and metadata."""
    from ragcluster.documents import Document

    rng = random.Random(seed)
    docs = []
    for i in range(n):
        sentences = [
            f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_EXTRAS)}."
            for _ in range(rng.randint(1, 3))
        ]
        docs.append(Document(f"{prefix}-{i}", " ".join(sentences), title=f"Note {i}",
                             metadata={"n": i, "group": "even" if i % 2 == 0 else "odd"}))
    return docs


def make_queries(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}" for _ in range(n)]


@pytest.fixture(scope="session")
def embedder():
    from ragcluster.embedding import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """3 Flat shards, 1 tiny vLLM generator (default multiprocess engine), 1 router: separate processes."""
    from ragcluster.cluster import ClusterSpec, LocalCluster

    spec = ClusterSpec(data_dir=str(tmp_path_factory.mktemp("cluster")), shards=3, generators=1, model="tiny",
                       port=0, kv_cache_bytes=64 * 1024 * 1024)
    c = LocalCluster(spec).start(timeout=600)
    yield c
    c.stop()


@pytest.fixture(scope="session")
def corpus():
    from ragcluster.corpus import sample_corpus_path
    from ragcluster.documents import Document
    import json

    sample = [Document.from_json(json.loads(line)) for line in open(sample_corpus_path(), encoding="utf-8")]
    return sample + make_documents(400)


@pytest.fixture(scope="session")
def ingested(cluster, corpus):
    from ragcluster.client import RouterClient

    with RouterClient(cluster.router_address) as client:
        result = client.ingest(corpus, batch_size=64)
    assert result.acknowledged == len(corpus)
    return corpus
