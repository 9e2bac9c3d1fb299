"""The router's generator pool against real vLLM nodes (tiny model, separate processes): a node that is
not SERVING gets no traffic, load spreads, a killed node is routed around and probed back, and a node
whose engine dies goes NOT_SERVING and exits instead of hanging callers."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import grpc
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ragcluster.config import ServerConfig
from ragcluster.convert import document_to_pb
from ragcluster.corpus import make_documents
from ragcluster.serving import GrpcServer, service_spec
from ragcluster.tools.cluster import ServerProcess, generator_env, wait_all_ready
from ragcluster.v1 import common_pb2, generator_pb2, generator_pb2_grpc, router_pb2, router_pb2_grpc
from router.__main__ import build_server as build_router
from router.config import RouterConfig
from router.service import RouterServicer
from shard_server.__main__ import build_server as build_shard
from shard_server.config import ShardConfig

pytestmark = pytest.mark.vllm

NODE_ARGS = ["--model", "tiny", "--enforce-eager", "--kv-cache-memory-bytes", str(64 << 20), "--max-model-len", "1024",
             "--engine-check-seconds", "0.2"]


def start_node(run_dir, name, port=0) -> ServerProcess:
    return ServerProcess("generator_node", ["--port", str(port), *NODE_ARGS], run_dir, name, env=generator_env())


def metric(node: ServerProcess, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://{node.metrics}/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def generate_calls(node: ServerProcess, method: str = "Generate") -> float:
    return metric(node, "ragcluster_grpc_server_handled_total", method=method, code="OK")


async def generates_settled(nodes: list[ServerProcess]) -> None:
    """Wait (bounded) until no Generate RPC is open on any node: a stream's status is counted when its
    handler returns, which can come after the caller has its last event."""
    deadline = time.monotonic() + 30
    while sum(metric(n, "ragcluster_grpc_server_in_flight", method="Generate") for n in nodes):
        assert time.monotonic() < deadline, "a Generate stream stayed open for 30 s"
        await asyncio.sleep(0.05)


class CountingServicer(generator_pb2_grpc.GeneratorServiceServicer):
    """Stands in for a node whose engine is still loading: a real server, NOT_SERVING; counts calls."""

    def __init__(self):
        self.calls = 0

    async def Generate(self, request, context):
        self.calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "loading")
        yield  # pragma: no cover

    async def Info(self, request, context):
        self.calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "loading")

    async def CountTokens(self, request, context):
        self.calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "loading")

    async def Tokenizer(self, request, context):
        self.calls += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "loading")


@pytest.fixture(scope="module")
async def pool_cluster(tmp_path_factory, embedder):
    run = tmp_path_factory.mktemp("pool")
    nodes = [start_node(run, "g1"), start_node(run, "g2")]
    shard = build_shard(ShardConfig(port=0, metrics_port=-1, data_dir=str(run / "shard")))
    await shard.start()
    loading_release = asyncio.Event()
    counting = CountingServicer()
    loading = GrpcServer(ServerConfig(port=0, metrics_port=-1),
                         [service_spec(counting, generator_pb2, "GeneratorService", generator_pb2_grpc)],
                         load=loading_release.wait)
    loading_task = asyncio.create_task(loading.start())
    await asyncio.to_thread(wait_all_ready, nodes, 300)
    deadline = time.monotonic() + 30
    while not loading.port:  # the loading server binds before it starts loading
        assert time.monotonic() < deadline, "loading server never bound its port"
        await asyncio.sleep(0.01)
    router = build_router(RouterConfig(port=0, metrics_port=-1, shard=[f"0={shard.address}"],
                                       generator=[f"127.0.0.1:{loading.port}", nodes[0].grpc, nodes[1].grpc],
                                       generator_eject_seconds=2.0, default_max_tokens=8))
    router.servicer(RouterServicer).embedder = embedder
    await router.start()
    channel = grpc.aio.insecure_channel(router.address)
    stub = router_pb2_grpc.RouterServiceStub(channel)
    docs = make_documents(20, seed=21, prefix="p")
    [a async for a in stub.Ingest(iter([router_pb2.IngestRequest(documents=[document_to_pb(d) for d in docs])]))]
    yield stub, nodes, counting, run
    await channel.close()
    await router.stop(grace=1)
    loading_release.set()
    await loading_task
    await loading.stop(grace=0)
    await shard.stop(grace=1)
    for node in nodes:
        node.terminate(30)


async def ask(stub, question="what does the river feed?", timeout=60):
    events = [e async for e in stub.Ask(router_pb2.AskRequest(question=question, k=3), timeout=timeout)]
    assert events[-1].WhichOneof("event") == "complete"
    return events[-1].complete


async def test_unready_node_gets_no_traffic_and_load_spreads(pool_cluster):
    stub, nodes, counting, _ = pool_cluster
    before = [generate_calls(n) for n in nodes]
    done = await asyncio.gather(*(ask(stub) for _ in range(6)))
    assert all(d.completion_tokens > 0 for d in done)
    assert counting.calls == 0  # the NOT_SERVING node was never called
    after = [generate_calls(n) for n in nodes]
    assert sum(after) - sum(before) == 6
    assert all(a > b for a, b in zip(after, before))  # least-outstanding routing used both nodes
    assert {d.generator for d in done} == {nodes[0].grpc, nodes[1].grpc}


async def test_prompt_tokens_are_counted_in_the_router_with_the_tokenizer_fetched_once(pool_cluster):
    """No CountTokens round trip per Ask: the router fetched the nodes' (identical) tokenizer once."""
    stub, nodes, _, _ = pool_cluster
    deadline = time.monotonic() + 60
    while True:  # bounded: the router loads the tokenizer in the background once a node is SERVING
        before = [generate_calls(n, "CountTokens") for n in nodes]
        await ask(stub)
        if [generate_calls(n, "CountTokens") for n in nodes] == before:
            break
        assert time.monotonic() < deadline, "the router still counts tokens by RPC"
    generated = sum(generate_calls(n) for n in nodes)
    done = await asyncio.gather(*(ask(stub) for _ in range(4)))
    assert all(d.completion_tokens > 0 and d.prompt_tokens > 0 for d in done)
    assert [generate_calls(n, "CountTokens") for n in nodes] == before
    assert sum(generate_calls(n) for n in nodes) == generated + 4
    assert sum(generate_calls(n, "Tokenizer") for n in nodes) == 1  # one fetch for both nodes (one fingerprint)


