"""Kubernetes manifests for the served version (components/delivery/manifests.py): strict-schema
valid, pinned by digest, locked down, with lineage a cluster can select on. Fast: no cluster, no podman."""

from __future__ import annotations

import re

import pytest
import yaml

from components.delivery.manifests import (
    GRACE_PERIOD_S,
    K8S_VERSION,
    KNOBS,
    PRESTOP_DRAIN_S,
    Lineage,
    ManifestError,
    ManifestOptions,
    all_in_one,
    label_value,
    podman_compatible,
    render_manifests,
    validate_manifests,
    write_manifests,
)
from serving.settings import Settings
from tests.conftest import REPO_ROOT

DIGEST = "sha256:" + "0123456789abcdef" * 4
IMAGE = f"registry.example.com:5000/team/visionflow:v3@{DIGEST}"
LINEAGE = Lineage(
    model_name="visionflow-classifier",
    model_version="3",
    run_id="0f" * 16,
    data_version="md5:" + "ab" * 16,
    params_hash="c" * 16,
    git_commit="d" * 40,
)
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def docs(texts: dict[str, str]) -> dict[str, dict]:
    return {name: yaml.safe_load(text) for name, text in texts.items()}


def container(d: dict) -> dict:
    return d["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    return render_manifests(IMAGE, LINEAGE, ManifestOptions())


def test_every_document_passes_the_strict_schemas(texts):
    import kubernetes_validate.utils as kv

    latest = kv.latest_version().rsplit(".", 1)[0]
    for version in (K8S_VERSION, latest):
        assert validate_manifests(texts, version) == [], version
    kinds = [yaml.safe_load(t)["kind"] for t in texts.values()]
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Kustomization"]
    assert render_manifests(IMAGE, LINEAGE, ManifestOptions()) == texts  # deterministic
    assert not any("&id" in t or "*id" in t for t in texts.values())  # no YAML anchors


def test_the_validator_can_fail(texts):
    d = docs(texts)
    container(d)["imagePullPolicy"] = "Sometimes"  # not in the enum
    container(d)["readinessProbes"] = {}  # unknown field: an error only in strict mode
    problems = validate_manifests({"deployment.yaml": yaml.safe_dump(d["deployment.yaml"])})
    assert any("readinessProbes" in p for p in problems), problems
    d = docs(texts)
    d["service.yaml"]["metadata"]["labels"]["app.kubernetes.io/version"] = "v3 (champion)"  # the schemas accept any string
    d["kustomization.yaml"]["resources"].append("missing.yaml")
    problems = validate_manifests({n: yaml.safe_dump(x) for n, x in d.items()})
    assert any("v3 (champion)" in p for p in problems) and any("missing.yaml" in p for p in problems), problems
    assert validate_manifests({"x.yaml": "kind: Widget\napiVersion: example.com/v1\nmetadata: {name: w}\n"})  # no schema: a problem, not a pass


def test_image_is_pinned_by_digest(texts):
    assert container(docs(texts))["image"] == IMAGE
    for ok in (f"ghcr.io/org/visionflow@{DIGEST}", f"localhost:5000/visionflow@{DIGEST}"):
        assert container(docs(render_manifests(ok, LINEAGE)))["image"] == ok
    for bad in ("registry.example.com/visionflow:v3", "visionflow", "registry.example.com/visionflow@sha256:abc", f"Registry.example.com/Team/X@{DIGEST}",
                f"registry.example.com/visionflow@{DIGEST.upper()}", f"registry.example.com/visionflow@md5:{'0' * 32}"):  # fmt: skip
        with pytest.raises(ManifestError) as err:
            render_manifests(bad, LINEAGE)
        assert "\n" not in str(err.value) and "visionflow package --image --push" in str(err.value), bad


def test_probes_resources_and_shutdown(texts):
    c = container(docs(texts))
    assert c["startupProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {p["httpGet"]["port"] for p in (c["startupProbe"], c["readinessProbe"], c["livenessProbe"])} == {"http"}
    assert c["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    assert set(c["resources"]["requests"]) == {"cpu", "memory"} and "memory" in c["resources"]["limits"]
    # the grace period outlasts the preStop drain plus the longest request the server lets run
    service = (REPO_ROOT / "serving" / "service.py").read_text()
    timeout = int(re.search(r"traffic=\{\"timeout\": (\d+)", service).group(1))
    pod = docs(texts)["deployment.yaml"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == GRACE_PERIOD_S > PRESTOP_DRAIN_S + timeout
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(PRESTOP_DRAIN_S)]


def test_non_root_read_only_and_writable_paths(texts):
    d = docs(texts)
    pod = d["deployment.yaml"]["spec"]["template"]["spec"]
    c = container(d)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    assert "emptyDir" in mounts["/tmp"]
    assert mounts["/var/lib/visionflow"]["persistentVolumeClaim"]["claimName"] == d["pvc.yaml"]["metadata"]["name"]
    env = [e["name"] for e in c["env"]]  # $(POD_NAME) expands only variables defined before it
    assert env.index("POD_NAME") < env.index("VISIONFLOW_INFERENCE_LOG")
    assert next(e for e in c["env"] if e["name"] == "VISIONFLOW_INFERENCE_LOG")["value"] == "/var/lib/visionflow/inference-$(POD_NAME).db"
    key = next(e for e in c["env"] if e["name"] == "VISIONFLOW_API_KEY")["valueFrom"]["secretKeyRef"]
    assert key == {"name": "visionflow-api-key", "key": "api-key", "optional": False}
    open_key = container(docs(render_manifests(IMAGE, LINEAGE, ManifestOptions(require_api_key=False))))["env"][2]
    assert open_key["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "Secret" not in [yaml.safe_load(t)["kind"] for t in texts.values()]  # a reference only


def test_lineage_labels_are_valid_and_annotations_full():
    long = "md5:" + "e" * 70 + "/with spaces"
    lineage = Lineage("visionflow classifier/cnn", "12", run_id=None, data_version=long, params_hash="p" * 16, git_commit="d" * 40)
    d = docs(render_manifests(IMAGE, lineage))
    for meta in (d["deployment.yaml"]["metadata"], d["deployment.yaml"]["spec"]["template"]["metadata"]):
        labels = meta["labels"]
        assert all(len(v) <= 63 and LABEL_VALUE.fullmatch(v) for v in labels.values()), labels
        assert labels["visionflow.io/model-version"] == "12" and labels["app.kubernetes.io/version"] == "12"
        assert "visionflow.io/run-id" not in labels  # None: no label, no annotation
        assert meta["annotations"]["visionflow.io/data-version"] == long and meta["annotations"]["visionflow.io/model-name"] == "visionflow classifier/cnn"
        assert "visionflow.io/run-id" not in meta["annotations"]
    for key in ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"):
        assert key in d["service.yaml"]["metadata"]["labels"]
    assert label_value(long) != label_value(long[:-1] + "X")  # shortened values stay distinct
    assert label_value("a" * 80).startswith("a" * 54) and len(label_value("a" * 80)) <= 63
    # the selector does not carry the version: a Deployment's selector is immutable across rollouts
    assert set(d["deployment.yaml"]["spec"]["selector"]["matchLabels"]) == {"app.kubernetes.io/name", "app.kubernetes.io/component"}
    assert d["service.yaml"]["spec"]["selector"] == d["deployment.yaml"]["spec"]["selector"]["matchLabels"]
    assert Lineage.from_mapping({"model_name": "m", "model_version": 4, "git_commit": ""}) == Lineage("m", "4")
    with pytest.raises(ManifestError):
        Lineage.from_mapping({"model_name": "m"})


def test_kustomization_lists_every_file_written(tmp_path):
    paths = write_manifests(tmp_path / "k8s", IMAGE, LINEAGE, ManifestOptions(namespace="ml-serving"))
    assert sorted(p.name for p in (tmp_path / "k8s").iterdir()) == sorted(p.name for p in paths)
    kustomization = yaml.safe_load((tmp_path / "k8s" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == [p.name for p in paths if p.name != "kustomization.yaml"]
    assert kustomization["namespace"] == "ml-serving"
    assert validate_manifests(tmp_path / "k8s") == []
    assert all(yaml.safe_load(p.read_text()).get("metadata", {}).get("namespace") == "ml-serving" for p in paths if p.name != "kustomization.yaml")


def test_serving_knobs_come_from_settings():
    defaults = {name: f.default for name, f in Settings.model_fields.items()}
    data = docs(render_manifests(IMAGE, LINEAGE))["configmap.yaml"]["data"]
    assert set(data) == set(KNOBS)
    assert data["VISIONFLOW_BATCHING"] == ("on" if defaults["batching"] else "off")
    assert data["VISIONFLOW_WORKERS"] == str(defaults["workers"]) and float(data["VISIONFLOW_POLL_SECONDS"]) == defaults["poll_seconds"]
    data = docs(render_manifests(IMAGE, LINEAGE, ManifestOptions(knobs={"workers": 2, "VISIONFLOW_BATCHING": False})))["configmap.yaml"]["data"]
    assert data["VISIONFLOW_WORKERS"] == "2" and data["VISIONFLOW_BATCHING"] == "off"
    with pytest.raises(ManifestError, match="unknown serving knob"):
        render_manifests(IMAGE, LINEAGE, ManifestOptions(knobs={"VISIONFLOW_MODEL_URI": "x"}))


@pytest.mark.parametrize(
    "options",
    [
        ManifestOptions(replicas=0),
        ManifestOptions(name="Vision_Flow"),
        ManifestOptions(name="9lives"),
        ManifestOptions(namespace="ML"),
        ManifestOptions(replicas=2, min_available=2),
        ManifestOptions(replicas=3, max_replicas=2),
        ManifestOptions(memory_limit="1 GB"),
        ManifestOptions(service_type="Ingress"),
    ],
)
def test_bad_options_are_refused(options):
    with pytest.raises(ManifestError):
        render_manifests(IMAGE, LINEAGE, options)


def test_scaling_and_disruption_budget():
    d = docs(render_manifests(IMAGE, LINEAGE, ManifestOptions(replicas=3, max_replicas=6)))
    assert d["deployment.yaml"]["spec"]["replicas"] == 3
    assert (d["hpa.yaml"]["spec"]["minReplicas"], d["hpa.yaml"]["spec"]["maxReplicas"]) == (3, 6)
    assert d["hpa.yaml"]["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert d["pdb.yaml"]["spec"]["minAvailable"] == 1
    single = docs(render_manifests(IMAGE, LINEAGE, ManifestOptions(replicas=1)))
    assert single["pdb.yaml"]["spec"]["minAvailable"] == 0  # one replica never blocks a node drain


def test_one_file_for_kubectl_and_for_podman(texts):
    kinds = [d["kind"] for d in yaml.safe_load_all(all_in_one(texts))]
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    assert validate_manifests({"all.yaml": all_in_one(texts)}) == []
    podman = list(yaml.safe_load_all(podman_compatible(texts, host_port=18080)))
    assert [d["kind"] for d in podman] == ["ConfigMap", "Deployment"]
    dep = podman[1]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert dep["spec"]["replicas"] == 1 and c["ports"][0]["hostPort"] == 18080
    assert next(e for e in c["env"] if e["name"] == "VISIONFLOW_INFERENCE_LOG")["value"] == "/var/lib/visionflow/inference-visionflow-pod-0.db"
    assert "httpGet" not in c["livenessProbe"] and "/livez" in c["livenessProbe"]["exec"]["command"][0]
    assert render_manifests(IMAGE, LINEAGE, ManifestOptions()) == texts  # the real manifests are untouched
