"""The sample corpus shipped with ragcluster (project docs plus short articles), for the demo and tests."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def sample_corpus_path() -> Path:
    """Path of the bundled JSONL corpus: ``{"id", "title", "text", "metadata": {"topic", "words"}}`` lines."""
    return Path(str(resources.files("ragcluster") / "data" / "sample_corpus.jsonl"))
