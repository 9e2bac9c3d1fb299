"""The bundled sample corpus (project docs plus short articles) and a synthetic corpus generator."""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

from ragcluster.documents import Document


def sample_corpus_path() -> Path:
    """Path of the bundled JSONL corpus: ``{"id", "title", "text", "metadata": {"topic", "words"}}`` lines."""
    return Path(str(resources.files("ragcluster") / "data" / "sample_corpus.jsonl"))


# --- synthetic corpus for tests and benchmarks -------------------------------------------------------
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


def make_documents(n: int, seed: int = 0, prefix: str = "syn") -> list[Document]:
    """Deterministic synthetic documents with varied wording and metadata."""
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
