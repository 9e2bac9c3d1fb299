"""The chart's TLS and API-key wiring: secure by default (cert-manager Certificates with the identities the
servers check, mounted where RAGCLUSTER_TLS_* point, probes on the plaintext health port, router keys from a
Secret of hashes, each shard replica's Restore allow-list = the other replicas of its shard), explicitly off, or
from existing Secrets — parsed through the servers' real configs. The value sets "tls-off" and
"existing-secrets" also go through every check of test_chart.py (kubernetes-validate, checkov, structure)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ragcluster.config import add_config_arguments, config_from_args
from ragcluster.errors import PermissionDenied
from ragcluster.security import hash_token
from shard_server.restore import RestorePeers
from tests.deploy import chart_checks as cc
from tests.deploy.conftest import NAMESPACE, render

SERVER_TIERS = ("router", "shard", "generator")
MOUNT = "/etc/ragcluster/tls"


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def _servers(objs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(tier, owner, pod template) of every server workload."""
    out = []
    for owner, tpl in cc.pod_templates(objs):
        tier = tpl["metadata"]["labels"].get("app.kubernetes.io/component")
        if tier in SERVER_TIERS:
            out.append((tier, owner, tpl))
    return out


def _clients(objs: list[dict]) -> list[dict]:
    """Pod specs of the chart's own client pods (ingest Job, helm test Pod)."""
    return [tpl["spec"] for _, tpl in cc.pod_templates(objs)
            if tpl["metadata"]["labels"].get("app.kubernetes.io/component") == "client"]


def _volume(spec: dict, name: str) -> dict:
    return next(v for v in spec["volumes"] if v["name"] == name)


def _config(tier: str, env: dict[str, str]):
    from generator_node.config import GeneratorConfig
    from router.config import RouterConfig
    from shard_server.config import ShardConfig

    cls = {"router": RouterConfig, "shard": ShardConfig, "generator": GeneratorConfig}[tier]
    env = {k: v for k, v in env.items() if k not in ("RAGCLUSTER_MODEL", "RAGCLUSTER_VLLM_ARGS")}
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls, env=env)
    return config_from_args(cls, parser.parse_args([]))


def _identity(tier: str, owner: dict) -> str:
    if tier == "shard":
        return f"spiffe://ragcluster/shard/{owner['spec']['template']['metadata']['labels']['ragcluster.io/shard']}"
    return f"spiffe://ragcluster/{tier}"


