"""Structural checks on rendered Kubernetes objects. Each check returns a list of problems (empty = ok),
so tests can also show that a broken manifest is caught."""

from __future__ import annotations

from collections.abc import Iterable

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
LONG_RUNNING = ("Deployment", "StatefulSet", "DaemonSet")


def name(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def of_kind(objs: Iterable[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def pod_templates(objs: Iterable[dict]) -> list[tuple[dict, dict]]:
    """(owner, pod template {metadata, spec}) for every workload and bare Pod."""
    out = []
    for o in objs:
        if o["kind"] in WORKLOAD_KINDS:
            out.append((o, o["spec"]["template"]))
        elif o["kind"] == "Pod":
            out.append((o, {"metadata": o["metadata"], "spec": o["spec"]}))
    return out


def matches(selector: dict, labels: dict) -> bool:
    """matchLabels / matchExpressions (In, NotIn, Exists, DoesNotExist) or a plain label map."""
    if selector is None:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pods_matching(objs: list[dict], selector: dict, namespace: str) -> list[tuple[dict, dict]]:
    return [(owner, tpl) for owner, tpl in pod_templates(objs)
            if owner["metadata"].get("namespace") == namespace and matches(selector, tpl["metadata"].get("labels", {}))]


def container_ports(tpl: dict) -> list[dict]:
    return [p for c in tpl["spec"]["containers"] for p in c.get("ports", [])]


def check_selectors_match_own_pods(objs: list[dict]) -> list[str]:
    """Every workload's selector matches its own pod template (the API server refuses otherwise)."""
    return [f"{name(o)}: selector does not match its pod template labels" for o in objs
            if o["kind"] in ("Deployment", "StatefulSet") and
            not matches(o["spec"]["selector"], o["spec"]["template"]["metadata"].get("labels", {}))]


def check_services(objs: list[dict]) -> list[str]:
    """Every Service selects pods of a workload; its target ports exist on those pods' containers."""
    problems = []
    for svc in of_kind(objs, "Service"):
        pods = pods_matching(objs, svc["spec"].get("selector"), svc["metadata"]["namespace"])
        pods = [(o, t) for o, t in pods if o["kind"] in LONG_RUNNING]
        if not pods:
            problems.append(f"{name(svc)}: selector matches no pod template")
            continue
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for owner, tpl in pods:
                ports = container_ports(tpl)
                if not any(p.get("name") == target or p["containerPort"] == target for p in ports):
                    problems.append(f"{name(svc)}: targetPort {target!r} not on {name(owner)}")
    return problems


def check_statefulsets(objs: list[dict]) -> list[str]:
    problems = []
    services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in of_kind(objs, "Service")}
    for sts in of_kind(objs, "StatefulSet"):
        spec = sts["spec"]
        svc = services.get((sts["metadata"]["namespace"], spec.get("serviceName")))
        if svc is None:
            problems.append(f"{name(sts)}: serviceName {spec.get('serviceName')!r} names no Service")
            continue
        if svc["spec"].get("clusterIP") != "None":
            problems.append(f"{name(sts)}: Service {svc['metadata']['name']} is not headless")
        if not matches(svc["spec"].get("selector"), spec["template"]["metadata"]["labels"]):
            problems.append(f"{name(sts)}: its headless Service does not select its pods")
        if spec.get("podManagementPolicy") != "Parallel":
            problems.append(f"{name(sts)}: podManagementPolicy is not Parallel")
        claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        if not claims:
            problems.append(f"{name(sts)}: no volumeClaimTemplates")
        for c in spec["template"]["spec"]["containers"]:
            mounted = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
            data_dir = next((e.get("value") for e in c.get("env", []) if e["name"] == "RAGCLUSTER_DATA_DIR"), None)
            if data_dir and not any(mounted.get(claim) == data_dir for claim in claims):
                problems.append(f"{name(sts)}: RAGCLUSTER_DATA_DIR {data_dir} is not on a claim volume")
        anti = spec["template"]["spec"].get("affinity", {}).get("podAntiAffinity", {})
        terms = [t for t in anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])] + [
            t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
        if not any(t["topologyKey"] == "kubernetes.io/hostname" and
                   matches(t["labelSelector"], spec["template"]["metadata"]["labels"]) for t in terms):
            problems.append(f"{name(sts)}: no pod anti-affinity keeping its replicas on different nodes")
    return problems


def check_probes(objs: list[dict]) -> list[str]:
    """Long-running containers: startup, liveness and readiness probes, native gRPC, on a declared port."""
    problems = []
    for owner, tpl in pod_templates(objs):
        if owner["kind"] not in LONG_RUNNING:
            continue
        for c in tpl["spec"]["containers"]:
            ports = {p["containerPort"] for p in c.get("ports", [])}
            names = {p.get("name") for p in c.get("ports", [])}
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = c.get(kind)
                if probe is None:
                    problems.append(f"{name(owner)}/{c['name']}: no {kind}")
                    continue
                if "grpc" not in probe:
                    problems.append(f"{name(owner)}/{c['name']}: {kind} is not a native gRPC probe")
                    continue
                port = probe["grpc"]["port"]
                if port not in ports and port not in names:
                    problems.append(f"{name(owner)}/{c['name']}: {kind} port {port} is not a container port")
    return problems


def check_security(objs: list[dict]) -> list[str]:
    problems = []
    for owner, tpl in pod_templates(objs):
        spec = tpl["spec"]
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            problems.append(f"{name(owner)}: pod runAsNonRoot not set")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name(owner)}: pod seccompProfile not RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name(owner)}: service account token mounted")
        writable = {v["name"] for v in spec.get("volumes", [])} | {
            t["metadata"]["name"] for t in owner["spec"].get("volumeClaimTemplates", [])}
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name(owner)}/{c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root file system not read-only")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities not dropped")
            if sc.get("capabilities", {}).get("add"):
                problems.append(f"{where}: capabilities added")
            for section in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in c.get("resources", {}).get(section, {}):
                        problems.append(f"{where}: no {res} {section}")
            for m in c.get("volumeMounts", []):
                if m["name"] not in writable:
                    problems.append(f"{where}: mount {m['name']} names no volume")
    return problems


