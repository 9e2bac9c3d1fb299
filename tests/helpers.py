"""Helpers shared by integration tests: a shard server process, and a router on its own loop thread."""

from __future__ import annotations

import asyncio
import datetime
import threading
from pathlib import Path

import grpc

from ragcluster.security import TlsFiles, identity
from ragcluster.tools.certs import create_ca, issue
from ragcluster.tools.cluster import ServerProcess
from ragcluster.v1 import shard_pb2, shard_pb2_grpc
from router.__main__ import build_server as build_router
from router.config import RouterConfig
from router.service import RouterServicer


def shard_process(run, shard: int, replica: int, *args, port: int = 0, data_tag: str = "",
                  tls: TlsFiles | None = None) -> ServerProcess:
    """A shard server process on loopback: plaintext (explicit --insecure) unless ``tls`` is given (mTLS)."""
    data = run / f"s{shard}r{replica}{data_tag}"
    security = Pki.args(tls) if tls is not None else ["--insecure"]
    return ServerProcess("shard_server", ["--port", str(port), "--shard-id", str(shard), "--data-dir", str(data),
                                          "--checkpoint-interval-seconds", "0", *security, *args], run,
                         f"s{shard}r{replica}{data_tag}")


class RouterInThread:
    """The router on its own event loop thread, so tests can drive it with blocking clients."""

    def __init__(self, config: RouterConfig, embedder):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start():
            server = build_router(config)
            server.servicer(RouterServicer).embedder = embedder
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(60)
        self.address = self.server.address
        self.servicer = self.server.servicer(RouterServicer)

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=1), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def require_tool(name: str, install: str = "make tools (apt-get install -y prometheus)") -> str:
    """Path of an external tool. Missing: the test fails under CI (CI=true), else it is skipped with how to
    install it, so nothing that CI must run is skipped silently."""
    import os
    import shutil

    import pytest

    path = shutil.which(name)
    if path:
        return path
    message = f"{name} is not installed; run `{install}`"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " (CI=true: required)")
    pytest.skip(message)


GRAFANA_DASHBOARD = "deploy/grafana/ragcluster.json"
_PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                 "offset", "inf", "nan"}


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, Grafana variables replaced by what they expand to
    ($__rate_interval -> 5m, a multi-value variable -> .*)."""
    import re

    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5m")
            out.append((panel["title"], re.sub(r"\$\{?\w+\}?", ".*", expr)))
    return out


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, keywords, label names or values)."""
    import re

    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)", text):
        rest = text[m.end():].lstrip()
        if m[1].lower() not in _PROMQL_WORDS and not rest.startswith("("):
            names.add(m[1])
    return names


def replica_digest(address: str) -> dict[str, tuple[int, str, bool]]:
    """Every (id -> version, content hash, deleted) one shard replica holds, read directly (Digest)."""
    out: dict[str, tuple[int, str, bool]] = {}
    after = ""
    with grpc.insecure_channel(address) as channel:
        stub = shard_pb2_grpc.ShardServiceStub(channel)
        for _ in range(10_000):  # bounded: pages of 5000
            page = stub.Digest(shard_pb2.DigestRequest(after_id=after, limit=5000), timeout=30)
            out.update(zip(page.ids, zip(page.versions, page.content_hashes, page.deleted)))
            if len(page.ids) < 5000:
                return out
            after = page.ids[-1]
    raise AssertionError(f"digest of {address} did not end")
class Pki:
    """A CA with the certificates the tests present, plus a second, unrelated CA."""

    def __init__(self, root: Path):
        self.dir = root / "ca"
        self.other = root / "other-ca"
        create_ca(self.dir)
        create_ca(self.other, "someone else's CA")
        self.ca = str(self.dir / "ca.crt")
        self.router = self.issue("router", identity("router"))
        self.shard0 = self.issue("shard-0", identity("shard", 0))
        self.shard1 = self.issue("shard-1", identity("shard", 1))
        self.generator = self.issue("generator", identity("generator"))
        self.stranger = self.issue("client", identity("client"))  # right CA, wrong identity
        foreign = issue(self.other, root / "foreign", "router", identity("router"))  # right identity, wrong CA
        self.foreign = TlsFiles(str(foreign.cert), str(foreign.key), self.ca)
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
        expired = issue(self.dir, root / "expired", "router", identity("router"), days=1, not_before=past)
        self.expired = TlsFiles(str(expired.cert), str(expired.key), self.ca)

    def issue(self, name: str, uri: str) -> TlsFiles:
        pair = issue(self.dir, self.dir, name, uri)
        return TlsFiles(str(pair.cert), str(pair.key), self.ca)

    @staticmethod
    def args(files: TlsFiles) -> list[str]:
        return ["--tls-cert", files.cert, "--tls-key", files.key, "--tls-ca", files.ca]