def test_secure_by_default(rendered_sets):
    objs = rendered_sets["default"]["objects"]
    certs = {c["spec"]["secretName"]: c for c in cc.of_kind(objs, "Certificate")}
    servers = _servers(objs)
    assert {tier for tier, _, _ in servers} == set(SERVER_TIERS)
    for tier, owner, tpl in servers:
        c = tpl["spec"]["containers"][0]
        env = _env(c)
        assert "RAGCLUSTER_INSECURE" not in env, cc.name(owner)
        assert (env["RAGCLUSTER_TLS_CERT"], env["RAGCLUSTER_TLS_KEY"], env["RAGCLUSTER_TLS_CA"]) == (
            f"{MOUNT}/tls.crt", f"{MOUNT}/tls.key", f"{MOUNT}/ca.crt")
        mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")
        assert mount["mountPath"] == MOUNT and mount["readOnly"] is True
        # the mounted Secret is the one cert-manager writes for this tier's identity
        cert = certs[_volume(tpl["spec"], "tls")["secret"]["secretName"]]
        assert cert["spec"]["uris"] == [_identity(tier, owner)], cc.name(owner)
        assert "ragcluster-internal" in cert["spec"]["dnsNames"]
        assert {"server auth", "client auth"} <= set(cert["spec"]["usages"])
        assert cert["spec"]["privateKey"]["rotationPolicy"] == "Always"
        # the kubelet's grpc probes cannot speak TLS: they go to the plaintext health port
        health = next(p for p in c["ports"] if p["name"] == "health")
        assert health["containerPort"] == int(env["RAGCLUSTER_HEALTH_PORT"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["grpc"]["port"] == health["containerPort"], (cc.name(owner), probe)
        # what the server makes of it: TLS on, the internal name checked when dialling pod IPs
        config = _config(tier, env)
        assert config.tls_files().enabled and config.tls_server_name == "ragcluster-internal"
        assert config.health_port == health["containerPort"] and config.max_connection_age_seconds > 0


def test_router_keys_by_default(rendered_sets):
    objs = rendered_sets["default"]["objects"]
    router = next(tpl for tier, _, tpl in _servers(objs) if tier == "router")
    env = _env(router["spec"]["containers"][0])
    assert _config("router", env).auth_tokens == "/etc/ragcluster/keys"
    secrets = {s["metadata"]["name"]: s for s in cc.of_kind(objs, "Secret")}
    keys = secrets[_volume(router["spec"], "keys")["secret"]["secretName"]]
    token = secrets["rag-ragcluster-admin-token"]["stringData"]["token"]
    assert len(token) >= 40
    lines = [line for line in keys["stringData"]["tokens"].splitlines() if not line.startswith("#")]
    assert lines == [f"{hash_token(token)} admin chart-admin"]  # only the hash reaches the router
    assert secrets["rag-ragcluster-admin-token"]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_client_pods_trust_the_router_and_send_a_key(rendered_sets):
    objs = rendered_sets["kind"]["objects"]  # ingest Job enabled
    clients = _clients(objs)
    assert len(clients) == 2
    for spec in clients:
        c = spec["containers"][0]
        env = _env(c)
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert env["RAGCLUSTER_TLS_CA"] == f"{mounts['router-ca']}/ca.crt"
        assert env["RAGCLUSTER_TOKEN"] == f"{mounts['token']}/token"
        ca = _volume(spec, "router-ca")["secret"]
        assert ca["secretName"] == "rag-ragcluster-router-tls"
        assert ca["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # never the router's private key
        assert _volume(spec, "token")["secret"]["secretName"] == "rag-ragcluster-admin-token"
        # what the CLI in the pod makes of its environment
        from ragcluster.tools.cli.common import ConnectOptions

        parser = argparse.ArgumentParser()
        add_config_arguments(parser, ConnectOptions, env=env)
        opts = config_from_args(ConnectOptions, parser.parse_args([]))
        assert (opts.tls_ca, opts.token, opts.insecure) == (env["RAGCLUSTER_TLS_CA"], env["RAGCLUSTER_TOKEN"], False)


def test_tls_off_only_on_purpose(rendered_sets):
    objs = rendered_sets["tls-off"]["objects"]
    assert not cc.of_kind(objs, "Certificate") and not cc.of_kind(objs, "Issuer") and not cc.of_kind(objs, "Secret")
    for tier, owner, tpl in _servers(objs):
        c = tpl["spec"]["containers"][0]
        env = _env(c)
        assert env["RAGCLUSTER_INSECURE"] == "true" and "RAGCLUSTER_TLS_CERT" not in env, cc.name(owner)
        assert not any(v["name"] == "tls" for v in tpl["spec"]["volumes"])
        assert c["readinessProbe"]["grpc"]["port"] == int(env["RAGCLUSTER_PORT"])
        assert _config(tier, env).insecure is True
    with_job = render.render([], sets=["tls.enabled=false,auth.enabled=false", "ingest.enabled=true"],
                             namespace=NAMESPACE)
    for spec in _clients(render.objects(with_job)):
        assert _env(spec["containers"][0])["RAGCLUSTER_INSECURE"] == "true"


def test_existing_secrets(rendered_sets):
    objs = rendered_sets["existing-secrets"]["objects"]
    assert not cc.of_kind(objs, "Certificate") and not cc.of_kind(objs, "Secret")
    for tier, owner, tpl in _servers(objs):
        secret = _volume(tpl["spec"], "tls")["secret"]["secretName"]
        if tier == "shard":
            shard = owner["spec"]["template"]["metadata"]["labels"]["ragcluster.io/shard"]
            assert secret == f"my-shard-tls-{shard}"
        else:
            assert secret == f"my-{tier}-tls"
        if tier == "router":
            assert _volume(tpl["spec"], "keys")["secret"]["secretName"] == "my-api-key-hashes"
    for spec in _clients(objs):
        assert _volume(spec, "token")["secret"]["secretName"] == "my-ingest-key"
        assert _volume(spec, "router-ca")["secret"]["secretName"] == "my-router-tls"


def test_own_issuer():
    objs = render.objects(render.render([], sets=["tls.certManager.issuerRef.name=corp-ca",
                                                  "tls.certManager.issuerRef.kind=ClusterIssuer"]))
    assert not cc.of_kind(objs, "Issuer")  # no self-signed bootstrap
    certs = cc.of_kind(objs, "Certificate")
    assert certs and all(c["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer",
                                                    "group": "cert-manager.io"} for c in certs)


def test_bootstrap_ca_signs_the_tiers(rendered_sets):
    objs = rendered_sets["default"]["objects"]
    issuers = {i["metadata"]["name"]: i["spec"] for i in cc.of_kind(objs, "Issuer")}
    ca = next(c for c in cc.of_kind(objs, "Certificate") if c["spec"].get("isCA"))
    assert "selfSigned" in issuers[ca["spec"]["issuerRef"]["name"]]
    tiers = [c for c in cc.of_kind(objs, "Certificate") if not c["spec"].get("isCA")]
    for cert in tiers:
        assert issuers[cert["spec"]["issuerRef"]["name"]] == {"ca": {"secretName": ca["spec"]["secretName"]}}
    assert len(tiers) == 2 + 1 + 1  # 2 shards, the router, the generators


def test_bootstrapped_ca_keeps_its_key_on_renewal(rendered_sets):
    """Renewing the CA with the same key changes no trust (tests/integration/test_ca_rotation.py); cert-manager
    >= 1.18 would otherwise make a new key, and tiers renewed at different times would refuse each other."""
    ca = next(c for c in cc.of_kind(rendered_sets["default"]["objects"], "Certificate") if c["spec"].get("isCA"))
    assert ca["spec"]["privateKey"]["rotationPolicy"] == "Never"


def test_trust_bundle_replaces_each_secrets_ca(rendered_sets):
    """tls.trustBundle: every server and the chart's client pods trust the bundle ConfigMap (old + new CA during
    a CA change), not the ca.crt of their own Secret."""
    objs = rendered_sets["trust-bundle"]["objects"]

    def bundle_file(spec: dict, container: dict, path: str) -> None:
        mount = next(m for m in container["volumeMounts"] if path == f"{m['mountPath']}/ca.crt")
        assert mount["readOnly"] is True
        assert _volume(spec, mount["name"])["configMap"] == {
            "name": "ragcluster-ca-bundle", "items": [{"key": "bundle.pem", "path": "ca.crt"}]}

    servers = _servers(objs)
    assert {tier for tier, _, _ in servers} == set(SERVER_TIERS)
    for tier, _owner, tpl in servers:
        c = tpl["spec"]["containers"][0]
        config = _config(tier, _env(c))
        bundle_file(tpl["spec"], c, config.tls_files().ca)
        assert config.tls_files().cert == f"{MOUNT}/tls.crt"  # its own certificate still comes from its Secret
    clients = _clients(objs)
    assert len(clients) == 2
    for spec in clients:
        from ragcluster.tools.cli.common import ConnectOptions

        c = spec["containers"][0]
        parser = argparse.ArgumentParser()
        add_config_arguments(parser, ConnectOptions, env=_env(c))
        bundle_file(spec, c, config_from_args(ConnectOptions, parser.parse_args([])).tls_ca)
        assert not any(v["name"] == "router-ca" for v in spec["volumes"])


@pytest.mark.parametrize("sets,message", [
    (["auth.enabled=false"], "auth.enabled=false with tls.enabled=true"),
    (["tls.certManager.enabled=false"], "tls.existingSecrets.router"),
    (["auth.existingSecret=keys"], "auth.clientTokenSecret"),
])
def test_refused_combinations(sets, message):
    with pytest.raises(Exception, match=message):
        render.render([], sets=sets)



# --- the shards' Restore allow-list ----------------------------------------------------------------------
def _kubelet_env(container: dict, pod: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it: fieldRef metadata.name, then $(VAR) references
    to variables defined earlier in the list."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), e["value"])
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[e["name"]] = pod
    return env


def _mounted_file(objs: list[dict], tpl: dict, path: str, out: Path) -> Path:
    """Where ``path`` inside the pod leads: the ConfigMap key behind the mount, written to ``out``."""
    c = tpl["spec"]["containers"][0]
    mount = next(m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    source = _volume(tpl["spec"], mount["name"])["configMap"]["name"]
    cm = next(o for o in cc.of_kind(objs, "ConfigMap") if o["metadata"]["name"] == source)
    key = path[len(mount["mountPath"]) + 1:]
    out.write_text(cm["data"][key]) if key in cm.get("data", {}) else out.unlink(missing_ok=True)
    return out


def _replica_address(sts: dict, svc: dict, replica: int) -> str:
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
    return f"{sts['metadata']['name']}-{replica}.{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{port}"


def _restore_peers(objs: list[dict], tmp_path: Path) -> dict[tuple[int, int], tuple[RestorePeers, set[str], str]]:
    """{(shard, replica): (the allow-list that replica's server builds, the other replicas of its shard, its own
    address)}, from the rendered env parsed through the real ShardConfig and the mounted ConfigMap file."""
    services = {s["metadata"]["name"]: s for s in cc.of_kind(objs, "Service")}
    out = {}
    for sts in cc.of_kind(objs, "StatefulSet"):
        tpl = sts["spec"]["template"]
        svc = services[sts["spec"]["serviceName"]]
        replicas = sts["spec"]["replicas"]
        for r in range(replicas):
            pod = f"{sts['metadata']['name']}-{r}"
            env = _kubelet_env(tpl["spec"]["containers"][0], pod)
            config = _config("shard", env)
            assert config.restore_peers_file, f"{cc.name(sts)}: no RAGCLUSTER_RESTORE_PEERS_FILE"
            peers_file = _mounted_file(objs, tpl, config.restore_peers_file, tmp_path / pod)
            # as shard_server/__main__.py builds it
            peers = RestorePeers(config.restore_peers, str(peers_file), open_when_empty=not config.tls_files().enabled)
            others = {_replica_address(sts, svc, p) for p in range(replicas) if p != r}
            out[(config.shard_id, r)] = (peers, others, _replica_address(sts, svc, r))
    return out


def test_restore_allow_list_is_the_other_replicas_of_the_same_shard(rendered, tmp_path):
    objs = rendered["objects"]
    found = _restore_peers(objs, tmp_path)
    assert found
    everyone = {own for _, _, own in found.values()}
    for (shard, replica), (peers, others, _own) in found.items():
        assert peers.allowed() == others, (shard, replica)
        for source in others:
            peers.check(source)
        if peers.allowed() or not peers.open_when_empty:  # never itself, never another shard's replica
            for source in (everyone - others):
                with pytest.raises(PermissionDenied):
                    peers.check(source)
    # the names are the ones the router dials
    from router.config import parse_shards

    router = next(d for d in cc.of_kind(objs, "Deployment") if d["metadata"]["name"].endswith("-router"))
    dialled = parse_shards([_env(router["spec"]["template"]["spec"]["containers"][0])["RAGCLUSTER_SHARD"]])
    assert {a.removeprefix("dns:///") for addrs in dialled.values() for a in addrs} == everyone


def test_restore_allow_list_three_replicas(tmp_path):
    """Production layout (4 shards x 3 replicas, TLS on): each replica may copy exactly its two peers."""
    objs = render.objects(render.render([], sets=["shards.count=4,shards.replicas=3"]))
    found = _restore_peers(objs, tmp_path)
    assert sorted(found) == [(s, r) for s in range(4) for r in range(3)]
    for (shard, _), (peers, others, own) in found.items():
        assert len(peers.allowed()) == 2 and peers.allowed() == others
        assert all(f"-shard-{shard}-" in a for a in peers.allowed())
        with pytest.raises(PermissionDenied):
            peers.check(own)
        with pytest.raises(PermissionDenied):
            peers.check(next(iter(found[((shard + 1) % 4, 0)][1])))


def test_one_replica_with_tls_refuses_every_restore(rendered_sets, tmp_path):
    for (_, _), (peers, others, own) in _restore_peers(rendered_sets["default"]["objects"], tmp_path).items():
        assert not others and not peers.allowed()
        with pytest.raises(PermissionDenied):
            peers.check(own)


def test_scaling_replicas_does_not_roll_the_shards():
    """The allow-list lives in a ConfigMap the servers re-read, not in the pod template: changing
    shards.replicas changes no shard pod template (no rolling restart), only the lists."""
    def shard_templates(replicas: int) -> list[dict]:
        objs = render.objects(render.render([], sets=[f"shards.replicas={replicas}"]))
        return [s["spec"]["template"] for s in cc.of_kind(objs, "StatefulSet")]

    assert shard_templates(2) == shard_templates(3)
