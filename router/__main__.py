"""python -m router: the cluster's front door (search, ask, ingest, delete, status) over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from ragcluster import tracing
from ragcluster.config import add_config_arguments, config_from_args
from ragcluster.log import setup_logging
from ragcluster.security import Authorizer
from ragcluster.serving import GrpcServer, serve_until_signalled, service_spec
from ragcluster.v1 import router_pb2, router_pb2_grpc
from router.config import RouterConfig, parse_shards


def build_server(config: RouterConfig) -> GrpcServer:
    from ragcluster.documents import MAX_DOCUMENT_BYTES
    from router import metrics
    from router.collections import parse_collections, read_active
    from router.generate import GeneratorPool
    from router.prompt import PromptTemplate
    from router.replicas import ReplicaPolicy, replica_state
    from router.service import RouterServicer

    if config.max_k * MAX_DOCUMENT_BYTES + (1 << 20) > config.max_message_bytes:
        raise SystemExit(f"router: --max-k {config.max_k} hits of up to {MAX_DOCUMENT_BYTES} bytes each may not fit "
                         f"--max-message-bytes {config.max_message_bytes}; lower --max-k or raise the limit")
    shards = parse_shards(config.shard)
    if not shards:
        raise SystemExit("router: at least one --shard N=host:port is required")
    if not 1 <= config.anti_entropy_buckets <= 65536:
        raise SystemExit(f"router: --anti-entropy-buckets must be in 1..65536, got {config.anti_entropy_buckets}")
    policy = ReplicaPolicy(config.hedge_delay_ms, config.eject_after, config.eject_seconds, config.write_quorum,
                           config.anti_entropy_seconds, config.tombstone_grace_seconds, config.anti_entropy_buckets)
    security = config.client_tls()
    collections = parse_collections(config.collection, shards, config.embedding_model, config.collection_shard,
                                    config.collection_model, policy, security)
    groups = [g for col in collections.values() for g in col.groups]
    pool = GeneratorPool(config.generator, config.generator_eject_seconds, security,
                         local_tokenizer=config.generator_tokenizer)
    template = PromptTemplate(config.prompt_system, config.prompt_passage, config.prompt_user)
    template.check()
    servicer = RouterServicer(config, [], pool, template=template, collections=collections,
                              active=read_active(config.state_file, config.collection))

    def replica_counts() -> list[tuple[str, int, str, int]]:
        now = time.monotonic()
        counts = []
        for col in collections.values():
            for group in col.groups:
                states = [replica_state(r, now) for r in group.replicas]
                counts += [(col.name, group.shard, s, states.count(s))
                           for s in ("serving", "ejected", "catching_up", "not_serving")]
        return counts

    metrics.BACKEND_STATES.replicas = replica_counts
    metrics.BACKEND_STATES.nodes = pool.state_counts

    async def load() -> None:
        from router.embedding import Embedder, embedder_from_config

        await asyncio.gather(pool.start(refresh_seconds=config.dns_refresh_seconds),
                             *(g.start(config.dns_refresh_seconds) for g in groups))
        loaded: dict[str, Embedder] = {}  # one embedder per distinct model
        for col in collections.values():
            if col.embedder is None:
                if col.model_spec not in loaded:
                    loaded[col.model_spec] = await asyncio.to_thread(embedder_from_config, config, col.model_spec)
                servicer.set_collection_embedder(col, loaded[col.model_spec])

    async def close() -> None:
        await servicer.close()
        for group in groups:
            await group.close()
        await pool.close()

    spec = service_spec(servicer, router_pb2, "RouterService", router_pb2_grpc)
    return GrpcServer(config, [spec], load=load, close=close, authorize=router_authorizer(config),
                      require_client_auth=False,  # clients present API keys, not certificates
                      shed=servicer.overloaded)  # refusals beyond --max-in-flight before any per-request work


# Role each RPC needs (read < write < admin); an RPC missing here needs admin.
METHOD_ROLES = {"Search": "read", "Ask": "read", "Lookup": "read", "ClusterStatus": "read",
                "Ingest": "write", "Delete": "write", "SwitchCollection": "admin"}


def router_authorizer(config: RouterConfig) -> Authorizer | None:
    from ragcluster.security import TokenPolicy, TokenStore, combine, is_loopback

    if config.insecure or not config.auth_tokens:
        if not config.insecure and not is_loopback(config.host):
            raise SystemExit(f"refusing to serve {config.host} without API keys: give --auth-tokens FILE, or "
                             f"--insecure to run without authentication on purpose")
        return None
    return combine(tokens=TokenPolicy(TokenStore(config.auth_tokens), METHOD_ROLES))


async def _serve(config: RouterConfig) -> None:
    # build inside the running loop: grpc.aio channels bind to the loop they are created in
    await serve_until_signalled(build_server(config))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router", description=__doc__)
    add_config_arguments(parser, RouterConfig)
    config = config_from_args(RouterConfig, parser.parse_args(argv))
    setup_logging(config.log_level, config.log_json, name="router")
    # idle OpenMP threads (torch embedding) sleep instead of spinning on cores other processes need; read
    # when torch is first imported, which happens in load()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    tracing.setup("ragcluster-router")  # only when the OTEL_* environment asks for it
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
