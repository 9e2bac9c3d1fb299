"""The chart's values.schema.json (JSON Schema draft-07, which Helm checks on every install, upgrade, template
and lint): every values file the chart tests render validates against it — with the python `jsonschema`
package on the values Helm merges, and with Helm's own validator — and bad values are refused with a
message naming the key, before anything is rendered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the dev pins; used in this test only
import pytest
import yaml

from tests.deploy.conftest import CHART, NAMESPACE, ROOT, VALUE_SETS, render

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
# values files the deploy tests and docs render besides VALUE_SETS
EXTRA_FILES = [CHART / "values.yaml", ROOT / "deploy" / "kind" / "values.yaml"]


def _values(files: list[Path]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in files:
        values = render._merge(values, yaml.safe_load(Path(path).read_text()) or {})
    return values


def _merged(values: dict[str, Any]) -> dict[str, Any]:
    """What Helm validates: the chart's defaults coalesced with the user's values."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        merged: dict[str, Any] = chart.merge_values(values)
    return merged


def _errors(values: dict[str, Any]) -> list[tuple[str, str]]:
    """(dotted key, message) of every schema violation of the merged values."""
    errors = jsonschema.Draft7Validator(SCHEMA).iter_errors(_merged(values))
    return sorted((".".join(str(p) for p in e.absolute_path), e.message) for e in errors)


def test_schema_is_draft_07():
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["additionalProperties"] is False


def test_schema_covers_every_top_level_key():
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(defaults) <= set(SCHEMA["properties"]), set(defaults) - set(SCHEMA["properties"])
    for key in ("tls", "auth", "image", "shards", "router", "generators"):
        assert key in SCHEMA["required"], key
    tls = SCHEMA["properties"]["tls"]["properties"]
    assert tls["enabled"] == {"type": "boolean"}
    assert SCHEMA["properties"]["auth"]["properties"]["enabled"] == {"type": "boolean"}


@pytest.mark.parametrize("files", [*VALUE_SETS.values(), *[[f] for f in EXTRA_FILES]],
                         ids=[*VALUE_SETS, *[str(f.relative_to(ROOT)) for f in EXTRA_FILES]])
def test_every_rendered_values_file_validates(files):
    import helm_python as helm

    values = _values(files)
    assert _errors(values) == []
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)  # Helm's own validator (raises on a violation)


@pytest.mark.parametrize("values, key, helm_path", [
    ({"insecure": True}, "", "'insecure'"),  # TLS is turned off with tls.enabled=false, not a new key
    ({"tls": {"enabled": "no"}}, "tls.enabled", "/tls/enabled"),
    ({"tls": {"certManager": {"duration": "90 days"}}}, "tls.certManager.duration", "/tls/certManager/duration"),
    ({"tls": {"healthPort": 70000}}, "tls.healthPort", "/tls/healthPort"),
    ({"tls": {"mountPath": "etc/tls"}}, "tls.mountPath", "/tls/mountPath"),
    ({"auth": {"enabled": "yes"}}, "auth.enabled", "/auth/enabled"),
    ({"auth": {"apiKeys": ["secret"]}}, "auth", "'apiKeys'"),  # keys come from a Secret of hashes only
    ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy", "/image/pullPolicy"),
    ({"shards": {"image": {"digest": "latest"}}}, "shards.image.digest", "/shards/image/digest"),
    ({"shards": {"replicas": 0}}, "shards.replicas", "/shards/replicas"),
    ({"shards": {"metric": "dot"}}, "shards.metric", "/shards/metric"),
    ({"router": {"resources": {"limits": {"cpu": "lots"}}}}, "router.resources.limits.cpu",
     "/router/resources/limits/cpu"),
    ({"router": {"resources": {"limits": None}}}, "router.resources", "/router/resources"),
    ({"router": {"writeQuorum": "some"}}, "router.writeQuorum", "/router/writeQuorum"),
    ({"generators": {"model": "Qwen/Qwen2.5-7B-Instruct"}}, "generators.model", "/generators/model"),
])
def test_bad_values_are_refused_naming_the_key(values, key, helm_path):
    errors = _errors(values)
    assert errors and all(k == key for k, _ in errors), errors
    if helm_path.startswith("'"):  # an unknown key: the message names it
        assert any(helm_path.strip("'") in message for _, message in errors), errors
    with pytest.raises(Exception, match=helm_path) as refused:  # Helm refuses it before rendering
        _render(values)
    assert "schema" in str(refused.value)


def _render(values: dict[str, Any]) -> None:
    """Render with ``values`` as a values file (Helm refuses values that break the schema)."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values, f)
        f.flush()
        render.render([f.name], namespace=NAMESPACE)
