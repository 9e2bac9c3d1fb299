"""A generator model's tokenizer, shared by the generator node (which serves it) and the router (which counts
prompt tokens with it instead of asking the node per request).

The node sends its tokenizer as the files ``save_pretrained`` writes (tokenizer.json, tokenizer_config.json,
the chat template); ``fingerprint`` (sha256 over names and contents) identifies it, so routers load one copy
per distinct tokenizer however many nodes serve it. transformers is imported lazily: only processes that
count tokens need it.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ragcluster.errors import InvalidArgument

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# sampling.stream_interval: tokens per streamed delta after the first, at most (checked by router and node)
MAX_STREAM_INTERVAL = 256

ROLES = ("system", "user", "assistant")


def fingerprint(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + len(files[name]).to_bytes(8, "big") + files[name])
    return digest.hexdigest()


def tokenizer_files(tokenizer: PreTrainedTokenizerBase) -> dict[str, bytes]:
    """The files that rebuild ``tokenizer`` (fast tokenizers: tokenizer.json, no legacy vocab files)."""
    with tempfile.TemporaryDirectory(prefix="ragcluster-tokenizer-") as tmp:
        tokenizer.save_pretrained(tmp, legacy_format=False if tokenizer.is_fast else None)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def load_tokenizer(files: dict[str, bytes]) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="ragcluster-tokenizer-") as tmp:
        for name, data in files.items():
            if "/" in name or "\\" in name or name in ("", ".", ".."):
                raise InvalidArgument(f"tokenizer file name {name!r}: must be a plain file name")
            (Path(tmp) / name).write_bytes(data)
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(tmp)
    return tokenizer


class TokenCounter:
    """Chat templating and token counting exactly as the generator node does them (one implementation)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, fingerprint: str = "") -> None:
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> TokenCounter:
        return cls(load_tokenizer(files), fingerprint(files))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The prompt text for chat messages: the model's chat template with the generation prompt, or plain
        ``role: content`` lines for a model without one."""
        if not messages:
            raise InvalidArgument("chat.messages: empty")
        for i, m in enumerate(messages):
            if m["role"] not in ROLES:
                raise InvalidArgument(f"chat.messages[{i}].role: must be system, user or assistant, got {m['role']!r}")
        if not self.has_chat_template:
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
        prompt: str = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return prompt

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

    def count(self, texts: list[str]) -> list[int]:
        return [len(self.encode(t)) for t in texts]
