"""Fuzzing every public RPC of every tier against real processes (1 shard, 1 tiny vLLM generator, the router):
at least 1,000 malformed, oversized, non-UTF-8, wrong-type or huge-count requests each, as raw bytes on the
wire (generic multicallables without serializers: what reaches the server is exactly what was generated,
including bytes that no protobuf library would build). No answer may be INTERNAL or UNKNOWN, no process may
die, the servers' own per-RPC counters show no INTERNAL/UNKNOWN, and every tier still answers a valid request.

The blocking client is used on purpose: when a server answers a client-streaming call while the grpc.aio
client is still writing, grpc.aio replaces the server's status by its own INTERNAL "Internal error from Core"
(aio/_call.py ``_write``: a failed send calls ``set_internal_error``), which hides what the server said; the
blocking client stops writing and reports the server's status.
"""

from __future__ import annotations

import math
import random
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from ragcluster.channels import health_stub
from ragcluster.client import RouterClient
from ragcluster.corpus import make_documents
from ragcluster.tools.cluster import ClusterSpec, LocalCluster
from ragcluster.v1 import (
    common_pb2,
    generator_pb2,
    generator_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    shard_pb2,
    shard_pb2_grpc,
)

pytestmark = pytest.mark.vllm

PER_RPC = 1000
THREADS = 8
# a clear status for a bad request is anything but these (DEADLINE_EXCEEDED: a valid request that generates
# for longer than the fuzz waits; RESOURCE_EXHAUSTED: over a size limit; NOT_FOUND, FAILED_PRECONDITION...)
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED,
             grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNAVAILABLE}
MARKER = "FUZZMARKERFUZZMARKER"  # replaced by invalid UTF-8 on the wire
BAD_UTF8 = b"\xff\xfe\xc0\xaf\xed\xa0\x80\xf8\x88\x80\x80\x80\xfd\xbf\xbf\x80"
FD = descriptor.FieldDescriptor
INTS = {
    FD.CPPTYPE_INT32: [0, 1, -1, 7, 2**31 - 1, -(2**31)],
    FD.CPPTYPE_INT64: [0, 1, -1, 3, 2**63 - 1, -(2**63)],
    FD.CPPTYPE_UINT32: [0, 1, 5, 2**32 - 1, 2**31],
    FD.CPPTYPE_UINT64: [0, 1, 9, 2**64 - 1, 2**63],
}
FLOATS = [0.0, -1.0, 0.5, 1.0, 2.0, 1e38, -1e38, 1e-45, math.nan, math.inf, -math.inf]

SERVICES = [(router_pb2, "RouterService", "router"), (shard_pb2, "ShardService", "shard"),
            (generator_pb2, "GeneratorService", "generator")]
# (role, service full name, method, request descriptor, request streaming, response streaming)
RPCS = [(role, svc.full_name, m.name, m.input_type, m.client_streaming, m.server_streaming)
        for module, name, role in SERVICES for svc in [module.DESCRIPTOR.services_by_name[name]] for m in svc.methods]
# every message type of the API, for "a request of the wrong type"
ALL_TYPES = [message_factory.GetMessageClass(t) for module in (common_pb2, router_pb2, shard_pb2, generator_pb2)
             for t in module.DESCRIPTOR.message_types_by_name.values()]
# valid requests that generate cost up to max_tokens of vLLM time each: the fuzz waits this long for them
# (DEADLINE_EXCEEDED is a clear answer; the engine aborts the request when the call is cancelled)
TIMEOUT = {"Ask": 1.0, "Generate": 1.0}


def random_text(rng: random.Random, big: bool = True) -> str:
    kind = rng.random()
    if kind < 0.15:
        return ""
    if kind < 0.3:
        return MARKER
    if kind < 0.4:  # over the id / title / query / document limits
        return "x" * rng.choice([513, 4097, 10_001] + ([70_000, 600_000] if big else []))
    if kind < 0.55:  # control characters, bidi overrides, BOM, the last code point, markup brackets
        return "".join(rng.choices("\x00\x1f\x7f\u202e\ufeff\U0010ffff[]", k=20))
    if kind < 0.65:
        return "[bold red]markup[/] ../../etc/passwd %s %n {0} \\x00 '; DROP TABLE documents; --"
    return "".join(rng.choices("abc de\u00e9\u4e2d", k=rng.randint(1, 60)))


def scalar(field: Any, rng: random.Random, big: bool = True) -> Any:
    cpp = field.cpp_type
    if cpp == FD.CPPTYPE_STRING:
        if field.type == FD.TYPE_BYTES:
            return rng.randbytes(rng.choice([0, 1, 3, 16, 1536, 4000]))
        return random_text(rng, big)
    if cpp == FD.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if cpp in (FD.CPPTYPE_FLOAT, FD.CPPTYPE_DOUBLE):
        return rng.choice(FLOATS)
    if cpp == FD.CPPTYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values] + [99, -5])
    return rng.choice(INTS[cpp])


