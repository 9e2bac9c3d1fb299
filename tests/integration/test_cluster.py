"""The whole chain in separate processes: shards, router, a real vLLM generator (tiny model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import faiss
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from ragcluster.channels import health_stub
from ragcluster.client import RouterClient
from ragcluster.corpus import make_queries
from ragcluster.documents import Document
from ragcluster.types import AnswerDelta, AskComplete, AskHits
from ragcluster.v1 import common_pb2, router_pb2, router_pb2_grpc
from router.service import embedding_text


@pytest.fixture(scope="module", autouse=True)
def _cli_talks_plaintext():
    """The shared ``cluster`` fixture runs with an explicit ``--insecure`` (tests/conftest.py); the CLI
    subprocesses these tests start must say so too (secure by default, they would look for ./data/certs)."""
    previous = os.environ.get("RAGCLUSTER_INSECURE")
    os.environ["RAGCLUSTER_INSECURE"] = "true"
    yield
    if previous is None:
        os.environ.pop("RAGCLUSTER_INSECURE", None)
    else:
        os.environ["RAGCLUSTER_INSECURE"] = previous

pytestmark = pytest.mark.vllm


def _metrics(address: str) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _sample(families, family, name, **labels) -> float:
    for s in families.get(family, []):
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return 0.0


def test_every_server_answers_health_and_reflection(cluster):
    expected = {"shard": "ragcluster.v1.ShardService", "router": "ragcluster.v1.RouterService",
                "generator": "ragcluster.v1.GeneratorService"}
    roles = set()
    for member in cluster.members:
        with grpc.insecure_channel(member.grpc) as channel:
            status = health_stub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING, member
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
            wanted = {expected[member.role], "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
            assert wanted <= services
        roles.add(member.role)
    assert roles == {"shard", "router", "generator"}
    manifest = json.loads((cluster.dir / "cluster.json").read_text())
    assert {p["role"] for p in manifest["processes"]} == roles
    assert all(p["grpc"] and p["metrics"] and p["pid"] for p in manifest["processes"])


@pytest.fixture(scope="module")
def router_embedder():
    """The embedder the router process runs: its config's defaults (backend, precision)."""
    from router.config import RouterConfig
    from router.embedding import embedder_from_config

    return embedder_from_config(RouterConfig())


def test_congruence_with_single_flat_index(cluster, ingested, router_embedder):
    """3 Flat shards through the router == one in-process IndexFlatIP over the same embeddings (made by the
    same model at the same precision as the router's)."""
    embedder = router_embedder
    docs = ingested
    texts = [embedding_text(d.title, d.text) for d in docs]
    # embed in the same 64-document batches the router embedded them in
    xb = np.concatenate([embedder.encode(texts[i:i + 64]) for i in range(0, len(texts), 64)])
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    queries = make_queries(100)
    k = 10
    mismatched = 0
    with RouterClient(cluster.router_address) as client:
        for q in queries:
            got = client.search(q, k=k)
            assert got.coverage.shards_total == 3 and got.coverage.shards_answered == 3
            assert got.coverage.documents_searched == len(docs) and not got.coverage.degraded
            ref_scores, ref_ids = index.search(embedder.encode([q]), k)
            ref = [docs[i].id for i in ref_ids[0]]
            ids = [h.id for h in got.hits]
            scores = np.array([h.score for h in got.hits])
            np.testing.assert_allclose(scores, ref_scores[0], atol=2e-4)
            if ids != ref:
                # only near-ties (equal within float noise) may swap places
                mismatched += 1
                for a, b, s in zip(ids, ref, ref_scores[0]):
                    if a != b:
                        assert abs(scores[ids.index(a)] - s) < 2e-4, (q, ids, ref)
    assert mismatched <= 2


