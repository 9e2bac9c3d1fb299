"""The Helm chart: rendered with default, production and kind values, then checked offline — the
Kubernetes schemas (kubernetes-validate --strict, two versions), security policies (checkov), helm lint,
and structural checks (tests/deploy/chart_checks.py) that the API server would not catch."""

from __future__ import annotations

import copy
import functools
import json
import operator
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy import chart_checks as cc
from tests.deploy.conftest import CHART, NAMESPACE, ROOT, render

K8S_VERSIONS = ["1.30.0", "1.37.0"]
CRD_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/")  # CRD kinds: no schema bundled, checked below
# checkov skips the chart declares (annotation checkov.io/skipN: ID=reason) — anything else must pass
ALLOWED_SKIPS = {"CKV_K8S_43", "CKV_K8S_15", "CKV_K8S_8", "CKV_K8S_9"}


def _tool(name: str) -> str:
    """A tool from the venv (`make install` puts checkov in its own venv, .venv/checkov)."""
    bin_dir = Path(sys.executable).parent
    for candidate in (bin_dir / name, bin_dir.parent / name / "bin" / name):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run `make install`")
    return found


# --- schema, policy, lint ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate_strict(rendered, version):
    proc = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", version, str(rendered["file"])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    passed = re.findall(r"^INFO .* passed for resource", out, re.M)
    builtin = [o for o in rendered["objects"] if not o["apiVersion"].startswith(CRD_GROUPS)]
    assert len(passed) == len(builtin), out
    for line in out.splitlines():
        if line.startswith(("WARN", "ERROR")):
            assert "Couldn't find schema for kind" in line and any(g.rstrip("/") in line for g in CRD_GROUPS), line


