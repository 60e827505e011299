#!/usr/bin/env python3
"""Renders the pipelock-agent Helm chart with Helm's own engine.

The `helm` binary is in none of the package registries this project can
use; PyPI's `helm-python-sdk` binds Helm's official Go SDK (v4) through a
C library, so this is `helm lint` plus `helm template`, not a re-implementation.

usage: render.py CHART OUT.yaml [--values FILE]... [--set-file KEY=FILE]...
                 [--name NAME] [--namespace NS]
Writes the manifests, sorted by template path, as one multi-document YAML
file; exits 1 on a lint error or a render error.
"""
import argparse
import sys

import helm_python as helm


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("chart")
    ap.add_argument("out")
    ap.add_argument("--values", action="append", default=[])
    ap.add_argument("--set-file", action="append", default=[])
    ap.add_argument("--name", default="pipelock-agent")
    ap.add_argument("--namespace", default="pipelock-system")
    a = ap.parse_args()

    values: dict = {}
    for path in a.values:
        with open(path, encoding="utf-8") as f:
            merge(values, helm.values_from_yaml(f.read()) or {})
    for spec in a.set_file:
        key, _, path = spec.partition("=")
        with open(path, encoding="utf-8") as f:
            set_path(values, key, f.read())

    lint = helm.lint(a.chart, values, strict=True, namespace=a.namespace)
    errors = [m for m in lint.get("messages", []) if m.get("severity", 0) >= 3]
    errors += [{"error": e} for e in lint.get("errors", [])]
    if errors:
        for e in errors:
            print(f"render.py: lint: {e}", file=sys.stderr)
        return 1

    with helm.Chart.load(a.chart) as chart:
        try:
            manifests = chart.render(values, name=a.name, namespace=a.namespace)
        except helm.HelmError as e:
            print(f"render.py: {e}", file=sys.stderr)
            return 1
    docs = []
    for path in sorted(manifests):
        if not path.endswith((".yaml", ".yml")):
            continue
        text = manifests[path].strip()
        # Helm drops nothing by itself: documents left empty by a false
        # `if` are skipped here, as `helm template` does.
        for part in text.split("\n---\n") if text else []:
            body = "\n".join(
                l for l in part.strip().splitlines() if l.strip() != "---"
            ).strip()
            if any(l.strip() and not l.lstrip().startswith("#") for l in body.splitlines()):
                docs.append(f"# Source: {path}\n{body}\n")
    with open(a.out, "w", encoding="utf-8") as f:
        f.write("---\n".join(docs))
    return 0


def merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v


def set_path(values: dict, dotted: str, value: str) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        values = values.setdefault(k, {})
    values[keys[-1]] = value


if __name__ == "__main__":
    sys.exit(main())