def test_search_json_and_status_cli(cluster, ingested):
    router = cluster.router_address
    cli = [sys.executable, "-m", "ragcluster.tools.cli"]
    out = subprocess.run([*cli, "search", "--router", router, "how do honeybees communicate", "-k", "3", "--json"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    result = json.loads(out)
    assert len(result["hits"]) == 3
    assert set(result["hits"][0]) >= {"id", "score", "shard", "text", "metadata"}
    assert result["hits"][0]["id"] == "honeybees"
    assert result["coverage"]["shards_answered"] == result["coverage"]["shards_total"] == 3
    status = json.loads(subprocess.run([*cli, "status", "--router", router, "--json"], capture_output=True,
                                       text=True, timeout=120, check=True).stdout)
    assert status["documents"] == len(ingested)
    assert len(status["shards"]) == 3
    assert sum(s["documents"] for s in status["shards"]) == len(ingested)
    for s in status["shards"]:
        assert [r["health"] for r in s["replicas"]] == ["SERVING"]
        assert s["replicas"][0]["address"] and s["replicas"][0]["documents"] == s["documents"]
    assert status["generators"][0]["health"] == "SERVING"


def test_ingest_cli_reports_bad_lines(cluster, tmp_path):
    router = cluster.router_address
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join([
        json.dumps({"id": "cli-1", "text": "Kettles boil water for tea."}),
        "{broken",
        json.dumps({"id": "cli-2", "text": "Lighthouses guide ships at night."}),
    ]) + "\n")
    cli = [sys.executable, "-m", "ragcluster.tools.cli", "ingest", "--router", router, str(f), "--json"]
    stop = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert stop.returncode == 1
    assert f"{f}:2" in stop.stderr and "invalid JSON" in stop.stderr
    assert json.loads(stop.stdout)["acknowledged"] == 1
    skip = subprocess.run([*cli, "--on-error", "skip"], capture_output=True, text=True, timeout=120)
    assert skip.returncode == 0, skip.stderr
    summary = json.loads(skip.stdout)
    # resumable: cli-1 is already stored unchanged, so only cli-2 is sent
    assert summary["acknowledged"] == 1 and summary["unchanged"] == 1
    assert summary["skipped"] == 1 and summary["errors"][0]["line"] == 2
    with RouterClient(router) as client:
        assert client.search("what guides ships at night", k=1).hits[0].id == "cli-2"
        assert client.delete(["cli-1", "cli-2", "never-existed"]) == 2
        assert all(h.id not in ("cli-1", "cli-2") for h in client.search("lighthouse ships kettle", k=20).hits)


def test_ask_end_to_end_streams_hits_deltas_and_citations(cluster, ingested):
    with RouterClient(cluster.router_address) as client:
        events = list(client.ask_events("What do shard servers store?", k=5, max_tokens=24, temperature=0.0))
    first, done = events[0], events[-1]
    assert isinstance(first, AskHits) and isinstance(done, AskComplete)
    assert all(isinstance(e, AnswerDelta) for e in events[1:-1]) and len(events) >= 3
    hits = [h.id for h in first.hits]
    assert len(hits) == 5 and "ragcluster-shards" in hits
    assert done.citations and set(done.citations) <= set(hits)
    # citations are the included passages in score order
    assert list(done.citations) == [h for h in hits if h in set(done.citations)]
    assert 0 < done.completion_tokens <= 24
    assert done.prompt_tokens + 24 <= 2048
    assert done.model == "tiny" and done.finish_reason in ("length", "stop")
    assert done.timings.time_to_first_token_seconds > 0 and done.timings.total_seconds >= done.timings.retrieve_seconds


def test_ask_cli_json(cluster, ingested):
    out = subprocess.run([sys.executable, "-m", "ragcluster.tools.cli", "ask", "--router", cluster.router_address,
                          "What is FAISS?", "--max-tokens", "8", "--json"],
                         capture_output=True, text=True, timeout=180, check=True).stdout
    result = json.loads(out)
    assert set(result) >= {"answer", "citations", "hits", "timings"}
    assert result["answer"] and result["citations"][0] == result["hits"][0]["id"] == "faiss"


def test_ask_and_search_cli_in_lexical_and_hybrid_modes(cluster, ingested):
    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "ragcluster.tools.cli", *args, "--router", cluster.router_address,
                              "--json"], capture_output=True, text=True, timeout=180, check=True).stdout
        return json.loads(out)

    for mode in ("lexical", "hybrid"):
        result = cli("ask", "What is FAISS?", "--mode", mode, "--max-tokens", "8")
        assert result["answer"] and result["citations"]
        assert "faiss" in [h["id"] for h in result["hits"][:3]], mode
        assert all(h["lexical_rank"] for h in result["hits"] if mode == "lexical")
    found = cli("search", "shard servers keep vectors durably", "--mode", "hybrid", "--fusion", "rrf", "-k", "5")
    assert found["mode"] == "hybrid" and len(found["hits"]) == 5
    for h in found["hits"]:
        ranks = [r for r in (h["dense_rank"], h["lexical_rank"]) if r]
        assert ranks and h["score"] == h["fused_score"] == pytest.approx(sum(1 / (60 + r) for r in ranks), rel=1e-5)