def test_checkov_no_failures(rendered_sets, tmp_path):
    files = [str(s["file"]) for s in rendered_sets.values()]
    proc = subprocess.run(
        [
            _tool("checkov"),
            "--framework",
            "kubernetes",
            "--skip-download",
            "-o",
            "json",
            *functools.reduce(operator.iadd, (["-f", f] for f in files), []),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for r in reports for c in r["results"]["failed_checks"]]
    skipped = {c["check_id"] for r in reports for c in r["results"].get("skipped_checks", [])}
    passed = sum(r["summary"]["passed"] for r in reports)
    assert not failed, failed
    assert passed > 500, reports[0]["summary"]
    assert skipped <= ALLOWED_SKIPS, skipped - ALLOWED_SKIPS


def test_checkov_skips_carry_reasons(rendered):
    for obj in rendered["objects"]:
        for key, value in obj["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check_id, _, reason = value.partition("=")
                assert check_id in ALLOWED_SKIPS and len(reason) > 20 and "=" not in reason, (cc.name(obj), value)


def test_helm_lint():
    import helm_python as helm

    candidates: list[dict[str, object]] = [{}, yaml.safe_load((CHART / "values-production.yaml").read_text())]
    for values in candidates:
        result = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
        assert not result["errors"], result
        assert all(m["severity"] <= 1 for m in result["messages"]), result["messages"]  # info only


# --- structure -------------------------------------------------------------------------------------
@pytest.mark.parametrize("check", cc.ALL_CHECKS(), ids=lambda f: f.__name__)
def test_structure(rendered, check):
    assert check(rendered["objects"]) == []


def test_every_object_namespaced_and_labelled(rendered):
    for obj in rendered["objects"]:
        meta = obj["metadata"]
        assert meta.get("namespace") == NAMESPACE, cc.name(obj)
        assert meta["labels"]["app.kubernetes.io/instance"] == "rag", cc.name(obj)


def test_production_layout(rendered_sets):
    objs = rendered_sets["production"]["objects"]
    shards = cc.of_kind(objs, "StatefulSet")
    assert len(shards) == 4 and all(s["spec"]["replicas"] == 3 for s in shards)
    hpa = cc.of_kind(objs, "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["minReplicas"] == 3
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}
    generators = [d for d in cc.of_kind(objs, "Deployment") if d["metadata"]["name"].endswith("-generator")]
    assert generators[0]["spec"]["replicas"] == 2
    assert cc.check_gpu_generators(objs) == []
    for sts in shards:  # hard anti-affinity: replicas of one shard never share a node
        assert sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
    assert {o["kind"] for o in objs} >= {"ServiceMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy"}


def test_cpu_generator_has_no_gpu(rendered_sets):
    objs = rendered_sets["default"]["objects"]
    gen = next(d for d in cc.of_kind(objs, "Deployment") if d["metadata"]["name"].endswith("-generator"))
    c = gen["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"] and c["image"].endswith("-cpu")
    assert cc.check_gpu_generators(objs)  # the GPU check does notice


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_router_reaches_every_shard_replica_by_pod_dns_name(rendered):
    from router.config import parse_shards

    objs = rendered["objects"]
    router = next(d for d in cc.of_kind(objs, "Deployment") if d["metadata"]["name"].endswith("-router"))
    shards = parse_shards([_env(router["spec"]["template"]["spec"]["containers"][0])["RAGCLUSTER_SHARD"]])
    services = {s["metadata"]["name"]: s for s in cc.of_kind(objs, "Service")}
    expected = {}
    for sts in cc.of_kind(objs, "StatefulSet"):
        shard = int(_env(sts["spec"]["template"]["spec"]["containers"][0])["RAGCLUSTER_SHARD_ID"])
        svc = services[sts["spec"]["serviceName"]]
        assert svc["spec"]["publishNotReadyAddresses"] is True  # per-pod names exist while a pod starts
        port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
        expected[shard] = [
            f"dns:///{sts['metadata']['name']}-{r}.{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{port}"
            for r in range(sts["spec"]["replicas"])
        ]
    assert shards == expected


def test_router_env_parses_into_its_config():
    """The chart's RAGCLUSTER_* values go through the router's real env parsing (one shard, 3 replicas:
    the case where a comma-separated env list would split replicas apart)."""
    import argparse

    from ragcluster.config import add_config_arguments, config_from_args
    from router.config import RouterConfig, parse_shards

    objs = render.objects(render.render(sets=["shards.count=1,shards.replicas=3"]))
    router = next(d for d in cc.of_kind(objs, "Deployment") if d["metadata"]["name"].endswith("-router"))
    env = _env(router["spec"]["template"]["spec"]["containers"][0])
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, RouterConfig, env=env)
    config = config_from_args(RouterConfig, parser.parse_args([]))
    assert list(parse_shards(config.shard)) == [0] and len(parse_shards(config.shard)[0]) == 3
    assert config.generator == [f"dns:///rag-ragcluster-generator.{NAMESPACE}.svc.cluster.local:7100"]
    assert config.host == "0.0.0.0" and config.log_json is True


def test_router_embedding_settings_run_in_the_image(rendered):
    """Every values set gives the router a backend/precision pair it accepts, and for ONNX one whose export the
    image carries (the pod's root filesystem is read-only: it could not export another)."""
    import argparse

    from ragcluster.config import add_config_arguments, config_from_args
    from router.config import RouterConfig
    from router.embedding import AUTO_DTYPE, DTYPES

    router = next(d for d in cc.of_kind(rendered["objects"], "Deployment") if d["metadata"]["name"].endswith("-router"))
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, RouterConfig, env=_env(router["spec"]["template"]["spec"]["containers"][0]))
    config = config_from_args(RouterConfig, parser.parse_args([]))
    dtype = AUTO_DTYPE[config.embedding_backend] if config.embedding_dtype == "auto" else config.embedding_dtype
    assert dtype in DTYPES[config.embedding_backend]
    if config.embedding_backend == "onnx":
        dockerfile = (ROOT / "deploy" / "docker" / "router.Dockerfile").read_text()
        assert "for d in ('auto', 'float32')" in dockerfile and set(DTYPES["onnx"]) == {AUTO_DTYPE["onnx"], "float32"}


@pytest.mark.parametrize("pair", ["embeddingBackend=onnx,router.embeddingDtype=bfloat16",
                                  "embeddingBackend=torch,router.embeddingDtype=int8"])
