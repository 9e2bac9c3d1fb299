"""`ragcluster up` as a user runs it: separate processes, cluster.json, graceful stop, reopen."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from ragcluster.client import RouterClient
from ragcluster.corpus import make_documents
from ragcluster.tools.cli.common import ConnectOptions, client_security


def _client(manifest) -> RouterClient:
    """What the CLI does: TLS with DATA_DIR/certs/ca.crt and the admin key `up` created there."""
    return RouterClient(manifest["router"], security=client_security(ConnectOptions(data_dir=manifest["data_dir"])))


def _up(data_dir, *extra):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragcluster.tools.cli", "up", "--shards", "2", "--replicas", "2", "--generators", "0",
         "--data-dir", str(data_dir), "--port", "0", "--json", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    text = ""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # --json prints cluster.json once every process is SERVING
        if not line:
            raise AssertionError(f"up exited: {proc.wait()} {proc.stderr.read()}")
        text += line
        if line.startswith("}"):
            return proc, json.loads(text)
    proc.kill()
    raise AssertionError("up did not become ready")


def _stop(proc, manifest):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    for p in manifest["processes"]:  # every child is gone
        try:
            os.kill(p["pid"], 0)
            raise AssertionError(f"{p['role']} pid {p['pid']} still running")
        except ProcessLookupError:
            pass


def test_up_writes_manifest_stops_cleanly_and_reopens(tmp_path):
    proc, manifest = _up(tmp_path)
    try:
        roles = sorted((p["role"], p["shard"], p["replica"]) for p in manifest["processes"])
        assert roles == [("router", None, None), ("shard", 0, 0), ("shard", 0, 1), ("shard", 1, 0), ("shard", 1, 1)]
        assert json.loads((tmp_path / "cluster.json").read_text())["router"] == manifest["router"]
        docs = make_documents(30, seed=9, prefix="up")
        with _client(manifest) as client:
            assert client.ingest(docs).acknowledged == 30
            status = client.status()
            assert status.documents == 30
            # writes went to both replicas of each shard
            for s in status.shards:
                assert [r.documents for r in s.replicas] == [s.documents] * 2
            before = client.search("the harbour crane records", k=5).hits
        # secure by default: the CLI finds the CA and the admin key through --data-dir, nothing else to pass
        cli = [sys.executable, "-m", "ragcluster.tools.cli"]
        where = ["--router", manifest["router"], "--data-dir", str(tmp_path)]
        docs_file = tmp_path / "more.jsonl"
        docs_file.write_text("".join(json.dumps(d.to_json()) + "\n" for d in make_documents(5, seed=3, prefix="cli")))
        ingest = subprocess.run([*cli, "ingest", *where, str(docs_file), "--json"], capture_output=True, text=True,
                                timeout=120)
        assert ingest.returncode == 0, ingest.stderr
        assert json.loads(ingest.stdout)["acknowledged"] == 5
        search = subprocess.run([*cli, "search", *where, "the harbour crane records", "-k", "3", "--json"],
                                capture_output=True, text=True, timeout=120)
        assert search.returncode == 0, search.stderr
        assert len(json.loads(search.stdout)["hits"]) == 3
        # the same router refuses plaintext, and TLS without the key
        plain = subprocess.run([*cli, "status", "--router", manifest["router"], "--insecure", "--json"],
                               capture_output=True, text=True, timeout=60)
        assert plain.returncode != 0 and "UNAVAILABLE" in plain.stderr
        no_key = subprocess.run([*cli, "status", *where, "--token", "rc_not-a-key", "--json"],
                                capture_output=True, text=True, timeout=60)
        assert no_key.returncode != 0 and "UNAUTHENTICATED" in no_key.stderr, no_key.stderr
        nowhere = subprocess.run([*cli, "status", "--router", manifest["router"], "--data-dir", str(tmp_path / "x")],
                                 capture_output=True, text=True, timeout=60)
        assert nowhere.returncode == 2 and "--data-dir" in nowhere.stderr
        certs = tmp_path / "certs"
        assert (certs / "ca.crt").is_file() and oct((certs / "admin.token").stat().st_mode & 0o777) == "0o600"
        assert "sha256:" in (certs / "tokens").read_text()
        assert (certs / "admin.token").read_text().strip() not in (certs / "tokens").read_text()  # only hashes
        with _client(manifest) as client:
            before = client.search("the harbour crane records", k=5).hits
    finally:
        _stop(proc, manifest)

    proc, manifest = _up(tmp_path)  # same data dir: the same data comes back
    try:
        with _client(manifest) as client:
            assert client.status().documents == 35
            after = client.search("the harbour crane records", k=5).hits
            assert [h.id for h in after] == [h.id for h in before]
            assert [h.text for h in after] == [h.text for h in before]
            # the query is re-embedded by a new process: scores agree to float noise
            assert all(abs(a.score - b.score) < 1e-5 for a, b in zip(after, before, strict=True))
    finally:
        _stop(proc, manifest)


def test_up_refuses_another_shard_count_on_existing_data(tmp_path):
    (tmp_path / "layout.json").write_text(json.dumps({"shards": 3, "metric": "ip"}))
    result = subprocess.run([sys.executable, "-m", "ragcluster.tools.cli", "up", "--shards", "2", "--generators", "0",
                             "--data-dir", str(tmp_path), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--shards 3" in result.stderr
