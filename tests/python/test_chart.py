"""The osprov Helm chart, rendered and linted by the real Helm SDK (helm-python-sdk) for the
default values and for HA, namespace-scoped, callback and monitoring variants; every rendered
object is validated against the Kubernetes JSON schemas (kubernetes-validate, strict); the
chart's CRDs are the repository's crds/ byte for byte; every environment variable the chart
sets is one `osprov controller` reads; docs/helm.md documents every value."""

from __future__ import annotations

import re
import subprocess

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from chartlib import CHART, NAMESPACE, ROOT, by_kind, grants, notes, one, render

KUBE_VERSION = "1.33.0"

HA = {"replicaCount": 3}
NAMESPACED = {"watchNamespaces": ["lab", "prod"]}
EVERYTHING = {
    "replicaCount": 2,
    "watchNamespaces": ["lab"],
    "callback": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "maxConcurrent": 4,
    "identifier": "lab-west",
    "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
}
VARIANTS = {"default": {}, "ha": HA, "namespaced": NAMESPACED, "everything": EVERYTHING}

def container(docs):
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env(docs) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs)["env"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_is_clean(variant):
    report = helm.lint(str(CHART), VARIANTS[variant], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == [], serious


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_validate_against_kubernetes_schemas(variant):
    docs = render(VARIANTS[variant])
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith(("monitoring.coreos.com/", "cert-manager.io/")):
            continue  # CRDs of prometheus-operator and cert-manager: checked in their own tests
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_validation_catches_a_broken_object():
    """The validator is strict enough to matter: a misspelt field fails."""
    doc = one(render(), "Deployment")
    doc["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_chart_crds_equal_the_repository_crds():
    chart = helm.Chart.load(str(CHART))
    in_chart = {c["name"].removeprefix("crds/"): c["data"] for c in chart.crds}
    in_repo = {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}
    assert in_repo, "crds/ is empty"
    assert in_chart == in_repo
    for text in in_chart.values():
        kubernetes_validate.validate(yaml.safe_load(text), KUBE_VERSION, strict=True)


def test_default_deployment_is_locked_down():
    docs = render()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsUser"] != 0
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9090}
    e = env(docs)
    assert e["OSPROV_METRICS_ADDR"] == "0.0.0.0:9090"
    assert e["OSPROV_IDENTIFIER"] == "osp" and e["OSPROV_LOOKUP_INTERVAL"] == "10s"
    assert e["OSPROV_LEADER_ELECT"] == "true"
    assert "OSPROV_NAMESPACES" not in e
    assert "OSPROV_CALLBACK_ADDR" not in e and "OSPROV_CALLBACK_URL" not in e
    assert c["args"] == ["controller"]
    assert c["image"] == f"osprov/osprov:{helm.Chart.load(str(CHART)).metadata['appVersion']}"
    assert by_kind(docs, "PodDisruptionBudget") == []
    assert by_kind(docs, "ServiceMonitor") == []
    assert [s["metadata"]["name"] for s in by_kind(docs, "Service")] == ["osprov-metrics"]


def test_the_binary_reads_every_setting_the_chart_passes():
    """Each OSPROV_* variable in the Deployment is one `osprov controller --help` lists."""
    help_text = subprocess.run(
        ["cargo", "run", "--quiet", "--bin", "osprov", "--", "controller", "--help"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    known = set(re.findall(r"\[env: (OSPROV_[A-Z_]+)=", help_text))
    assert "OSPROV_LEADER_ELECT" in known
    for variant in VARIANTS.values():
        for name in env(render(variant)):
            if name.startswith("OSPROV_"):
                assert name in known, f"the chart sets {name}, which osprov does not read"


def test_ha_has_leader_election_and_a_disruption_budget():
    docs = render(HA)
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 3
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    e = env(docs)
    assert e["OSPROV_LEADER_ELECT"] == "true"
    assert e["OSPROV_LEADER_ELECTION_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert e["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    lease_role = next(r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("leader-election"))
    assert lease_role["metadata"]["namespace"] == NAMESPACE
    named = [r for r in lease_role["rules"] if r.get("resourceNames")]
    assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "resourceNames": ["osprov-osp"], "verbs": ["get", "update"]}]


def test_lease_name_follows_the_identifier():
    docs = render({"identifier": "lab-west"})
    lease_role = next(r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("leader-election"))
    assert lease_role["rules"][1]["resourceNames"] == ["osprov-lab-west"]
    assert "Lease osprov-system/osprov-lab-west" in notes({"identifier": "lab-west"})


def test_replicas_without_leader_election_are_refused():
    with pytest.raises(helm.HelmError, match="leaderElection.enabled"):
        render({"replicaCount": 2, "leaderElection": {"enabled": False}})
    docs = render({"leaderElection": {"enabled": False}})
    assert env(docs)["OSPROV_LEADER_ELECT"] == "false"
    assert not any(r["metadata"]["name"].endswith("leader-election") for r in by_kind(docs, "Role"))


def test_namespaced_install_grants_roles_in_the_watched_namespaces_only():
    docs = render(NAMESPACED)
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    g = grants(docs)
    assert set(g) == {"lab", "prod", NAMESPACE}
    default = grants(render())
    secrets = [t for t in default[NAMESPACE] if t[2] == "secrets"]
    assert g["lab"] == g["prod"] == sorted(default["*"] + secrets)
    assert env(docs)["OSPROV_NAMESPACES"] == "lab,prod"


SECRET_VERBS = {"get", "list", "create", "update", "delete"}


def test_secrets_are_never_granted_cluster_wide():
    default = grants(render())
    assert not [t for t in default["*"] if t[2] == "secrets"], default["*"]
    assert {t[0] for t in default[NAMESPACE] if t[2] == "secrets"} == SECRET_VERBS
    listed = grants(render({"secretNamespaces": ["racks", "labs"]}))
    assert not [t for t in listed["*"] if t[2] == "secrets"]
    for ns in ("racks", "labs"):
        assert {t[0] for t in listed[ns] if t[2] == "secrets"} == SECRET_VERBS
    assert not [t for t in listed.get(NAMESPACE, []) if t[2] == "secrets"]


def test_network_policy_opens_only_the_callback_and_metrics_ports():
    np = one(render(), "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= \
        one(render(), "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    rules = np["spec"]["ingress"]
    assert [r["ports"][0]["port"] for r in rules] == ["metrics"]
    assert rules[0]["from"] == [{"podSelector": {}}], "metrics: this namespace only by default"
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    docs = render({"callback": {"enabled": True}, "networkPolicy": {"metricsFrom": peers}})
    rules = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert [r["ports"][0]["port"] for r in rules] == ["metrics", "callback"]
    assert rules[0]["from"] == peers
    assert "from" not in rules[1], "the hosts being installed reach the callback from anywhere"
    assert by_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_callback_service_only_when_enabled():
    assert not any(s["metadata"]["name"].endswith("-callback") for s in by_kind(render(), "Service"))
    docs = render({"callback": {"enabled": True, "port": 9443, "service": {"port": 443}}})
    svc = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-callback"))
    assert svc["spec"]["ports"] == [{"name": "callback", "port": 443, "targetPort": "callback", "protocol": "TCP"}]
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports["callback"] == 9443
    e = env(docs)
    assert e["OSPROV_CALLBACK_ADDR"] == "0.0.0.0:9443"
    # Images reach the Service (its port, not the container's) by its in-cluster name.
    svc_name = svc["metadata"]["name"]
    assert e["OSPROV_CALLBACK_URL"] == f"http://{svc_name}.{NAMESPACE}.svc:443"


def test_callback_tls_from_a_secret_or_cert_manager():
    docs = render({"callback": {"enabled": True, "tls": {"secretName": "callback-cert"}}})
    e = env(docs)
    assert e["OSPROV_CALLBACK_TLS_CERT"] == "/etc/osprov/callback-tls/tls.crt"
    assert e["OSPROV_CALLBACK_TLS_KEY"] == "/etc/osprov/callback-tls/tls.key"
    assert e["OSPROV_CALLBACK_URL"].startswith("https://"), e["OSPROV_CALLBACK_URL"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "callback-tls")
    assert vol["secret"]["secretName"] == "callback-cert"
    assert {"name": "callback-tls", "mountPath": "/etc/osprov/callback-tls", "readOnly": True} \
        in container(docs)["volumeMounts"]
    assert by_kind(docs, "Certificate") == []
    issuer = {"name": "lab-ca", "kind": "ClusterIssuer"}
    docs = render({"callback": {"enabled": True, "tls": {"certManager": {
        "enabled": True, "issuerRef": issuer, "dnsNames": ["osprov.lab.example.net"]}}}})
    cert = one(docs, "Certificate")
    secret = next(v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "callback-tls")["secret"]["secretName"]
    assert cert["spec"]["secretName"] == secret
    assert cert["spec"]["issuerRef"] == issuer
    assert "osprov.lab.example.net" in cert["spec"]["dnsNames"]
    assert f"osprov-callback.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    with pytest.raises(helm.HelmError, match="issuerRef.name"):
        render({"callback": {"enabled": True, "tls": {"certManager": {"enabled": True}}}})
    # Without TLS: plain HTTP and no mount.
    plain = env(render({"callback": {"enabled": True}}))
    assert "OSPROV_CALLBACK_TLS_CERT" not in plain and plain["OSPROV_CALLBACK_URL"].startswith("http://")


def test_callback_url_can_be_overridden():
    url = "https://osprov-callback.lab.example.net:8443/"
    e = env(render({"callback": {"enabled": True, "url": url}}))
    assert e["OSPROV_CALLBACK_URL"] == url.rstrip("/")
    assert e["OSPROV_CALLBACK_ADDR"] == "0.0.0.0:8443"
    assert "OSPROV_CALLBACK_URL" not in env(render({"callback": {"url": url}}))


def test_service_monitor():
    docs = render(EVERYTHING)
    sm = one(docs, "ServiceMonitor")
    svc = next(s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-metrics"))
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    assert sm["metadata"]["labels"]["release"] == "prom"
    with pytest.raises(helm.HelmError, match="metrics.service.enabled"):
        render({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}})


@pytest.mark.parametrize("bad", [
    {"identifier": "Lab_West"},
    {"lookupInterval": "ten seconds"},
    {"log": {"level": "info", "format": "xml"}},
    {"leaderElection": {"enabled": True, "leaseDuration": "1.5s"}},
    {"replicaCount": -1},
    {"watchNamespaces": ["Not A Namespace"]},
    {"callback": {"enabled": True, "url": "osprov.example.net:8443"}},
    {"unknownKey": 1},
])
def test_schema_rejects_bad_values(bad):
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError):
        chart.validate_schema(chart.merge_values(bad))
    with pytest.raises(helm.HelmError):
        render(bad)


def test_schema_accepts_the_defaults_and_variants():
    chart = helm.Chart.load(str(CHART))
    for values in VARIANTS.values():
        chart.validate_schema(chart.merge_values(values))


def leaf_keys(values, prefix=""):
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("resources", "podSecurityContext", "securityContext"):
            yield from leaf_keys(value, path + ".")
        else:
            yield path


def test_docs_list_every_value():
    doc = (ROOT / "docs" / "helm.md").read_text()
    doc = doc.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", doc, re.M))
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(leaf_keys(defaults)) == documented