def test_embedding_precision_the_runtime_lacks_is_refused(pair):
    with pytest.raises(Exception, match=r"does not run on router\.embeddingBackend"):
        render.render(sets=[f"router.{pair}"])


def test_router_drains_before_the_kill(rendered):
    objs = rendered["objects"]
    router = next(d for d in cc.of_kind(objs, "Deployment") if d["metadata"]["name"].endswith("-router"))
    pod = router["spec"]["template"]["spec"]
    c = pod["containers"][0]
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = float(_env(c)["RAGCLUSTER_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > sleep + grace


def test_shard_liveness_outlasts_a_snapshot_restore(rendered):
    """A shard is NOT_SERVING while it restores a peer's snapshot (shard_server restore, 600 s timeout):
    the liveness probe must not kill it meanwhile."""
    for sts in cc.of_kind(rendered["objects"], "StatefulSet"):
        probe = sts["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] > 600, cc.name(sts)


def test_generator_model_is_a_local_path(rendered):
    """Offline (HF_HUB_OFFLINE=1) vLLM resolves a non-path model through the hub cache and fails."""
    for _owner, tpl in cc.pod_templates(rendered["objects"]):
        if tpl["metadata"]["labels"].get("app.kubernetes.io/component") == "generator":
            env = _env(tpl["spec"]["containers"][0])
            assert env["HF_HUB_OFFLINE"] == "1" and env["RAGCLUSTER_MODEL"].startswith("/"), env


def test_bad_router_grace_is_refused():
    with pytest.raises(Exception, match="terminationGracePeriodSeconds"):
        render.render(sets=["router.terminationGracePeriodSeconds=10,router.graceSeconds=20"])


@pytest.mark.parametrize("tier", ["shard", "router", "generator"])
def test_env_vars_are_real_flags(rendered, tier):
    """Every RAGCLUSTER_* variable the chart sets is a field of that tier's config dataclass."""
    import dataclasses

    from generator_node.config import GeneratorConfig
    from router.config import RouterConfig
    from shard_server.config import ShardConfig

    cls = {"shard": ShardConfig, "router": RouterConfig, "generator": GeneratorConfig}[tier]
    known = {"RAGCLUSTER_" + f.name.upper() for f in dataclasses.fields(cls)}
    known |= {"RAGCLUSTER_MODEL", "RAGCLUSTER_VLLM_ARGS"} if tier == "generator" else set()
    for owner, tpl in cc.pod_templates(rendered["objects"]):
        if tpl["metadata"]["labels"].get("app.kubernetes.io/component") != tier:
            continue
        for c in tpl["spec"]["containers"]:
            unknown = {k for k in _env(c) if k.startswith("RAGCLUSTER_")} - known
            assert not unknown, (cc.name(owner), unknown)


def test_prometheus_rules_and_dashboards_come_from_chart_files(rendered_sets):
    objs = rendered_sets["production"]["objects"]
    rule = cc.of_kind(objs, "PrometheusRule")[0]
    files = sorted((CHART / "rules").glob("*.yaml"))
    expected = [g["name"] for f in files for g in yaml.safe_load(f.read_text())["groups"]]
    assert [g["name"] for g in rule["spec"]["groups"]] == expected
    assert all(r.get("expr") for g in rule["spec"]["groups"] for r in g["rules"])
    cm = next(o for o in cc.of_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboards"))
    for key, text in cm["data"].items():
        assert json.loads(text)["panels"], key


def test_helm_test_hook_runs_status_and_search(rendered):
    pod = next(o for o in cc.of_kind(rendered["objects"], "Pod"))
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "ragcluster status" in script and "ragcluster search" in script


def test_ingest_job(rendered_sets):
    job = cc.of_kind(rendered_sets["kind"]["objects"], "Job")[0]
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "ragcluster ingest" in script and "sample_corpus.jsonl" in script
    assert job["spec"]["activeDeadlineSeconds"] > 0 and "deadline" in script  # bounded wait for the router
    url = render.objects(render.render(sets=["ingest.enabled=true,ingest.source=url,ingest.url=https://x.org/d.jsonl"]))
    script = cc.of_kind(url, "Job")[0]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "urlretrieve" in script and '"/work/d.jsonl"' in script


# --- the checks catch what they should -----------------------------------------------------------------
def _find(objs, kind, suffix):
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(suffix))


def test_checks_catch_broken_manifests(rendered_sets):
    base = rendered_sets["production"]["objects"]

    def broken(mutate) -> list[dict]:
        objs = copy.deepcopy(base)
        mutate(objs)
        return objs

    def svc_selector(objs):
        _find(objs, "Service", "-router")["spec"]["selector"]["app.kubernetes.io/component"] = "rooter"

    def not_headless(objs):
        _find(objs, "Service", "-shard-0")["spec"]["clusterIP"] = "10.0.0.1"

    def probe_port(objs):
        _find(objs, "StatefulSet", "-shard-1")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"][
            "port"
        ] = 7999

    def hpa_target(objs):
        _find(objs, "HorizontalPodAutoscaler", "-router")["spec"]["scaleTargetRef"]["name"] = "rag-ragcluster-generator"

    def pdb_selector(objs):
        _find(objs, "PodDisruptionBudget", "-shard-2")["spec"]["selector"]["matchLabels"]["ragcluster.io/shard"] = "9"

    def np_port(objs):
        _find(objs, "NetworkPolicy", "-generator")["spec"]["ingress"][1]["ports"][0]["port"] = "prom"

    def sm_port(objs):
        _find(objs, "ServiceMonitor", "ragcluster")["spec"]["endpoints"][0]["port"] = "http-metrics"

    def root_fs(objs):
        _find(objs, "Deployment", "-router")["spec"]["template"]["spec"]["containers"][0]["securityContext"][
            "readOnlyRootFilesystem"
        ] = False

    def pdb_blocks(objs):
        pdb = _find(objs, "PodDisruptionBudget", "-router")["spec"]
        pdb["minAvailable"] = 3

    def gpu(objs):
        del _find(objs, "Deployment", "-generator")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"
        ]

    cases = {
        svc_selector: cc.check_services,
        not_headless: cc.check_statefulsets,
        probe_port: cc.check_probes,
        hpa_target: cc.check_hpa,
        pdb_selector: cc.check_pdbs,
        pdb_blocks: cc.check_pdbs,
        np_port: cc.check_network_policies,
        sm_port: cc.check_service_monitors,
        root_fs: cc.check_security,
        gpu: cc.check_gpu_generators,
    }
    for mutate, check in cases.items():
        assert check(base) == [], check.__name__
        assert check(broken(mutate)), f"{check.__name__} missed {mutate.__name__}"


def test_kubernetes_validate_catches_unknown_fields(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "x"},
                "spec": {"ports": [{"port": 1}], "selectr": {"a": "b"}},
            }
        )
    )
    proc = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", K8S_VERSIONS[0], str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0


@pytest.mark.parametrize(
    "source, copy_in_chart",
    [
        ("deploy/prometheus/rules/ragcluster.rules.yml", "rules/ragcluster.rules.yaml"),
        ("deploy/prometheus/rules/ragcluster.alerts.yml", "rules/ragcluster.alerts.yaml"),
        ("deploy/grafana/ragcluster.json", "dashboards/ragcluster.json"),
    ],
)
def test_chart_ships_the_repository_rules_and_dashboard(source, copy_in_chart):
    """Helm cannot read outside the chart, so the chart carries copies; they must equal the sources."""
    assert (CHART / copy_in_chart).read_bytes() == (ROOT / source).read_bytes(), (
        f"copy {source} to {CHART / copy_in_chart}"
    )


def test_prometheus_rule_renders_every_alert(rendered_sets):
    alerts = {
        r["alert"]
        for g in yaml.safe_load((ROOT / "deploy/prometheus/rules/ragcluster.alerts.yml").read_text())["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    rendered_rules = [o for s in rendered_sets.values() for o in s["objects"] if o.get("kind") == "PrometheusRule"]
    assert rendered_rules, "no values set enables the PrometheusRule"
    for rule in rendered_rules:
        assert alerts <= {r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]}
