"""python -m shard_server: serve one shard of the corpus over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ragcluster import tracing
from ragcluster.config import add_config_arguments, config_from_args
from ragcluster.errors import FailedPrecondition, Unavailable
from ragcluster.log import setup_logging
from ragcluster.security import identity
from ragcluster.serving import GrpcServer, peer_authorizer, serve_until_signalled, service_spec
from ragcluster.v1 import shard_pb2, shard_pb2_grpc
from shard_server.config import ShardConfig
from shard_server.restore import RestorePeers

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from shard_server.maintenance import Maintenance
    from shard_server.shard import Shard


class ShardNode:
    """One shard server's state: its open shard and upkeep, the servicer and the server, and the steps
    that change them (load, restore from another replica, close), serialised by one lock."""

    def __init__(self, config: ShardConfig) -> None:
        from ragcluster.workers import default_threads, fixed_pool
        from shard_server.maintenance import maintenance_executor
        from shard_server.service import ShardServicer

        self.config = config
        self.data_dir = Path(config.data_dir)
        self.shard: Shard | None = None
        self.maintenance: Maintenance | None = None
        self._lock = asyncio.Lock()
        # checkpoints, rebuilds: never the search threads
        self.upkeep = maintenance_executor(config.maintenance_threads)
        # everything else that blocks (searches, writes, reads, opening and closing the store): a fixed set of
        # threads from the start, so their number, stacks and SQLite readers do not creep up under load
        self.workers = fixed_pool(config.worker_threads or default_threads(), "shard-worker")
        self.servicer = ShardServicer(after_write=self._after_write, restore=self.restore,
                                      search_delay_seconds=config.search_delay_ms / 1000,
                                      max_message_bytes=config.max_message_bytes, maintenance_executor=self.upkeep,
                                      max_snapshots=config.max_concurrent_snapshots,
                                      workers=self.workers)
        spec = service_spec(self.servicer, shard_pb2, "ShardService", shard_pb2_grpc)
        replicas = config.tls_peer_identity or identity("shard", config.shard_id)
        authorize = peer_authorizer(config, {"Snapshot": [*config.tls_allowed_callers, replicas]})
        self.server = GrpcServer(config, [spec], load=self.load, close=self.close, authorize=authorize)
        self.peers = RestorePeers(config.restore_peers, config.restore_peers_file,
                                  open_when_empty=not config.tls_files().enabled)

    def _after_write(self) -> None:
        if self.maintenance is not None:
            self.maintenance.after_write()

    async def load(self) -> None:
        from ragcluster.fsutil import replace_durably
        from shard_server.restore import Expected, download, metric_pb
        from shard_server.shard import STORE_FILE

        config = self.config
        if config.restore_from and not (self.data_dir / STORE_FILE).exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            want = Expected(config.shard_id, config.dim, metric_pb(config.metric), config.embedding_model)
            copy = await download(config.restore_from, self.data_dir, want, config.client_tls(), 600.0)
            await self.servicer.run_in_worker(replace_durably, copy.path, self.data_dir / STORE_FILE)
        await self._open_shard()

    async def _open_shard(self) -> None:
        from shard_server.maintenance import Maintenance
        from shard_server.shard import Shard

        config = self.config
        shard = await self.servicer.run_in_worker(Shard, config)
        self.shard = self.servicer.shard = shard
        self.maintenance = Maintenance(shard, config.checkpoint_interval_seconds, self.upkeep)
        self.maintenance.start()

    async def restore(self, source: str, timeout: float = 600.0) -> None:
        """Replace this replica's data with a verified snapshot of ``source``, or leave it exactly as it was.

        The copy is made and checked while the shard keeps serving; only a verified copy is swapped in, and
        once the swap has begun it completes (all or nothing) even if the caller cancels."""
        from shard_server.restore import Expected, download, metric_pb

        self.peers.check(source)
        async with self._lock:
            shard = self.shard
            if shard is None:
                raise Unavailable("shard is still loading its index")
            want = Expected(self.config.shard_id, shard.dim, metric_pb(shard.metric), shard.embedding_model)
            copy = await download(source, self.data_dir, want, self.config.client_tls(), timeout)
            swap = asyncio.create_task(self._swap_to(copy.path))
            try:
                await asyncio.shield(swap)
            except asyncio.CancelledError:
                await swap  # finish the swap before the lock is released, then report the cancellation
                raise

    async def _swap_to(self, new_store: Path) -> None:
        from shard_server.restore import discard, roll_back, swap_in

        await self.server.set_serving(False)
        try:
            if self.maintenance is not None:
                await self.maintenance.stop()
            old_shard, self.shard = self.shard, None
            self.servicer.shard = None  # requests meanwhile: UNAVAILABLE "still loading"
            if old_shard is not None:
                await self.servicer.run_in_worker(old_shard.close, False)
            old = await self.servicer.run_in_worker(swap_in, self.data_dir, new_store)
            try:
                await self._open_shard()
            except Exception:
                logger.exception("the restored store did not open; putting the previous data back")
                await self.servicer.run_in_worker(roll_back, self.data_dir, old)
                await self._open_shard()
                raise FailedPrecondition("restore: the copied store did not open; the shard is unchanged") from None
            await self.servicer.run_in_worker(discard, old)
        finally:
            new_store.unlink(missing_ok=True)
            if self.shard is None:
                await self._open_shard()
            await self.server.set_serving(True)

    async def close(self) -> None:
        if self.maintenance is not None:
            await self.maintenance.stop()
        if self.shard is not None:
            await self.servicer.run_in_worker(self.shard.close)  # writes a final checkpoint: fast restarts
        self.upkeep.shutdown(wait=False)
        self.workers.shutdown(wait=False)


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
    from ragcluster.workers import limit_malloc_arenas

    limit_malloc_arenas(config.malloc_arena_max)  # before the server's threads start
    tracing.setup("ragcluster-shard")  # only when the OTEL_* environment asks for it
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