async def test_prompt_is_trimmed_to_fit_the_context(pool_cluster, embedder):
    stub, nodes, _, _ = pool_cluster
    sampling = common_pb2.SamplingParams(max_tokens=850, temperature=0.0)
    request = router_pb2.AskRequest(question="what does the river feed?", k=5, sampling=sampling)
    counted = [generate_calls(n, "CountTokens") for n in nodes]
    events = [e async for e in stub.Ask(request, timeout=180)]
    assert [generate_calls(n, "CountTokens") for n in nodes] == counted  # trimmed with the local tokenizer
    hits = [h.document.id for h in events[0].hits.hits]
    done = events[-1].complete
    assert len(hits) == 5
    assert 0 < len(done.citations) < 5  # only what fits in 1024 - 850 tokens
    # in score order; a passage too long to fit is skipped and a shorter, lower-ranked one still tried
    assert list(done.citations) == [h for h in hits if h in set(done.citations)]
    assert done.citations[0] == hits[0] or len(done.citations) < 5
    assert done.prompt_tokens + 850 <= 1024
    # a router counting by RPC (--no-generator-tokenizer: older nodes) trims to the same passages
    status = await stub.ClusterStatus(router_pb2.ClusterStatusRequest(), timeout=30)
    shard_address = status.shards[0].replicas[0].address
    by_rpc = build_router(RouterConfig(port=0, metrics_port=-1, shard=[f"0={shard_address}"],
                                       generator=[n.grpc for n in nodes], generator_tokenizer=False))
    by_rpc.servicer(RouterServicer).embedder = embedder
    await by_rpc.start()
    try:
        async with grpc.aio.insecure_channel(by_rpc.address) as channel:
            events = [e async for e in router_pb2_grpc.RouterServiceStub(channel).Ask(request, timeout=120)]
    finally:
        await by_rpc.stop(grace=1)
    assert [generate_calls(n, "CountTokens") for n in nodes] > counted
    assert list(events[-1].complete.citations) == list(done.citations)
    assert events[-1].complete.prompt_tokens == done.prompt_tokens


