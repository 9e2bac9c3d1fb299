"""API keys at the router (TLS, a real mTLS shard process, the real embedding model): each RPC by role,
missing/wrong keys, no hint about which keys exist, open health and reflection, keys reloaded on change."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ragcluster.channels import health_stub, sync_channel
from ragcluster.convert import document_to_pb
from ragcluster.corpus import make_documents
from ragcluster.security import ClientTls, TlsFiles, hash_token
from ragcluster.tools.certs import add_token, new_token
from ragcluster.v1 import router_pb2, router_pb2_grpc
from router.config import RouterConfig
from tests.helpers import Pki, RouterInThread, shard_process

DOC = make_documents(1, seed=5, prefix="auth")[0]

# RPC -> (role it needs, a call with a well-formed request)
CALLS = {
    "Search": ("read", lambda s, md: s.Search(router_pb2.SearchRequest(text="harbour", k=1), metadata=md, timeout=30)),
    "Ask": ("read", lambda s, md: list(s.Ask(router_pb2.AskRequest(question="why?"), metadata=md, timeout=30))),
    "Lookup": ("read", lambda s, md: s.Lookup(router_pb2.LookupRequest(ids=["a"]), metadata=md, timeout=30)),
    "ClusterStatus": ("read", lambda s, md: s.ClusterStatus(router_pb2.ClusterStatusRequest(), metadata=md,
                                                            timeout=30)),
    "Ingest": ("write", lambda s, md: list(s.Ingest(iter([router_pb2.IngestRequest(documents=[document_to_pb(DOC)])]),
                                                    metadata=md, timeout=60))),
    "Delete": ("write", lambda s, md: s.Delete(router_pb2.DeleteRequest(ids=["nothing-here"]), metadata=md,
                                               timeout=30)),
    "SwitchCollection": ("admin", lambda s, md: s.SwitchCollection(
        router_pb2.SwitchCollectionRequest(name="default", force=True), metadata=md, timeout=30)),
}
ROLES = ("read", "write", "admin")


@pytest.fixture(scope="module")
def secured(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("auth")
    pki = Pki(root)
    shard = shard_process(root, 0, 0, tls=pki.shard0).wait_ready(120)
    tokens = {role: new_token() for role in ROLES}
    key_file = root / "tokens"
    for role, token in tokens.items():
        add_token(key_file, token, role, f"{role}-key")
    config = RouterConfig(shard=[f"0={shard.grpc}"], port=0, metrics_port=-1, tls_cert=pki.router.cert,
                          tls_key=pki.router.key, tls_ca=pki.ca, auth_tokens=str(key_file))
    router = RouterInThread(config, embedder)
    channel = sync_channel(router.address, ClientTls(TlsFiles(ca=pki.ca)))
    yield router_pb2_grpc.RouterServiceStub(channel), channel, tokens, key_file, router, pki
    channel.close()
    router.stop()
    shard.terminate()


def code_of(call, stub, token: str | None) -> tuple[grpc.StatusCode, str]:
    md = [("authorization", f"Bearer {token}")] if token is not None else None
    try:
        call(stub, md)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


@pytest.mark.parametrize("method", list(CALLS))
def test_each_rpc_by_role(secured, method):
    stub, _, tokens, _, _, _ = secured
    need, call = CALLS[method]
    code, message = code_of(call, stub, None)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    wrong_code, wrong_message = code_of(call, stub, "rc_" + "x" * 43)
    assert wrong_code == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(call, stub, "rc_another-wrong-key")[1] == wrong_message  # no hint from one wrong key to the next
    for text in (message, wrong_message):
        assert not any(name in text for name in ("read-key", "write-key", "admin-key", "sha256"))
    for role in ROLES:
        code, message = code_of(call, stub, tokens[role])
        if ROLES.index(role) < ROLES.index(need):
            assert code == grpc.StatusCode.PERMISSION_DENIED, (method, role, code)
            assert tokens[role] not in message
        else:  # authorised: whatever the RPC itself answers (Ask has no generator here: UNAVAILABLE)
            assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), (method, role)


def test_health_and_reflection_stay_open(secured):
    _, channel, _, _, _, _ = secured
    check = health_stub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflect.ServerReflectionInfo(  # type: ignore[operator]
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = [s.name for r in responses for s in r.list_services_response.service]
    assert "ragcluster.v1.RouterService" in names


def test_plaintext_is_refused(secured):
    _, _, tokens, _, router, _ = secured
    with grpc.insecure_channel(router.address) as plain:
        with pytest.raises(grpc.RpcError) as err:
            router_pb2_grpc.RouterServiceStub(plain).ClusterStatus(
                router_pb2.ClusterStatusRequest(), metadata=(("authorization", f"Bearer {tokens['admin']}"),),
                timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_keys_are_reloaded_when_the_file_changes(secured):
    stub, _, tokens, key_file, _, _ = secured
    status = CALLS["ClusterStatus"][1]
    fresh = new_token()
    assert code_of(status, stub, fresh)[0] == grpc.StatusCode.UNAUTHENTICATED
    original = key_file.read_text()
    try:
        # rotation: add the new key, then retire the old read key; no restart
        rotated = [line for line in original.splitlines() if not line.startswith(hash_token(tokens["read"]))]
        key_file.write_text("\n".join([*rotated, f"{hash_token(fresh)} read new-reader"]) + "\n")
        deadline = time.monotonic() + 30
        while code_of(status, stub, fresh)[0] != grpc.StatusCode.OK:
            assert time.monotonic() < deadline, "new key never accepted"
            time.sleep(0.2)
        assert code_of(status, stub, tokens["read"])[0] == grpc.StatusCode.UNAUTHENTICATED
        # a broken file keeps the previous keys in force
        key_file.write_text("this is not a key file\n")
        time.sleep(1.5)
        assert code_of(status, stub, fresh)[0] == grpc.StatusCode.OK
    finally:
        key_file.write_text(original)
