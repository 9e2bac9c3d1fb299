"""The container images' Dockerfiles: hadolint-clean, multi-stage, non-root, OCI-labelled, base image
and PyTorch source as build args, pinned requirements."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
LOCKS = sorted((DOCKER / "requirements").glob("*.txt"))


def test_every_image_has_a_dockerfile():
    assert {p.name for p in DOCKERFILES} >= {"shard.Dockerfile", "router.Dockerfile", "generator-cpu.Dockerfile",
                                              "generator-gpu.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "hadolint is not installed: run `make install`"
    proc = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_policy(dockerfile):
    text = dockerfile.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) >= 2, "multi-stage: build tools stay in the build stage"
    assert re.search(r"^ARG (BASE_IMAGE|VLLM_IMAGE)=\S+:\S+", text, re.M), "base image is a pinned build arg"
    assert stages[-1][0].startswith("${"), "final stage on the base image build arg"
    final = text[text.rindex("\nFROM "):]
    user = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert user and not user[-1].startswith(("0", "root")), "final stage runs as a non-root user"
    for label in ("title", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in final, label
    assert "--no-cache-dir" in text and "ENTRYPOINT" in final
    if dockerfile.name in ("router.Dockerfile", "generator-cpu.Dockerfile"):  # they install torch themselves
        assert "ARG TORCH_INDEX_URL" in text, "the PyTorch wheel index is a build arg"


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_requirements_pinned(lock):
    lines = [ln for ln in lock.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", ln) for ln in lines), lines
    names = {ln.split("==")[0].lower().replace("_", "-") for ln in lines}
    assert not names & {"torchvision", "torchaudio", "torchcodec", "triton"}  # CUDA-only, cannot load on CPU
    if lock.stem == "shard":
        assert "torch" not in names


def test_dockerignore_keeps_context_small():
    text = (ROOT / ".dockerignore").read_text()
    assert text.splitlines()[0].startswith("#") and "\n*\n" in text, "allow-list .dockerignore"
