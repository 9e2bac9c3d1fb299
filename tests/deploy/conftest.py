"""Render the Helm chart once per values set (through Helm's Go SDK, helm-python-sdk) for the deploy tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "helm"))
import render  # type: ignore[import-not-found]  # noqa: E402  (deploy/helm/render.py, on sys.path above)

CHART = ROOT / "deploy" / "helm" / "ragcluster"
VALUE_SETS = {
    "default": [],
    "production": [CHART / "values-production.yaml"],
    "kind": [ROOT / "deploy" / "kind" / "values.yaml"],
    "tls-off": [ROOT / "tests" / "deploy" / "values" / "tls-off.yaml"],
    "existing-secrets": [ROOT / "tests" / "deploy" / "values" / "existing-secrets.yaml"],
    "trust-bundle": [ROOT / "tests" / "deploy" / "values" / "trust-bundle.yaml"],
}
NAMESPACE = "rag"


@pytest.fixture(scope="session")
def rendered_sets(tmp_path_factory) -> dict[str, dict]:
    """{set name: {"objects": [...], "file": Path of the multi-document YAML, "rendered": {path: text}}}."""
    out = {}
    folder = tmp_path_factory.mktemp("chart")
    for set_name, files in VALUE_SETS.items():
        rendered = render.render(files, name="rag", namespace=NAMESPACE)
        path = folder / f"{set_name}.yaml"
        path.write_text(render.to_stream(rendered))
        out[set_name] = {"objects": render.objects(rendered), "file": path, "rendered": rendered}
    return out


@pytest.fixture(params=list(VALUE_SETS))
def rendered(request, rendered_sets) -> dict:
    return rendered_sets[request.param] | {"name": request.param}