def check_pdbs(objs: list[dict]) -> list[str]:
    """Each PDB selects pods of one workload and allows at least one voluntary disruption (else node
    drains block forever)."""
    problems = []
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objs, "HorizontalPodAutoscaler")}
    for p in of_kind(objs, "PodDisruptionBudget"):
        owners = [o for o, _ in pods_matching(objs, p["spec"]["selector"], p["metadata"]["namespace"])
                  if o["kind"] in LONG_RUNNING]
        if not owners:
            problems.append(f"{name(p)}: selector matches no pods")
            continue
        hpa = hpas.get(owners[0]["metadata"]["name"])
        replicas = hpa["spec"]["minReplicas"] if hpa else sum(o["spec"].get("replicas", 1) for o in owners)
        if "minAvailable" in p["spec"] and replicas - int(p["spec"]["minAvailable"]) < 1:
            problems.append(f"{name(p)}: minAvailable {p['spec']['minAvailable']} of {replicas} pods blocks drains")
        if "maxUnavailable" in p["spec"] and int(p["spec"]["maxUnavailable"]) < 1:
            problems.append(f"{name(p)}: maxUnavailable below 1 blocks drains")
    return problems


def check_network_policies(objs: list[dict]) -> list[str]:
    """Each policy selects real pods; its peers' pod selectors match real pods (same namespace peers);
    named ports exist on the selected pods. Every pod is covered by some policy."""
    problems = []
    policies = of_kind(objs, "NetworkPolicy")
    for np in policies:
        ns = np["metadata"]["namespace"]
        selected = pods_matching(objs, np["spec"]["podSelector"], ns)
        if not selected:
            problems.append(f"{name(np)}: podSelector matches no pods")
        port_names = {p.get("name") for _, t in selected for p in container_ports(t)}
        for rule in np["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if isinstance(port.get("port"), str) and port["port"] not in port_names:
                    problems.append(f"{name(np)}: port {port['port']!r} not on the selected pods")
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer and \
                        not pods_matching(objs, peer["podSelector"], ns):
                    problems.append(f"{name(np)}: peer podSelector {peer['podSelector']} matches no pods")
    if policies:
        for owner, tpl in pod_templates(objs):
            ns = owner["metadata"]["namespace"]
            if not any(np["metadata"]["namespace"] == ns and
                       matches(np["spec"]["podSelector"], tpl["metadata"].get("labels", {})) for np in policies):
                problems.append(f"{name(owner)}: no NetworkPolicy selects its pods")
    return problems


def check_hpa(objs: list[dict]) -> list[str]:
    problems = []
    workloads = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    for hpa in of_kind(objs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = workloads.get((ref["kind"], ref["name"]))
        if target is None:
            problems.append(f"{name(hpa)}: scaleTargetRef {ref} names no object")
            continue
        labels = target["spec"]["template"]["metadata"]["labels"]
        if labels.get("app.kubernetes.io/component") != "router":
            problems.append(f"{name(hpa)}: does not target the router")
        if "replicas" in target["spec"]:
            problems.append(f"{name(hpa)}: {name(target)} sets replicas, fighting the HPA")
        if hpa["spec"]["minReplicas"] > hpa["spec"]["maxReplicas"]:
            problems.append(f"{name(hpa)}: minReplicas > maxReplicas")
    return problems


def check_service_monitors(objs: list[dict]) -> list[str]:
    problems = []
    for sm in of_kind(objs, "ServiceMonitor"):
        namespaces = sm["spec"].get("namespaceSelector", {}).get("matchNames", [sm["metadata"]["namespace"]])
        services = [s for s in of_kind(objs, "Service") if s["metadata"]["namespace"] in namespaces and
                    matches(sm["spec"]["selector"], s["metadata"].get("labels", {}))]
        if not services:
            problems.append(f"{name(sm)}: selects no Service")
        for ep in sm["spec"]["endpoints"]:
            for svc in services:
                if ep["port"] not in {p.get("name") for p in svc["spec"]["ports"]}:
                    problems.append(f"{name(sm)}: port {ep['port']!r} not on {name(svc)}")
        components = {s["metadata"]["labels"].get("app.kubernetes.io/component") for s in services}
        for wanted in ("shard", "router"):
            if wanted not in components:
                problems.append(f"{name(sm)}: scrapes no {wanted}")
    return problems


def check_gpu_generators(objs: list[dict]) -> list[str]:
    """GPU generators: nvidia.com/gpu limit, a toleration or node selector for GPU nodes, /dev/shm in
    memory, a startup probe that allows minutes of model load, a model volume mounted read-only."""
    problems = []
    for owner, tpl in pod_templates(objs):
        if tpl["metadata"]["labels"].get("app.kubernetes.io/component") != "generator":
            continue
        spec = tpl["spec"]
        c = spec["containers"][0]
        where = name(owner)
        if "nvidia.com/gpu" not in c["resources"].get("limits", {}):
            problems.append(f"{where}: no nvidia.com/gpu limit")
        if not spec.get("nodeSelector") and not spec.get("tolerations"):
            problems.append(f"{where}: no node selector or toleration for GPU nodes")
        shm = [v for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        if not any(m["mountPath"] == "/dev/shm" and m["name"] in {v["name"] for v in shm}
                   for m in c.get("volumeMounts", [])):
            problems.append(f"{where}: /dev/shm is not a memory emptyDir")
        sp = c.get("startupProbe", {})
        if sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3) < 300:
            problems.append(f"{where}: startup probe allows less than 5 minutes of model load")
        model = next((e["value"] for e in c["env"] if e["name"] == "RAGCLUSTER_MODEL"), "")
        if not any(model.startswith(m["mountPath"] + "/") and m.get("readOnly") for m in c.get("volumeMounts", [])):
            problems.append(f"{where}: model {model!r} is not on a read-only model volume")
    return problems


def ALL_CHECKS() -> list:
    return [check_selectors_match_own_pods, check_services, check_statefulsets, check_probes, check_security,
            check_pdbs, check_network_policies, check_hpa, check_service_monitors]
