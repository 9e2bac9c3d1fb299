"""python -m shard_server: serve one shard of the corpus over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ragcluster import tracing
from ragcluster.config import add_config_arguments, config_from_args
from ragcluster.log import setup_logging
from ragcluster.serving import GrpcServer, serve_until_signalled, service_spec
from ragcluster.v1 import shard_pb2, shard_pb2_grpc
from shard_server.config import ShardConfig

if TYPE_CHECKING:
    from shard_server.maintenance import Maintenance
    from shard_server.shard import Shard


class ShardNode:
    """One shard server's state: its open shard and upkeep, the servicer and the server, and the steps
    that change them (load, restore from another replica, close), serialised by one lock."""

    def __init__(self, config: ShardConfig) -> None:
        from shard_server.maintenance import maintenance_executor
        from shard_server.service import ShardServicer

        self.config = config
        self.data_dir = Path(config.data_dir)
        self.shard: Shard | None = None
        self.maintenance: Maintenance | None = None
        self._lock = asyncio.Lock()
        # checkpoints, rebuilds: never the search threads
        self.upkeep = maintenance_executor(config.maintenance_threads)
        self.servicer = ShardServicer(after_write=self._after_write, restore=self.restore,
                                      search_delay_seconds=config.search_delay_ms / 1000,
                                      max_message_bytes=config.max_message_bytes, maintenance_executor=self.upkeep,
                                      max_snapshots=config.max_concurrent_snapshots)
        spec = service_spec(self.servicer, shard_pb2, "ShardService", shard_pb2_grpc)
        self.server = GrpcServer(config, [spec], load=self.load, close=self.close)

    def _after_write(self) -> None:
        if self.maintenance is not None:
            self.maintenance.after_write()

    async def load(self) -> None:
        from shard_server.shard import STORE_FILE
        from shard_server.snapshot import restore_from

        if self.config.restore_from and not (self.data_dir / STORE_FILE).exists():
            await asyncio.to_thread(restore_from, self.config.restore_from, self.data_dir)
        await self._open_shard()

    async def _open_shard(self) -> None:
        from shard_server.maintenance import Maintenance
        from shard_server.shard import Shard

        config = self.config
        shard = await asyncio.to_thread(
            Shard, self.data_dir, config.shard_id, config.dim, config.metric, config.index_factory,
            config.embedding_model, config.max_k, config.max_batch, config.max_upsert_batch, config.nprobe,
            config.ef_search, config.max_store_bytes, config.rebuild_tombstone_share,
            ef_construction=config.ef_construction, lexical_stemmer=config.lexical_stemmer,
            lexical_stopwords=config.lexical_stopwords, bm25_k1=config.bm25_k1, bm25_b=config.bm25_b,
        )
        self.shard = self.servicer.shard = shard
        self.maintenance = Maintenance(shard, config.checkpoint_interval_seconds, self.upkeep)
        self.maintenance.start()

    async def restore(self, source: str) -> None:
        """Replace this replica's data with a snapshot of ``source``; keep our own on failure."""
        from shard_server.snapshot import restore_from

        async with self._lock:
            await self.server.set_serving(False)
            if self.maintenance is not None:
                await self.maintenance.stop()
            old, self.shard = self.shard, None
            self.servicer.shard = None  # requests meanwhile: UNAVAILABLE "still loading"
            if old is not None:
                await asyncio.to_thread(old.close, False)
            try:
                await asyncio.to_thread(restore_from, source, self.data_dir, 600.0, True)
            finally:
                await self._open_shard()
                await self.server.set_serving(True)

    async def close(self) -> None:
        if self.maintenance is not None:
            await self.maintenance.stop()
        if self.shard is not None:
            await asyncio.to_thread(self.shard.close)  # writes a final checkpoint: fast restarts
        self.upkeep.shutdown(wait=False)


def build_server(config: ShardConfig) -> GrpcServer:
    return ShardNode(config).server


async def _serve(config: ShardConfig) -> None:
    # build inside the running loop: grpc.aio channels bind to the loop they are created in
    await serve_until_signalled(build_server(config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shard_server", description=__doc__)
    add_config_arguments(parser, ShardConfig)
    config = config_from_args(ShardConfig, parser.parse_args(argv))
    setup_logging(config.log_level, config.log_json, name=f"shard-{config.shard_id}")
    tracing.setup("ragcluster-shard")  # only when the OTEL_* environment asks for it
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
