"""python -m shard_server: serve one shard of the corpus over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ragcluster import tracing
from ragcluster.config import add_config_arguments, config_from_args
from ragcluster.log import setup_logging
from ragcluster.serving import GrpcServer, serve_until_signalled, service_spec
from ragcluster.v1 import shard_pb2, shard_pb2_grpc
from shard_server.config import ShardConfig


def build_server(config: ShardConfig) -> GrpcServer:
    from shard_server.maintenance import Maintenance, maintenance_executor
    from shard_server.service import ShardServicer
    from shard_server.shard import STORE_FILE, Shard
    from shard_server.snapshot import restore_from

    state: dict = {"lock": asyncio.Lock()}
    upkeep = maintenance_executor(config.maintenance_threads)  # checkpoints, rebuilds: never the search threads

    async def restore(source: str) -> None:
        """Replace this replica's data with a snapshot of ``source``; keep our own on failure."""
        async with state["lock"]:
            await server.set_serving(False)
            await state["maintenance"].stop()
            old = state.pop("shard")
            servicer.shard = None  # requests meanwhile: UNAVAILABLE "still loading"
            await asyncio.to_thread(old.close, False)
            try:
                await asyncio.to_thread(restore_from, source, Path(config.data_dir), 600.0, True)
            finally:
                await open_shard()
                await server.set_serving(True)

    servicer = ShardServicer(after_write=lambda: state["maintenance"].after_write(), restore=restore,
                             search_delay_seconds=config.search_delay_ms / 1000,
                             max_message_bytes=config.max_message_bytes, maintenance_executor=upkeep,
                             max_snapshots=config.max_concurrent_snapshots)

    async def load() -> None:
        if config.restore_from and not (Path(config.data_dir) / STORE_FILE).exists():
            await asyncio.to_thread(restore_from, config.restore_from, Path(config.data_dir))
        await open_shard()

    async def open_shard() -> None:
        shard = await asyncio.to_thread(
            Shard, config.data_dir, config.shard_id, config.dim, config.metric, config.index_factory,
            config.embedding_model, config.max_k, config.max_batch, config.max_upsert_batch, config.nprobe,
            config.ef_search, config.max_store_bytes, config.rebuild_tombstone_share,
            ef_construction=config.ef_construction, lexical_stemmer=config.lexical_stemmer,
            lexical_stopwords=config.lexical_stopwords, bm25_k1=config.bm25_k1, bm25_b=config.bm25_b,
        )
        state["shard"] = servicer.shard = shard
        state["maintenance"] = Maintenance(shard, config.checkpoint_interval_seconds, upkeep)
        state["maintenance"].start()

    async def close() -> None:
        if "maintenance" in state:
            await state["maintenance"].stop()
        if "shard" in state:
            await asyncio.to_thread(state["shard"].close)  # writes a final checkpoint: fast restarts
        upkeep.shutdown(wait=False)

    spec = service_spec(servicer, shard_pb2, "ShardService", shard_pb2_grpc)
    server = GrpcServer(config, [spec], load=load, close=close)
    return server


async def _serve(config) -> None:
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
