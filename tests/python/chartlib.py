"""Render the osprov Helm chart with the real Helm SDK (helm-python-sdk, ``helm_python``) and
read what it grants; shared by the pytest files here and by ``chart_rules.py``, which the Rust
RBAC test (tests/rbac.rs) runs."""

from __future__ import annotations

import pathlib
from typing import Any

import helm_python as helm
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "osprov"
RELEASE = "osprov"
NAMESPACE = "osprov-system"


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """All objects the chart's templates render for ``values`` (NOTES.txt left out)."""
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def notes(values: dict[str, Any] | None = None) -> str:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in out.items() if path.endswith("NOTES.txt"))


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def service_account(docs: list[dict[str, Any]]) -> tuple[str, str]:
    dep = one(docs, "Deployment")
    return dep["spec"]["template"]["spec"]["serviceAccountName"], dep["metadata"]["namespace"]


def grants(docs: list[dict[str, Any]]) -> dict[str, list[list[str]]]:
    """(verb, group, resource[/subresource]) granted to the controller's ServiceAccount, keyed by
    namespace, "*" for cluster-wide. Wildcards are refused: the chart grants by name only."""
    sa_name, sa_ns = service_account(docs)
    by_name = {}
    for d in docs:
        if d.get("kind") in ("Role", "ClusterRole"):
            by_name[(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])] = d
    out: dict[str, set[tuple[str, str, str]]] = {}
    for b in docs:
        if b.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name
                   and s.get("namespace") == sa_ns for s in b.get("subjects", [])):
            continue
        ns = b["metadata"].get("namespace", "") if b["kind"] == "RoleBinding" else ""
        ref = b["roleRef"]
        role_ns = ns if ref["kind"] == "Role" else ""
        role = by_name.get((ref["kind"], role_ns, ref["name"]))
        assert role is not None, f"{b['kind']} {b['metadata']['name']} refers to a missing {ref}"
        scope = ns or "*"
        for rule in role.get("rules", []):
            for field in ("verbs", "apiGroups", "resources"):
                assert "*" not in rule.get(field, []), f"wildcard in {role['metadata']['name']}: {rule}"
            for verb in rule["verbs"]:
                for group in rule["apiGroups"]:
                    for res in rule["resources"]:
                        out.setdefault(scope, set()).add((verb, group, res))
    return {k: sorted(list(t) for t in v) for k, v in out.items()}
