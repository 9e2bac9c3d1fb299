"""Render the ragcluster chart offline, like `helm template`, through Helm's own Go SDK (the PyPI
package helm-python-sdk binds libhelm; no helm binary is needed).

    python deploy/helm/render.py [-f VALUES.yaml ...] [--set key=value ...] [--name rag] [--namespace rag]
                                 [--include-tests] [--out FILE|-]

Prints one multi-document YAML stream (hook and test manifests included with --include-tests), the
way `helm template` does; `kubernetes-validate --strict` and `checkov -f` take the output as is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent / "ragcluster"


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def render(values_files: list[str | Path] = (), sets: list[str] = (), name: str = "rag", namespace: str = "rag",
           include_tests: bool = True, chart: Path = CHART) -> dict[str, str]:
    """{template path: rendered text} for the chart with these values (files merged in order, then --set)."""
    import helm_python as helm

    values: dict[str, Any] = {}
    for path in values_files:
        values = _merge(values, yaml.safe_load(Path(path).read_text()) or {})
    for item in sets:
        values = _merge(values, helm.parse_set_string(item))
    with helm.Chart.load(str(chart)) as loaded:
        rendered = loaded.render(values, name=name, namespace=namespace, is_install=True)
    return {path: text for path, text in sorted(rendered.items())
            if path.endswith((".yaml", ".yml")) and text.strip()
            and (include_tests or "/templates/tests/" not in path)}


def objects(rendered: dict[str, str]) -> list[dict]:
    """Every Kubernetes object in the rendered templates."""
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def to_stream(rendered: dict[str, str]) -> str:
    return "".join(f"---\n# Source: {path}\n{text.strip()}\n" for path, text in rendered.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", "--values", action="append", default=[], help="values file (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="key=value (helm --set syntax)")
    parser.add_argument("--name", default="rag", help="release name")
    parser.add_argument("--namespace", default="rag")
    parser.add_argument("--include-tests", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default="-", help="output file (- = stdout)")
    args = parser.parse_args()
    stream = to_stream(render(args.values, args.set, args.name, args.namespace, args.include_tests))
    if args.out == "-":
        sys.stdout.write(stream)
    else:
        Path(args.out).write_text(stream)


if __name__ == "__main__":
    main()