def fill(msg: Message, rng: random.Random, depth: int = 0) -> None:
    """Set a random subset of ``msg``'s fields to random, often extreme, values (recursively). Huge strings go
    only into top-level fields, so one message stays within a few MiB."""
    for field in msg.DESCRIPTOR.fields:
        if rng.random() < 0.45:
            continue
        value: Any = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            if depth < 2 and rng.random() < 0.03:  # a huge count of (empty) entries
                for n in range(3000):
                    key: Any = str(n) if key_field.cpp_type == FD.CPPTYPE_STRING else n
                    if value_field.message_type is not None:
                        value[key].SetInParent()
                    else:
                        value[key] = value_field.default_value
                continue
            for _ in range(rng.choices([1, 2, 70], [10, 10, 1])[0] if depth < 2 else 1):
                if key_field.cpp_type == FD.CPPTYPE_STRING:
                    key = random_text(rng, big=False)[:200] + str(rng.randrange(10**6))
                else:
                    key = scalar(key_field, rng)
                if value_field.message_type is not None:
                    fill(value[key], rng, depth + 1)
                else:
                    value[key] = scalar(value_field, rng, big=False)
        elif field.is_repeated:
            huge = depth == 0 and rng.random() < 0.04  # over the count limits: ids, texts, items, components
            if field.message_type is not None:
                if huge:
                    for _ in range(rng.choice([1000, 20_000])):
                        value.add()  # many (empty) items: the count matters, not the content
                else:
                    for _ in range(rng.choice([0, 1, 2, 5]) if depth < 3 else 1):
                        fill(value.add(), rng, depth + 1)
            elif huge and field.cpp_type == FD.CPPTYPE_STRING:
                value.extend([str(n) for n in range(rng.choice([2000, 100_000]))])
            elif huge:
                value.extend([scalar(field, rng, big=False)] * rng.choice([2000, 100_000]))
            else:
                # 384: the cluster's dimension, so that some vectors pass and reach deeper
                value.extend([scalar(field, rng, big=False) for _ in range(rng.choice([0, 1, 3, 20, 384]))])
        elif field.message_type is not None:
            if depth < 4:
                fill(value, rng, depth + 1)
                value.SetInParent()
        else:
            setattr(msg, field.name, scalar(field, rng, big=depth == 0))


def payload(cls: type[Message], rng: random.Random) -> bytes:
    """One request on the wire: garbage bytes, a message of another type, a mutated message, a message with
    invalid UTF-8 in a string, or an extreme one."""
    kind = rng.random()
    if kind < 0.1:
        return rng.randbytes(rng.choice([1, 7, 100, 3000]))
    if kind < 0.2:
        other = rng.choice(ALL_TYPES)()
        fill(other, rng, depth=1)
        return other.SerializeToString()
    msg = cls()
    fill(msg, rng)
    data = msg.SerializeToString()
    if MARKER.encode() in data:
        return data.replace(MARKER.encode(), BAD_UTF8)
    if kind < 0.35 and data:
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        return bytes(mutated)
    return data


def requests_for(cls: type[Message], stream_in: bool, seed: int) -> list[bytes | list[bytes]]:
    rng = random.Random(seed)
    out: list[bytes | list[bytes]] = []
    for n in range(PER_RPC):
        if n == 0:  # one request over the servers' message limit (64 MiB)
            big = b"\x0a" + bytes(65 << 20)
            out.append([big] if stream_in else big)
        elif stream_in:
            out.append([payload(cls, rng) for _ in range(rng.choice([1, 1, 2, 3]))])
        else:
            out.append(payload(cls, rng))
    return out


def call_one(callable_: Any, request: bytes | list[bytes], stream_in: bool, stream_out: bool,
             timeout: float) -> tuple[grpc.StatusCode, str]:
    try:
        result = callable_(iter(request) if stream_in else request, timeout=timeout)
        if stream_out:
            for _ in result:
                pass
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def fuzz(address: str, service: str, method: str, cls: type[Message], stream_in: bool, stream_out: bool,
         seed: int) -> Counter[str]:
    path = f"/{service}/{method}"
    options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    requests = requests_for(cls, stream_in, seed)
    timeout = TIMEOUT.get(method, 10.0)
    with grpc.insecure_channel(address, options=options) as channel:
        kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
                 (True, False): channel.stream_unary, (True, True): channel.stream_stream}
        callable_ = kinds[(stream_in, stream_out)](path)  # no serializers: the bytes go out as they are
        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(lambda r: call_one(callable_, r, stream_in, stream_out, timeout), requests))
    bad = [f"#{n}: {code.name}: {details[:300]}" for n, (code, details) in enumerate(results) if code in BAD_CODES]
    assert not bad, f"{method}: {len(bad)} bad answers, e.g. {bad[:5]}"
    leaked = [d for _, d in results if "Traceback" in d or "/work/" in d or "/tmp/" in d or ".py" in d]
    assert not leaked, f"{method}: internals in error details, e.g. {leaked[:3]}"
    return Counter(code.name for code, _ in results)