@pytest.mark.parametrize("request_kwargs,field", [
    (dict(text="   "), "text"),
    (dict(text="hello", k=101), "k"),
    (dict(vector=router_pb2.Vector(values=[0.1] * 3)), "vector.values"),
    (dict(vector=router_pb2.Vector(values=[float("nan")] * 384)), "vector.values"),
    (dict(), "query"),
])
def test_router_rejects_bad_search_input(cluster, request_kwargs, field):
    with grpc.insecure_channel(cluster.router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Search(router_pb2.SearchRequest(**request_kwargs), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (err.value.details() or "")
        # and it keeps serving
        assert stub.Search(router_pb2.SearchRequest(text="coffee", k=1), timeout=30).hits


def test_router_rejects_bad_ask_and_ingest(cluster):
    with grpc.insecure_channel(cluster.router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Ask(router_pb2.AskRequest(question=""), timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "question" in (err.value.details() or "")
        for interval in (0, 257):  # refused by the router before any retrieval
            with pytest.raises(grpc.RpcError) as err:
                list(stub.Ask(router_pb2.AskRequest(question="tea?", sampling=common_pb2.SamplingParams(
                    stream_interval=interval)), timeout=30))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "sampling.stream_interval" in (err.value.details() or "")
        bad = router_pb2.IngestRequest(documents=[common_pb2.Document(id="", text="x")])
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Ingest(iter([bad]), timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "documents[0].id" in (err.value.details() or "")
        dup = router_pb2.IngestRequest(documents=[common_pb2.Document(id="a", text="x"),
                                                  common_pb2.Document(id="a", text="y")])
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Ingest(iter([dup]), timeout=30))
        assert "duplicate" in (err.value.details() or "")


def test_every_process_exports_metrics(cluster, ingested):
    with RouterClient(cluster.router_address) as client:
        client.search("tea leaves", k=3)
        client.ask("What is tea?", max_tokens=4)
    by_role: dict[str, list[dict[str, list]]] = {}
    for m in cluster.members:
        by_role.setdefault(m.role, []).append(_metrics(m.metrics))
    router = by_role["router"][0]
    assert _sample(router, "ragcluster_grpc_server_handled", "ragcluster_grpc_server_handled_total",
                   method="Search", code="OK") >= 1
    assert _sample(router, "ragcluster_router_fanout_duration_seconds",
                   "ragcluster_router_fanout_duration_seconds_count") >= 1
    assert _sample(router, "ragcluster_grpc_server_handling_seconds", "ragcluster_grpc_server_handling_seconds_count",
                   method="Ask") >= 1
    vectors = sum(_sample(f, "ragcluster_shard_vectors", "ragcluster_shard_vectors") for f in by_role["shard"])
    assert vectors >= len(ingested)
    for shard in by_role["shard"]:
        assert _sample(shard, "ragcluster_grpc_server_handled", "ragcluster_grpc_server_handled_total",
                       method="Search", code="OK") >= 1
    gen = by_role["generator"][0]
    assert _sample(gen, "ragcluster_generator_time_to_first_token_seconds",
                   "ragcluster_generator_time_to_first_token_seconds_count") >= 1
    assert any(name.startswith("vllm:") for name in gen), "vLLM's own metrics are served on the node's port"


def test_filtered_search_through_router(cluster, ingested):
    router = cluster.router_address
    with RouterClient(router) as client:
        science = client.search("how does nature work", k=5, where=[{"field": "topic", "equals": "science"}])
        assert len(science.hits) == 5 and {h.metadata["topic"] for h in science.hits} == {"science"}
        ranged = client.search("a river", k=10, where=[{"field": "n", "gte": 10, "lt": 20},
                                                       {"field": "group", "any_of": ["even"]}])
        assert sorted(int(h.metadata["n"]) for h in ranged.hits) == [10, 12, 14, 16, 18]
        # a field that exists on one shard only: the others match nothing, no error
        kite = Document("only-one", "A unique note about kites.", metadata={"kite": 1})
        assert client.ingest([kite]).acknowledged == 1
        one = client.search("kites", k=3, where=[{"field": "kite", "equals": 1}])
        assert [h.id for h in one.hits] == ["only-one"] and one.coverage.shards_answered == 3
        client.delete(["only-one"])
    cli = [sys.executable, "-m", "ragcluster.tools.cli", "search", "--router", router, "rivers", "--json"]
    out = json.loads(subprocess.run([*cli, "--where", "topic=history", "-k", "3"], capture_output=True, text=True,
                                    timeout=120, check=True).stdout)
    assert len(out["hits"]) == 3 and all(h["metadata"]["topic"] == "history" for h in out["hits"])
    bad = subprocess.run([*cli, "--where", "colour=red"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr and "colour" in bad.stderr


def test_eval_cli_retrieval_and_generation(cluster, ingested, tmp_path):
    queries = tmp_path / "queries.jsonl"
    queries.write_text("\n".join(json.dumps(q) for q in [
        {"_id": "q1", "text": "How do honeybees tell each other where flowers are?"},
        {"_id": "q2", "text": "Who built the first printing press with movable type?"},
        {"_id": "q3", "text": "What is the speed of light in a vacuum?"},
        {"_id": "q4", "text": "a query whose judgments are all non-relevant"},
    ]) + "\n")
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\thoneybees\t2\nq2\tprinting-press\t2\nq2\tbicycles\t0\n"
                     "q3\tspeed-of-light\t2\nq3\tblack-holes\t1\nq4\tchess\t0\nq5\tcoffee\t1\n")
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"id": "a1", "question": "What do bees use to communicate?",
                              "answers": ["the waggle dance"]}) + "\n")
    cmd = [sys.executable, "-m", "ragcluster.tools.cli", "eval", "--router", cluster.router_address, "--queries",
           str(queries), "--qrels", str(qrels), "-k", "10", "--per-query", "--qa", str(qa), "--max-tokens", "8",
           "--json"]
    report = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout)
    r = report["retrieval"]
    # q1-q3 judged relevant, q4 has no relevant document, q5 has no query text (scores 0)
    assert r["queries"] == 4 and r["skipped_no_relevant"] == 1 and r["missing_query_text"] == 1
    assert set(r["metrics"]) == {"recall@10", "precision@10", "ndcg@10", "mrr@10", "map@10"}
    for qid in ("q1", "q2"):
        assert r["per_query"][qid]["mrr"] == 1.0 and r["per_query"][qid]["recall"] == 1.0
    assert r["per_query"]["q5"]["recall"] == 0.0
    assert 0.5 < r["metrics"]["mrr@10"] <= 0.75  # three of four at rank 1 at best
    g = report["generation"]
    assert g["questions"] == 1 and 0 <= g["f1"] <= 1 and 0 <= g["bleu"] <= 100
    assert "a1" in g["per_question"]


# ask through the deprecated --mode alias of --workload: scripts written before the rename keep working
@pytest.mark.parametrize("mode,flag,loop", [("search", "--workload", ["--concurrency", "4"]),
                                            ("ask", "--mode", ["--rate", "4"])])
def test_loadtest_cli_reports_and_plots(cluster, ingested, tmp_path, mode, flag, loop):
    png = tmp_path / f"{mode}.png"
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"text": "coffee and tea"}\n{"text": "volcanoes and plates"}\n')
    cmd = [sys.executable, "-m", "ragcluster.tools.cli", "loadtest", "--router", cluster.router_address, flag, mode,
           *loop, "--duration", "3", "--queries", str(queries), "--max-tokens", "4", "--plot", str(png), "--json"]
    start = time.monotonic()
    summary = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout)
    assert time.monotonic() - start < 60  # stops by itself
    assert summary["workload"] == summary["mode"] == mode
    assert summary["loop"] == ("closed" if mode == "search" else "open")
    assert summary["requests"] == summary["ok"] > 0 and summary["errors"] == {}
    lat = summary["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert summary["throughput_per_second"] > 0
    if mode == "ask":
        assert 0 < summary["ttft_ms"]["p50"] <= lat["p50"]
        assert 4 <= summary["requests"] <= 40  # ~4/s for 3 s (Poisson)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ingest_sources_chunking_and_resume(cluster, ingested, tmp_path):
    import sqlite3

    router = cluster.router_address
    cli = [sys.executable, "-m", "ragcluster.tools.cli", "ingest", "--router", router, "--json"]

    def ingest(*args):
        done = subprocess.run(cli + list(args), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    csv_file = tmp_path / "notes.csv"
    csv_file.write_text("id,text,title,stars\ncsv-1,Penguins huddle together to survive Antarctic winters.,"
                        "Penguins,5\ncsv-2,Cacti store water in their thick stems.,Cacti,4\n")
    assert ingest(str(csv_file))["acknowledged"] == 2
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "kites.md").write_text("# Kites\n\nBox kites were invented by Lawrence Hargrave in 1893.\n")
    (pages / "tides.html").write_text("<title>Tides</title><p>Tides are caused by the Moon's gravity.</p>")
    assert ingest(str(pages))["acknowledged"] == 2
    db = tmp_path / "rows.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id TEXT, text TEXT, title TEXT)")
    conn.execute("INSERT INTO t VALUES ('sql-1', 'Glass is made by melting sand at high temperature.', 'Glass')")
    conn.commit()
    conn.close()
    assert ingest("--sql", "SELECT id, text, title FROM t", "--db", str(db))["acknowledged"] == 1

    long_doc = tmp_path / "long.jsonl"
    sentences = [f"Sentence {i} is about lighthouse number {i} on a rocky northern coast." for i in range(40)]
    long_doc.write_text(json.dumps({"id": "long-1", "title": "Lighthouses", "text": " ".join(sentences)}) + "\n")
    chunked = ingest(str(long_doc), "--chunk-tokens", "48", "--chunk-overlap", "8")
    assert chunked["read"] == 1 and chunked["chunks"] == chunked["acknowledged"] > 3

    again = ingest(str(csv_file))  # resumable: unchanged documents are not sent again
    assert again["acknowledged"] == 0 and again["unchanged"] == 2
    with RouterClient(router) as client:
        assert client.search("Who invented the box kite?", k=1).hits[0].id == "kites.md"
        assert client.search("what makes the tides", k=1).hits[0].id == "tides.html"
        assert client.search("melting sand", k=1).hits[0].id == "sql-1"
        hit = client.search("lighthouse number 33", k=1).hits[0]
        assert hit.id.startswith("long-1#") and hit.parent_id == "long-1"
        assert set(client.lookup(["csv-1", "csv-2", "nope"])) == {"csv-1", "csv-2"}
        assert client.delete(["csv-1", "csv-2", "kites.md", "tides.html", "sql-1"]
                             + [f"long-1#{n}" for n in range(chunked["chunks"])]) == 5 + chunked["chunks"]


def test_locustfile_drives_the_router(cluster, ingested, tmp_path):
    """The Locust file in bench/ runs headless against the cluster for a few seconds without failures."""
    from pathlib import Path

    locustfile = Path(__file__).resolve().parents[2] / "bench" / "locustfile.py"
    csv_prefix = tmp_path / "locust"
    env = dict(os.environ, RAGCLUSTER_LOCUST_MODE="mixed", RAGCLUSTER_LOCUST_MAX_TOKENS="4")
    done = subprocess.run([sys.executable, "-m", "locust", "-f", str(locustfile), "--host", cluster.router_address,
                           "--headless", "-u", "4", "-r", "4", "-t", "4s", "--csv", str(csv_prefix), "--only-summary"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    import csv

    with open(f"{csv_prefix}_stats.csv") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    assert int(rows["search"]["Request Count"]) > 0 and int(rows["search"]["Failure Count"]) == 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
