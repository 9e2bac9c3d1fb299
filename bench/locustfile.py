"""Locust load test for ragcluster's router over gRPC (for teams that already run Locust).

    .venv/bin/locust -f bench/locustfile.py --host 127.0.0.1:50051 --headless -u 16 -r 4 -t 60s

Environment: RAGCLUSTER_LOCUST_MODE=search|ask|mixed (default search), RAGCLUSTER_LOCUST_QUERIES=a JSONL
file with a "text" field per line (default: built-in queries), RAGCLUSTER_LOCUST_K (default 10),
RAGCLUSTER_LOCUST_MAX_TOKENS (default 32). Each call is reported to Locust with its latency; an Ask is
timed to its last token, and its time to first token is reported as a separate "ask-ttft" entry.
"""

from __future__ import annotations

import os
import random
import time

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # grpc must cooperate with gevent before any channel exists

import grpc  # noqa: E402
from locust import User, between, events, task  # noqa: E402

from ragcluster.v1 import common_pb2, router_pb2, router_pb2_grpc  # noqa: E402


def _queries() -> list[str]:
    path = os.environ.get("RAGCLUSTER_LOCUST_QUERIES")
    if path:
        from ragcluster.tools.evaluation import load_query_texts

        return load_query_texts(path)
    from ragcluster.corpus import make_queries

    return make_queries(200, seed=7)


QUERIES = _queries()
MODE = os.environ.get("RAGCLUSTER_LOCUST_MODE", "search")
K = int(os.environ.get("RAGCLUSTER_LOCUST_K", "10"))
MAX_TOKENS = int(os.environ.get("RAGCLUSTER_LOCUST_MAX_TOKENS", "32"))


class RouterUser(User):
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(self.host)
        self.stub = router_pb2_grpc.RouterServiceStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def _fire(self, name: str, start: float, exc: Exception | None, size: int = 0) -> None:
        events.request.fire(request_type="grpc", name=name, response_time=(time.perf_counter() - start) * 1000,
                            response_length=size, exception=exc, context={})

    @task
    def query(self) -> None:
        mode = MODE if MODE != "mixed" else random.choice(["search", "search", "search", "ask"])
        text = random.choice(QUERIES)
        start = time.perf_counter()
        if mode == "search":
            try:
                response = self.stub.Search(router_pb2.SearchRequest(text=text, k=K), timeout=30)
                self._fire("search", start, None, len(response.hits))
            except grpc.RpcError as exc:
                self._fire("search", start, exc)
            return
        request = router_pb2.AskRequest(question=text, k=min(K, 5),
                                        sampling=common_pb2.SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0))
        first = None
        tokens = 0
        try:
            for event in self.stub.Ask(request, timeout=120):
                kind = event.WhichOneof("event")
                if kind == "delta" and first is None:
                    first = time.perf_counter()
                    self._fire("ask-ttft", start, None)
                elif kind == "complete":
                    tokens = event.complete.completion_tokens
            self._fire("ask", start, None, tokens)
        except grpc.RpcError as exc:
            self._fire("ask", start, exc)
