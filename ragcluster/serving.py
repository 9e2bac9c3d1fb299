"""One aio server bootstrap for every tier: health, reflection, interceptors, metrics, signals, graceful stop.

Lifecycle: bind → start → load (model/index) → mark SERVING → write the ready file → wait for stop
(SIGTERM/SIGINT) → NOT_SERVING (graceful shutdown) → server.stop(grace) → close.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ragcluster import tracing
from ragcluster.channels import KEEPALIVE_OPTIONS
from ragcluster.config import ServerConfig
from ragcluster.fsutil import atomic_write
from ragcluster.interceptors import ServerInterceptor, Shed, preinitialise
from ragcluster.security import Authorizer, PeerPolicy, ServerTls, combine, is_loopback

logger = logging.getLogger(__name__)
S = TypeVar("S")

@dataclass
class ServiceSpec:
    """A servicer to register: the generated ``add_XServicer_to_server`` and the service's full name."""

    add_to_server: Callable[[object, grpc.aio.Server], None]
    servicer: object
    full_name: str
    method_names: Sequence[str] = field(default_factory=tuple)


def service_spec(servicer: object, pb2_module: ModuleType, service_name: str, grpc_module: ModuleType) -> ServiceSpec:
    descriptor = pb2_module.DESCRIPTOR.services_by_name[service_name]
    add = getattr(grpc_module, f"add_{service_name}Servicer_to_server")
    return ServiceSpec(add, servicer, descriptor.full_name, tuple(m.name for m in descriptor.methods))