@pytest.mark.parametrize("deltas_before_cancel", [0, 3])
async def test_cancelled_ask_aborts_the_generation_in_the_engine(pool_cluster, deltas_before_cancel):
    """Cancelled mid-stream, or right after the hits (the generation already started meanwhile): nothing is
    left running in the engines."""
    stub, nodes, _, _ = pool_cluster
    await generates_settled(nodes)  # an earlier test's stream may still be closing on a node
    aborted = sum(metric(n, "ragcluster_generator_aborted_requests_total") for n in nodes)
    generated = sum(generate_calls(n) for n in nodes)
    sampling = common_pb2.SamplingParams(max_tokens=800, temperature=0.0)
    call = stub.Ask(router_pb2.AskRequest(question="what does the river feed?", k=3, sampling=sampling), timeout=60)
    deltas = 0
    async for event in call:
        deltas += event.WhichOneof("event") == "delta"
        if deltas == deltas_before_cancel:
            break
    call.cancel()
    assert deltas == deltas_before_cancel
    deadline = time.monotonic() + 30
    while True:  # bounded: the cancellation travels client -> router -> node -> engine
        active = sum(metric(n, "ragcluster_generator_active_requests") for n in nodes)
        now_aborted = sum(metric(n, "ragcluster_generator_aborted_requests_total") for n in nodes)
        if not active and (now_aborted > aborted or not deltas_before_cancel):
            break
        assert time.monotonic() < deadline, f"generation not aborted ({active} requests still in the engines)"
        await asyncio.sleep(0.05)
    await generates_settled(nodes)
    assert sum(generate_calls(n) for n in nodes) == generated  # none ran to completion


async def test_killed_node_is_routed_around_then_probed_back(pool_cluster):
    stub, nodes, _, run = pool_cluster
    g1 = nodes[0]
    port = int(g1.grpc.rsplit(":", 1)[1])
    g1.kill()  # SIGKILL the node and its engine core
    for _ in range(3):  # at once: the first call may still pick the dead node, and fails over
        done = await asyncio.gather(*(ask(stub) for _ in range(3)))
        assert all(d.generator == nodes[1].grpc for d in done)
    nodes[0] = restarted = start_node(run, "g1-again", port)  # same address: the pool's watch finds it again
    await asyncio.to_thread(restarted.wait_ready, 300)
    deadline = time.monotonic() + 30
    used = set()
    while restarted.grpc not in used:  # bounded: the watch reconnects within its 5 s backoff
        assert time.monotonic() < deadline, "restarted node never received traffic"
        used |= {d.generator for d in await asyncio.gather(*(ask(stub) for _ in range(2)))}


async def test_engine_death_means_not_serving_and_exit(pool_cluster):
    stub, nodes, _, _ = pool_cluster
    victim = nodes[1]
    engine_cores = [p for p in psutil.Process(victim.pid).children(recursive=True)]
    assert engine_cores, "vLLM runs its engine core in a child process"
    for p in engine_cores:
        p.kill()
    code = await asyncio.to_thread(victim.proc.wait, 60)
    assert code != 0  # it exited by itself, reporting failure
    log = victim.log.read_text(errors="replace")
    assert "unrecoverable" in log and "NOT_SERVING" in log
    # the router keeps answering on the remaining node, without hanging
    start = time.monotonic()
    done = await ask(stub)
    assert done.generator == nodes[0].grpc and time.monotonic() - start < 30
