"""docker/k8s: the manifests agree with each other and with the app (probes on routes it
serves, env vars it reads, Secret keys that exist), Redis persists to a claim, and they pass
the Kubernetes schemas (kubernetes-validate), kustomize (kubectl) and kubeconform where those
are installed."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from service.settings import WEAK_TOKENS
from testkit.tools import require_tool
from tests.docker.conftest import (
    DOCKER,
    assert_redis_keeps_writes_across_a_crash,
    redis_options,
)

K8S = DOCKER / "k8s"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
# Every document of every manifest that kustomization.yaml lists.
DOCS: list[dict[str, Any]] = [
    doc
    for name in KUSTOMIZATION["resources"]
    for doc in yaml.safe_load_all((K8S / name).read_text())
    if doc is not None
]


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in DOCS if d["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in of_kind(kind) if d["metadata"]["name"] == name]
    return doc


def containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(deployment, container) for every container of every Deployment."""
    for deployment in of_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield deployment, container


SERVE = one("Deployment", "recsys-serve")
[SERVE_CONTAINER] = SERVE["spec"]["template"]["spec"]["containers"]
REDIS = one("Deployment", "redis")
[REDIS_CONTAINER] = REDIS["spec"]["template"]["spec"]["containers"]


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A port given by number or by the container's name for it."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def test_kustomization_lists_every_manifest():
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(KUSTOMIZATION["resources"]) == manifests


def test_every_document_has_api_version_kind_and_name():
    assert DOCS
    for doc in DOCS:
        assert doc.get("apiVersion") and doc.get("kind"), doc
        assert doc.get("metadata", {}).get("name"), doc


def test_the_deployment_runs_two_replicas_of_the_serving_image():
    assert SERVE["spec"]["replicas"] == 2
    images = {i["name"] for i in KUSTOMIZATION["images"]}
    assert SERVE_CONTAINER["image"] in images  # the tag is set in kustomization.yaml


def test_probes_are_on_routes_the_app_serves(get_routes):
    readiness = SERVE_CONTAINER["readinessProbe"]["httpGet"]
    liveness = SERVE_CONTAINER["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz" and liveness["path"] == "/healthz"
    assert {readiness["path"], liveness["path"]} <= get_routes
    for probe in (readiness, liveness):
        assert port_number(SERVE_CONTAINER, probe["port"]) == 8000


def test_the_service_targets_the_containers_port_and_selects_its_pods():
    for service in of_kind("Service"):
        [deployment] = [
            d
            for d in of_kind("Deployment")
            if service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        container_ports = {p["containerPort"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port_number(container, port["targetPort"]) in container_ports
    serve_port = one("Service", "recsys-serve")["spec"]["ports"][0]["targetPort"]
    assert port_number(SERVE_CONTAINER, serve_port) == 8000  # the image's PORT


def test_the_hpa_scales_the_deployment_on_cpu():
    [hpa] = of_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", SERVE["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"


def test_every_secret_ref_names_a_key_of_the_secret():
    secrets = {
        s["metadata"]["name"]: {*s.get("stringData", {}), *s.get("data", {})}
        for s in of_kind("Secret")
    }
    refs = [
        env["valueFrom"]["secretKeyRef"]
        for _, container in containers()
        for env in container.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    ]
    assert {r["key"] for r in refs} == {"REDIS_URL", "ADMIN_TOKEN"}
    for ref in refs:
        assert ref["key"] in secrets[ref["name"]], ref


def test_the_example_secret_is_a_placeholder_the_service_refuses():
    """Applied unchanged, the pods fail to start (ENVIRONMENT=production refuses weak
    tokens) instead of running with a token everyone can read here."""
    [secret] = of_kind("Secret")
    assert secret["stringData"]["ADMIN_TOKEN"] in WEAK_TOKENS
    env = {e["name"]: e.get("value") for e in SERVE_CONTAINER["env"]}
    assert env["ENVIRONMENT"] == "production"


def test_env_vars_are_settings_fields(settings_env_vars):
    names = {e["name"] for e in SERVE_CONTAINER["env"]}
    assert names <= settings_env_vars, names - settings_env_vars


def test_the_model_store_is_a_volume():
    env = {e["name"]: e.get("value") for e in SERVE_CONTAINER["env"]}
    mounts = {m["mountPath"]: m["name"] for m in SERVE_CONTAINER["volumeMounts"]}
    volumes = {v["name"]: v for v in SERVE["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[env["MODEL_DIR"]]]


def test_redis_is_listed_in_the_kustomization():
    assert "redis.yaml" in KUSTOMIZATION["resources"]


def test_redis_appends_every_write_to_a_file_flushed_every_second():
    assert "command" not in REDIS_CONTAINER  # the image's entrypoint runs the args
    options = redis_options(REDIS_CONTAINER["args"])
    assert options["appendonly"] == "yes"
    assert options["appendfsync"] == "everysec"
    assert options.get("dir", "/data") == "/data"  # the image's working directory otherwise


def test_redis_keeps_its_data_on_a_persistent_volume_claim_at_data():
    mounts = {m["mountPath"]: m["name"] for m in REDIS_CONTAINER["volumeMounts"]}
    assert "/data" in mounts, "nothing is mounted at /data"
    volumes = {v["name"]: v for v in REDIS["spec"]["template"]["spec"]["volumes"]}
    volume = volumes[mounts["/data"]]
    assert "persistentVolumeClaim" in volume, f"/data is not backed by a claim: {volume}"
    # The claim is one of the listed manifests' documents, so `kubectl apply -k` creates it.
    claim = one("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert "storage" in claim["spec"]["resources"]["requests"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # One Redis at a time on the claim: the old pod stops before the new one starts.
    assert REDIS["spec"]["replicas"] == 1
    assert REDIS["spec"]["strategy"]["type"] == "Recreate"


def test_redis_with_the_manifests_args_keeps_writes_across_a_crash(tmp_path):
    assert_redis_keeps_writes_across_a_crash(REDIS_CONTAINER["args"], tmp_path)


def test_containers_run_as_non_root_with_resource_requests_and_limits():
    for deployment, container in containers():
        pod = deployment["spec"]["template"]["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][kind].keys(), container["name"]


def test_the_manifests_pass_the_kubernetes_schemas():
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (the dev extra) is not installed"
    )
    # The oldest Kubernetes still common in managed clusters, and the newest it knows.
    for version in ("1.28", kubernetes_validate.latest_version()):
        for doc in DOCS:  # strict: an unknown field (a typo) fails
            kubernetes_validate.validate(doc, version, strict=True)


def test_kustomize_renders_the_manifests():
    kubectl = require_tool("kubectl", in_ci=False)  # bookworm's is 1.20; trixie has none
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in DOCS
    )
    tag = KUSTOMIZATION["images"][0]["newTag"]
    images = [
        c["image"]
        for d in rendered
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "recsys-serve"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert images == [f"recsys-serve:{tag}"]


def test_kubeconform_accepts_the_manifests():
    # not in Debian; the schema test above covers the schemas
    kubeconform = require_tool("kubeconform", in_ci=False)
    files = [str(K8S / name) for name in KUSTOMIZATION["resources"]]
    subprocess.run([kubeconform, "-strict", "-summary", *files], check=True, timeout=120)