def server_codes(metrics_address: str) -> dict[tuple[str, str], float]:
    """(method, code) -> count from a server's ragcluster_grpc_server_handled_total."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {(s.labels["method"], s.labels["code"]): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "ragcluster_grpc_server_handled_total"}


@pytest.fixture(scope="module")
def small_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    spec = ClusterSpec(data_dir=str(tmp_path_factory.mktemp("fuzz")), shards=1, generators=1, model="tiny", port=0,
                       kv_cache_bytes=64 << 20, max_model_len=512, insecure=True)
    cluster = LocalCluster(spec).start(timeout=600)
    try:
        with RouterClient(cluster.router_address) as client:
            client.ingest(make_documents(20, seed=4, prefix="fz"))
        yield cluster
    finally:
        cluster.stop()


def still_serving(cluster: LocalCluster) -> None:
    """Every process alive and SERVING, no INTERNAL/UNKNOWN counted by any server, and each tier answers a
    valid request."""
    for member, process in zip(cluster.members, cluster._procs):
        assert process.proc.poll() is None, f"{member.role} died"
        with grpc.insecure_channel(member.grpc) as channel:
            status = health_stub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30).status
            assert status == health_pb2.HealthCheckResponse.SERVING, member.role
            if member.role == "shard":
                info = shard_pb2_grpc.ShardServiceStub(channel).Info(shard_pb2.ShardInfoRequest(), timeout=30)
                assert info.documents >= 20
            elif member.role == "generator":
                stub = generator_pb2_grpc.GeneratorServiceStub(channel)
                counts = stub.CountTokens(generator_pb2.CountTokensRequest(texts=["fresh bread"]), timeout=30)
                assert counts.counts and counts.counts[0] > 0
        wrong = {k: v for k, v in server_codes(member.metrics).items() if k[1] in ("INTERNAL", "UNKNOWN") and v}
        assert not wrong, (member.role, wrong)
    with grpc.insecure_channel(cluster.router_address) as channel:
        answer = router_pb2_grpc.RouterServiceStub(channel).Search(router_pb2.SearchRequest(text="fresh bread", k=3),
                                                                   timeout=60)
        assert answer.hits


@pytest.mark.parametrize("role,service,method,input_type,stream_in,stream_out", RPCS,
                         ids=[f"{s.rsplit('.', 1)[1]}.{m}" for _, s, m, *_ in RPCS])
def test_fuzz_rpc(small_cluster: LocalCluster, role: str, service: str, method: str,
                  input_type: descriptor.Descriptor, stream_in: bool, stream_out: bool) -> None:
    # Restore is fuzzed too: a source outside the shard's allow-list (its own replicas: none here) is refused
    # before any connection is made, so the fuzz never dials the random addresses it names
    member = next(m for m in small_cluster.members if m.role == role)
    cls = message_factory.GetMessageClass(input_type)
    start = time.monotonic()
    seed = zlib.crc32(f"{service}/{method}".encode())
    codes = fuzz(member.grpc, service, method, cls, stream_in, stream_out, seed)
    print(f"{service}/{method}: {dict(codes)} in {time.monotonic() - start:.1f}s")
    assert sum(codes.values()) == PER_RPC
    assert codes["INVALID_ARGUMENT"] > 0, codes  # the fuzz reached the validation
    assert codes["RESOURCE_EXHAUSTED"] >= 1, codes  # the oversized request
    still_serving(small_cluster)


def test_versions_beyond_sqlite_integer(small_cluster: LocalCluster) -> None:
    """Found by the fuzz: versions are uint64 on the wire but signed 64-bit in the store; one above 2^63-1 made
    Delete (and Upsert) fail INTERNAL with an OverflowError."""
    shard = next(m for m in small_cluster.members if m.role == "shard")
    with grpc.insecure_channel(shard.grpc) as channel:
        stub = shard_pb2_grpc.ShardServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Delete(shard_pb2.ShardDeleteRequest(ids=["a"], versions=[2**63]), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "versions[0]" in (err.value.details() or "")
        doc = shard_pb2.DocumentVector(document=common_pb2.Document(id="v", text="t"), vector=[0.1] * 384,
                                       version=2**64 - 1)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Upsert(iter([shard_pb2.UpsertRequest(documents=[doc])]), timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "version" in (err.value.details() or "")
        for field in ("before_version", "synced_version"):  # PruneTombstones (found by the fuzz too)
            with pytest.raises(grpc.RpcError) as err:
                stub.PruneTombstones(shard_pb2.PruneTombstonesRequest(**{field: 2**63}), timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (err.value.details() or "")
    still_serving(small_cluster)