class GrpcServer:
    """A running server. Used by every tier's __main__ and, in process, by tests."""

    def __init__(
        self,
        config: ServerConfig,
        services: Sequence[ServiceSpec],
        *,
        load: Callable[[], Awaitable[object]] | None = None,
        close: Callable[[], Awaitable[object]] | None = None,
        authorize: Authorizer | None = None,
        require_client_auth: bool = True,
        shed: Shed | None = None,
    ):
        """``authorize``: checked before every RPC except health and reflection (API keys, peer identities).
        ``require_client_auth``: with TLS and a CA, callers must present a certificate of that CA (mTLS).
        ``shed(method)``: admission control asked first for every RPC; a message refuses the call at once
        with RESOURCE_EXHAUSTED, before any per-request work (``ragcluster.interceptors``)."""
        self.config = config
        self.authorize = authorize
        self.shed = shed
        self.require_client_auth = require_client_auth
        self.tls: ServerTls | None = None
        self.services = list(services)
        self._load = load
        self._close = close
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.health_server: grpc.aio.Server | None = None  # --health-port: health alone, plaintext, for probes
        self.port = 0
        self.health_port = 0
        self.metrics_port = 0
        self._metrics_httpd: ThreadingHTTPServer | None = None
        self._stopped = asyncio.Event()
        self.failed = ""  # set by fail(): the process should exit non-zero
        self._failure = asyncio.Event()

    def servicer(self, kind: type[S]) -> S:
        """The registered servicer of type ``kind`` (for tests and tools that reach into a server)."""
        for spec in self.services:
            if isinstance(spec.servicer, kind):
                return spec.servicer
        raise LookupError(f"no {kind.__name__} registered on this server")

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def _set_all(self, status: int) -> None:
        for name in ["", *(s.full_name for s in self.services)]:
            await self.health.set(name, status)

    def _credentials(self) -> grpc.ServerCredentials | None:
        """TLS from the config's files; None (plaintext) only on loopback or with an explicit --insecure."""
        cfg = self.config
        files = cfg.tls_files()
        if files.enabled:
            self.tls = ServerTls(files, self.require_client_auth)
            return self.tls.credentials()
        if not cfg.insecure and not is_loopback(cfg.host):
            raise SystemExit(f"refusing to serve plaintext on {cfg.host}: give --tls-cert/--tls-key/--tls-ca "
                             f"(RAGCLUSTER_TLS_*), or --insecure to run without TLS on purpose")
        if not cfg.insecure:
            logger.warning("no TLS: serving plaintext on loopback %s (pass --tls-* for TLS, --insecure to "
                           "silence this)", cfg.host)
        return None

    async def start(self) -> None:
        cfg = self.config
        credentials = self._credentials()
        if cfg.metrics_port >= 0:
            httpd = start_metrics_http(cfg.metrics_host or cfg.host, cfg.metrics_port)
            self._metrics_httpd = httpd
            self.metrics_port = httpd.server_port
        options = [
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.so_reuseport", 0),
            *KEEPALIVE_OPTIONS,
        ]
        if cfg.max_connection_age_seconds > 0:  # GOAWAY, then clients reconnect; streams in flight live on
            options.append(("grpc.max_connection_age_ms", max(1, int(cfg.max_connection_age_seconds * 1000))))
        self.server = grpc.aio.server(interceptors=[ServerInterceptor(cfg.access_log, self.authorize, self.shed)],
                                      options=options)
        for spec in self.services:
            spec.add_to_server(spec.servicer, self.server)
            preinitialise(spec.full_name.rsplit(".", 1)[-1], spec.method_names)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [s.full_name for s in self.services] + [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, self.server)
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        if credentials is None:
            self.port = self.server.add_insecure_port(f"{host}:{cfg.port}")
        else:
            self.port = self.server.add_secure_port(f"{host}:{cfg.port}", credentials)
        if self.port == 0:
            raise RuntimeError(f"could not bind {cfg.host}:{cfg.port}")
        if cfg.health_port >= 0:
            self.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self.health_server.add_insecure_port(f"{host}:{cfg.health_port}")
            if self.health_port == 0:
                raise RuntimeError(f"could not bind {cfg.host}:{cfg.health_port} (--health-port)")
            await self.health_server.start()
        await self.server.start()
        logger.info("listening on %s (%s; metrics on :%s); loading", self.address,
                    "TLS" if credentials is not None else "plaintext", self.metrics_port)
        if self._load is not None:
            await self._load()
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)
        if cfg.ready_file:
            _write_ready_file(Path(cfg.ready_file), self.address, cfg.metrics_host or cfg.host, self.metrics_port)
        logger.info("SERVING on %s", self.address)

    async def set_serving(self, serving: bool) -> None:
        await self._set_all(
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def fail(self, reason: str) -> None:
        """An unrecoverable fault (e.g. the engine died): NOT_SERVING now, then stop; exit non-zero."""
        if self.failed:
            return
        self.failed = reason
        logger.error("unrecoverable: %s; NOT_SERVING, shutting down", reason)
        await self.set_serving(False)
        self._failure.set()

    async def wait_failed(self) -> None:
        """Returns once fail() was called."""
        await self._failure.wait()

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(None)
        if self._close is not None:
            await self._close()
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        logger.info("stopped")

    async def wait(self) -> None:
        await self._stopped.wait()


def start_metrics_http(host: str, port: int) -> ThreadingHTTPServer:
    """Serve the default registry on ``host:port`` (``/metrics``) in a daemon thread, always in the Prometheus
    text format: prometheus_client's OpenMetrics output rewrites sample names such as ``vllm:num_requests_waiting``
    to ``vllm_num_requests_waiting`` (while keeping ``vllm:`` in HELP/TYPE), so a Prometheus that negotiates
    OpenMetrics would store names that match neither vLLM's documentation nor our rules and dashboard."""
    from prometheus_client.exposition import MetricsHandler, _get_best_family

    class TextFormatHandler(MetricsHandler):
        def do_GET(self) -> None:
            del self.headers["Accept"]  # no content negotiation: text format 0.0.4
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass  # no line per scrape on stderr

    family, address = _get_best_family(host, port)  # IPv4 or IPv6, as prometheus_client's own server does

    class Server(ThreadingHTTPServer):
        address_family = family

    httpd = Server((address, port), TextFormatHandler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd


def peer_authorizer(config: ServerConfig, per_method: dict[str, list[str]] | None = None) -> Authorizer | None:
    """Shards and generators: with TLS and a CA (mTLS), only certificates whose identity is in
    ``config.tls_allowed_callers`` (or ``per_method[method]``) may call; without TLS there is nothing to check."""
    files = config.tls_files()
    if not (files.enabled and files.ca):
        return None
    allowed = list(getattr(config, "tls_allowed_callers", []))
    return combine(peer=PeerPolicy(allowed, per_method))


def _write_ready_file(path: Path, grpc_address: str, host: str, metrics_port: int) -> None:
    data = {"grpc": grpc_address, "metrics": f"{host}:{metrics_port}" if metrics_port else "", "pid": os.getpid()}
    atomic_write(path, json.dumps(data))


async def serve_until_signalled(server: GrpcServer, stop_event: asyncio.Event | None = None) -> None:
    """Start ``server``, run until SIGTERM/SIGINT (or ``stop_event``), then stop gracefully."""
    loop = asyncio.get_running_loop()
    stop = stop_event or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    start = asyncio.create_task(server.start())
    waiter = asyncio.create_task(stop.wait())
    failure = asyncio.create_task(server.wait_failed())
    done, _ = await asyncio.wait({start, waiter, failure}, return_when=asyncio.FIRST_COMPLETED)
    if start in done:
        start.result()  # a failed start raises here
        await asyncio.wait({waiter, failure}, return_when=asyncio.FIRST_COMPLETED)
    elif failure in done:
        start.cancel()
    else:
        start.cancel()
        logger.info("stop requested while loading")
    logger.info("shutting down (grace %.1fs)", server.config.grace_seconds)
    await server.stop()
    tracing.shutdown()  # flush the last spans
    waiter.cancel()
    failure.cancel()
