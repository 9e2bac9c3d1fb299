"""Pure security logic: key files and roles, URL redaction, loopback detection, certificate reload that
ignores half-written pairs, the Restore allow-list and snapshot header checks, document limits."""

from __future__ import annotations

import os
import shutil

import pytest

from ragcluster.documents import Document
from ragcluster.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated
from ragcluster.security import (
    ServerTls,
    TlsFiles,
    TokenPolicy,
    TokenStore,
    hash_token,
    identity,
    is_loopback,
    parse_token_file,
    redact_url,
)
from ragcluster.tools.certs import add_token, create_ca, issue, new_token
from ragcluster.v1 import common_pb2, shard_pb2
from shard_server.restore import FORMAT_VERSION, Expected, RestorePeers, check_header


def test_token_file_roles_and_policy(tmp_path):
    keys = {role: new_token() for role in ("read", "write", "admin")}
    path = tmp_path / "tokens"
    for role, key in keys.items():
        add_token(path, key, role, role)
    assert all(key not in path.read_text() for key in keys.values())  # only hashes are stored
    store = TokenStore(str(path), min_interval=0)
    assert [store.role_of(keys[r]) for r in ("read", "write", "admin")] == ["read", "write", "admin"]
    assert store.role_of("rc_unknown") is None
    policy = TokenPolicy(store, {"Search": "read", "Ingest": "write"})
    policy.check("Search", {"authorization": f"Bearer {keys['read']}"})
    with pytest.raises(PermissionDenied):
        policy.check("Ingest", {"authorization": f"Bearer {keys['read']}"})
    with pytest.raises(PermissionDenied):  # unlisted methods need admin
        policy.check("SomethingNew", {"authorization": f"Bearer {keys['write']}"})
    for header in ({}, {"authorization": "Basic abc"}, {"authorization": "Bearer "}):
        with pytest.raises(Unauthenticated):
            policy.check("Search", header)
    messages = set()
    for wrong in ("one", "two", keys["admin"][:-1]):
        with pytest.raises(Unauthenticated) as err:
            policy.check("Search", {"authorization": f"Bearer {wrong}"})
        messages.add(str(err.value))
    assert len(messages) == 1  # every wrong key gets the same answer


def test_token_directory_reload_and_bad_update(tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    first, second = new_token(), new_token()
    (secret / "tokens").write_text(f"{hash_token(first)} read one\n")
    store = TokenStore(str(secret), min_interval=0)
    assert store.role_of(first) == "read" and store.role_of(second) is None
    (secret / "more").write_text(f"# comment\n{hash_token(second)} admin two\n")
    assert store.role_of(second) == "admin"
    (secret / "more").write_text("garbage\n")  # broken update: previous keys stay
    assert store.role_of(second) == "admin"
    with pytest.raises(InvalidArgument):
        parse_token_file("sha256:abcd read x")
    with pytest.raises(InvalidArgument):
        parse_token_file(f"{hash_token('x')} superuser x")


def test_redact_and_loopback():
    assert redact_url("postgresql://bob:pw@h/db") == "postgresql://bob:***@h/db"
    assert "pw" not in redact_url("error connecting to mysql+pymysql://root:pw@10.0.0.1:3306/x: refused")
    assert redact_url("sqlite:///f.db") == "sqlite:///f.db"
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com"))


def test_server_tls_reloads_only_a_complete_matching_pair(tmp_path):
    ca = tmp_path / "ca"
    create_ca(ca)
    a = issue(ca, tmp_path, "a", identity("shard", 0))
    b = issue(ca, tmp_path, "b", identity("shard", 0))
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(a.cert, live_cert)
    shutil.copy(a.key, live_key)
    tls = ServerTls(TlsFiles(str(live_cert), str(live_key), str(ca / "ca.crt")), True, min_interval=0)
    assert tls.fetch() is None  # unchanged
    shutil.copy(b.cert, live_cert)  # half way through a rotation: new cert, old key
    os.utime(live_cert, ns=(1, 1))
    assert tls.fetch() is None and tls.reloads == 0
    shutil.copy(b.key, live_key)
    assert tls.fetch() is not None and tls.reloads == 1


def test_restore_allow_list(tmp_path):
    peers_file = tmp_path / "peers"
    peers = RestorePeers(["10.0.0.1:7001"], str(peers_file))
    peers.check("10.0.0.1:7001")
    with pytest.raises(PermissionDenied):
        peers.check("10.0.0.9:7001")
    peers_file.write_text("10.0.0.9:7001\n")
    peers.check("10.0.0.9:7001")  # re-read on change
    RestorePeers([], "", open_when_empty=True).check("anything:1")
    with pytest.raises(PermissionDenied):
        RestorePeers([], "", open_when_empty=False).check("anything:1")


def test_snapshot_header_checks():
    want = Expected(shard=2, dim=384, metric=common_pb2.METRIC_INNER_PRODUCT, embedding_model="m")
    def header(**change: object) -> shard_pb2.SnapshotHeader:
        h = shard_pb2.SnapshotHeader(shard=2, dim=384, metric=common_pb2.METRIC_INNER_PRODUCT, embedding_model="m",
                                     format_version=FORMAT_VERSION)
        for name, value in change.items():
            setattr(h, name, value)
        return h

    check_header(header(), want)
    check_header(header(embedding_model=""), want)  # an empty source
    for change in ({"shard": 3}, {"dim": 768}, {"metric": common_pb2.METRIC_L2}, {"embedding_model": "other"},
                   {"format_version": 0}):
        with pytest.raises(FailedPrecondition):
            check_header(header(**change), want)


def test_document_limits():
    Document("a", "text", "title", {"k": "v"}).validate()
    for doc in (Document("a", "x\ud800"), Document("a", "x", "t" * 5000), Document("a", "x", "", {"k" * 200: 1}),
                Document("a", "x", "", {"k": "v" * 9000}), Document("a" * 600, "x")):
        with pytest.raises(InvalidArgument):
            doc.validate()


def test_cli_prints_document_markup_literally():
    from rich.console import Console

    from ragcluster.tools.cli.search import hits_table
    from ragcluster.types import Coverage, Hit, SearchResult

    hit = Hit(id="[link=http://evil]x[/link]", score=1.0, shard=0, title="[bold red]T[/]",
              text="see [blink]this[/blink] \\[escaped]")
    out = Console(record=True, width=200, color_system=None)
    out.print(hits_table(SearchResult(hits=(hit,), mode="dense", coverage=Coverage(shards_answered=1, shards_total=1))))
    text = out.export_text()
    assert "[bold red]T[/]" in text and "[blink]this[/blink]" in text and "[link=http://evil]x[/link]" in text
