"""Collections: a set of shard groups plus the embedding model its index was built with.

The router serves several (e.g. ``default`` and ``v2``, re-indexed with a fine-tuned model); one is
active. Every request resolves its collection once, at its start, and uses that collection's shards and
embedder to the end, so a switch never gives a request a mix of two models' vectors.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ragcluster.errors import InvalidArgument
from ragcluster.fsutil import atomic_write
from ragcluster.security import ClientTls
from router.batching import MicroBatcher
from router.embedding import Embedder
from router.replicas import ReplicaPolicy, ShardGroup


@dataclass
class Collection:
    name: str
    groups: list[ShardGroup]
    model_spec: str  # what the embedder is loaded from (name or folder)
    embedder: Embedder | None = None
    batcher: MicroBatcher | None = field(default=None, repr=False)

    def set_embedder(self, embedder: Embedder, max_batch: int, max_wait_us: int, executor: ThreadPoolExecutor,
                     bulk_chunk: int = 16) -> None:
        self.embedder = embedder
        self.batcher = MicroBatcher(embedder.encode, max_batch, max_wait_us, executor, max(1, bulk_chunk),
                                    embedder.encode_parts, embedder.encode_one, embedder.passes,
                                    embedder.pass_pool)

    @property
    def model_name(self) -> str:
        return self.embedder.name if self.embedder is not None else ""


def parse_collections(primary: str, shards: dict[int, list[str]], model: str, extra_shards: list[str],
                      extra_models: list[str], policy: ReplicaPolicy,
                      security: ClientTls | None = None) -> dict[str, Collection]:
    """``--collection-shard NAME:N=addr,...`` and ``--collection-model NAME=MODEL`` -> collections."""
    from router.config import parse_shards

    specs: dict[str, list[str]] = {}
    for item in extra_shards:
        name, sep, rest = item.partition(":")
        if not sep or not name or not rest:
            raise InvalidArgument(f"collection_shard: {item!r} is not NAME:N=host:port[,host:port...]")
        specs.setdefault(name, []).append(rest)
    models: dict[str, str] = {}
    for item in extra_models:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise InvalidArgument(f"collection_model: {item!r} is not NAME=MODEL")
        models[name] = spec
    if primary in specs:
        raise InvalidArgument(f"collection_shard: {primary!r} is the primary collection; use --shard for it")
    unknown = set(models) - set(specs) - {primary}
    if unknown:
        raise InvalidArgument(f"collection_model: no shards configured for {sorted(unknown)}")
    collections = {primary: Collection(primary, [ShardGroup(n, shards[n], policy, security=security)
                                                 for n in sorted(shards)], models.get(primary, model))}
    for name, items in specs.items():
        layout = parse_shards(items)
        collections[name] = Collection(name, [ShardGroup(n, layout[n], policy, security=security)
                                              for n in sorted(layout)], models.get(name, model))
    return collections


def read_active(state_file: str, default: str) -> str:
    if state_file and Path(state_file).is_file():
        return json.loads(Path(state_file).read_text()).get("active", default)
    return default


def write_active(state_file: str, active: str) -> None:
    """Persist the active collection (atomically) so a restarted router keeps serving it."""
    if not state_file:
        return
    path = Path(state_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"active": active}))
