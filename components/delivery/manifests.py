"""Kubernetes manifests for the served model version: the image built by `visionflow package --image`
(pinned by digest), run as a Deployment behind a Service, scaled by an HPA, protected by a PDB.

    render_manifests(image, lineage, options)  → {file name: YAML text}
    write_manifests(out_dir, image, lineage)   → the files, validated, plus kustomization.yaml
    validate_manifests(docs or dir)            → [] when every document passes the strict schemas
    all_in_one(docs) / podman_compatible(docs) → one multi-document file for kubectl / `podman kube play`

Apply with `kubectl apply -k OUT_DIR` (or `kubectl apply -f all-in-one.yaml`).

The image contract (components/packaging/image.py): `bentoml serve` on port 3000 as uid/gid 10001;
GET /readyz (model loaded and warmed), /livez and /healthz (alive), /metrics (Prometheus). The root
filesystem is read-only: /tmp (HOME, BentoML's temp files and Prometheus multiprocess dir, the
workspace) is an emptyDir, /var/lib/visionflow (the inference log) a PersistentVolumeClaim. Each pod
writes its own SQLite file there, inference-<pod name>.db: SQLite must not have several writers over a
shared volume. A container restart keeps the pod's name and so its file; a replaced pod starts a new
file and the old one stays on the volume. With replicas on several nodes the claim must be
ReadWriteMany (the default access mode; pick a storage class that offers it, e.g. NFS, EFS,
Filestore, Azure Files); ReadWriteOnce only works when every replica lands on one node.

The API key is a Secret the manifests reference but never contain (no key in git):

    kubectl create secret generic visionflow-api-key --from-literal=api-key="$(openssl rand -hex 32)" [-n NAMESPACE]

It is required by default (ManifestOptions.require_api_key): the image binds 0.0.0.0, and only the
CLI refuses a non-loopback bind without a key, so without the Secret a pod stays in
CreateContainerConfigError ("secret not found") instead of serving without authentication.

Shutdown: on SIGTERM (tini forwards it) BentoML's circus arbiter sends SIGTERM to its uvicorn workers;
each stops accepting and finishes the requests in flight, for at most the image's
`--timeout-graceful-shutdown` (components/packaging/image.py, 20 s), and no request lives longer than
the service's traffic timeout (30 s, serving/service.py) anyway. So the grace period is the preStop
drain (5 s, while endpoints and kube-proxy forget the pod, which still serves) + 30 s for the longest
request in flight + 10 s to flush the inference log and exit = 45 s.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from components.errors import VisionflowError
from serving.settings import Settings

IMAGE_PORT = 3000  # the image's CMD: bentoml serve --port 3000
UID = 10001  # the image's USER
DATA_DIR = "/var/lib/visionflow"
API_KEY_SECRET = "visionflow-api-key"
API_KEY_SECRET_KEY = "api-key"
REQUEST_TIMEOUT_S = 30  # serving/service.py: @bentoml.service(traffic={"timeout": 30})
PRESTOP_DRAIN_S = 5  # the pod serves on while its endpoint is removed everywhere
EXIT_MARGIN_S = 10  # inference log flush, worker and arbiter exit
GRACE_PERIOD_S = PRESTOP_DRAIN_S + REQUEST_TIMEOUT_S + EXIT_MARGIN_S
K8S_VERSION = "1.30"  # the oldest minor still offered by the big managed clusters; newer ones accept the same fields
COMPONENT = "model-server"
LINEAGE_KEYS = ("model_name", "model_version", "run_id", "data_version", "params_hash", "git_commit")
# serving knobs in the ConfigMap: env var → serving.settings.Settings field (the default comes from there)
KNOBS = {
    "VISIONFLOW_WORKERS": "workers",
    "VISIONFLOW_BATCHING": "batching",
    "VISIONFLOW_MAX_BATCH_SIZE": "max_batch_size",
    "VISIONFLOW_MAX_LATENCY_MS": "max_latency_ms",
    "VISIONFLOW_MAX_IN_FLIGHT": "max_in_flight",
    "VISIONFLOW_ACCESS_LOG": "access_log",
    "VISIONFLOW_TORCH_THREADS": "torch_threads",
    "VISIONFLOW_LOG_SAMPLE": "log_sample",
    "VISIONFLOW_KEEP_IMAGES": "keep_images",
    "VISIONFLOW_POLL_SECONDS": "poll_seconds",
}
# kubectl's and podman's apply order: what a Deployment refers to exists before it
KIND_ORDER = ("Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Service", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget")
FILES = ("configmap.yaml", "pvc.yaml", "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "kustomization.yaml")
PODMAN_KINDS = ("ConfigMap", "Deployment")  # what podman_compatible keeps (see there)

_PUSH_HINT = "push the image first: visionflow package --image --push REGISTRY/REPO prints the digest"
_DOMAIN = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]))*(?::[0-9]+)?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*")  # the distribution reference grammar
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # RFC 1035: Service names
_DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?")


class ManifestError(VisionflowError, ValueError):
    """Bad input to the manifests (an unpinned image, a bad name or count); one line saying what to do."""

    exit_code = 2


@dataclass(frozen=True)
class Lineage:
    """What the image serves and where it came from: labels (sanitized) and annotations (in full)."""

    model_name: str
    model_version: str
    run_id: str | None = None
    data_version: str | None = None
    params_hash: str | None = None
    git_commit: str | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Lineage:
        """From a lineage dict (the image's or Bento's labels, /metadata); missing or empty optional keys become None."""
        missing = [k for k in ("model_name", "model_version") if values.get(k) in (None, "")]
        if missing:
            raise ManifestError(f"lineage lacks {', '.join(missing)}: the image's labels (io.visionflow.*) name the served model")
        return cls(**{k: None if values.get(k) in (None, "") else str(values[k]) for k in LINEAGE_KEYS})


@dataclass(frozen=True)
class ManifestOptions:
    """The shape of the deployment. Resources fit one onnxruntime worker serving a small CNN
    (~300–500 MB resident); raise memory with VISIONFLOW_WORKERS, each worker holds its own model."""

    name: str = "visionflow"  # Deployment, Service, HPA and PDB; ConfigMap and PVC get suffixes
    namespace: str | None = None  # None: the one kubectl is pointed at
    replicas: int = 2
    max_replicas: int | None = None  # HPA ceiling; None: 2 × replicas
    target_cpu_percent: int = 70  # HPA: average CPU use over the requests
    min_available: int | None = None  # PDB; None: 1 (0 with a single replica, so node drains are never blocked)
    cpu_request: str = "500m"
    cpu_limit: str | None = "2"  # None: no CPU limit (no throttling; the request still schedules and scales)
    memory_request: str = "512Mi"
    memory_limit: str = "1Gi"
    port: int = 3000  # the Service's port; the container always listens on IMAGE_PORT
    service_type: str = "ClusterIP"
    storage_size: str = "1Gi"  # the inference log PVC
    storage_class: str | None = None  # None: the cluster's default class
    storage_access_mode: str = "ReadWriteMany"
    tmp_size: str = "1Gi"  # the /tmp emptyDir: uploads in flight, Prometheus files
    require_api_key: bool = True  # the Secret reference is optional only when False
    knobs: Mapping[str, str | int | float | bool] = field(default_factory=dict, hash=False)  # VISIONFLOW_* or Settings field name → value


# ---- checks ----


def check_image(image: str) -> str:
    """`image` if it is a reference pinned by digest (REGISTRY/REPO[:TAG]@sha256:<64 hex>); else ManifestError."""
    ref = image.strip()
    if "@" not in ref:
        raise ManifestError(f"image {ref!r} is not pinned by digest (a tag can move): give REGISTRY/REPO@sha256:<64 hex>; {_PUSH_HINT}")
    name_tag, _, digest = ref.partition("@")
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise ManifestError(f"image digest {digest!r} is not sha256:<64 lowercase hex digits>; {_PUSH_HINT}")
    name, tag = name_tag, None
    last = name_tag.rsplit("/", 1)[-1]
    if ":" in last:  # a tag (a colon before the last slash is a registry port)
        name, tag = name_tag[: len(name_tag) - len(last)] + last.split(":", 1)[0], last.split(":", 1)[1]
    if not _NAME_RE.fullmatch(name) or len(name) > 255:
        raise ManifestError(f"image name {name!r} is not a valid repository (lowercase REGISTRY/REPO); {_PUSH_HINT}")
    if tag is not None and not _TAG_RE.fullmatch(tag):
        raise ManifestError(f"image tag {tag!r} is not valid (letters, digits, _ . -, up to 128); or drop it and keep the digest")
    return ref


def _check_options(o: ManifestOptions) -> None:
    if not (_DNS_LABEL.fullmatch(o.name) and len(o.name) <= 50):
        raise ManifestError(
            f"name {o.name!r} must be lowercase letters, digits and '-', start with a letter, at most 50 characters (it names the Service and pods)"
        )
    if o.namespace is not None and not (_DNS_1123_LABEL.fullmatch(o.namespace) and len(o.namespace) <= 63):
        raise ManifestError(f"namespace {o.namespace!r} must be lowercase letters, digits and '-', at most 63 characters")
    if o.replicas < 1:
        raise ManifestError(f"replicas must be at least 1 (got {o.replicas})")
    if o.max_replicas is not None and o.max_replicas < o.replicas:
        raise ManifestError(f"max_replicas {o.max_replicas} is below replicas {o.replicas}: the HPA scales between them")
    if o.min_available is not None and not 0 <= o.min_available < o.replicas:
        raise ManifestError(f"min_available must be 0..replicas-1 (got {o.min_available} with {o.replicas} replicas): at replicas it blocks every node drain")
    if not 1 <= o.target_cpu_percent <= 100:
        raise ManifestError(f"target_cpu_percent must be 1..100 (got {o.target_cpu_percent})")
    if not 1 <= o.port <= 65535:
        raise ManifestError(f"port must be 1..65535 (got {o.port})")
    if o.service_type not in ("ClusterIP", "NodePort", "LoadBalancer"):
        raise ManifestError(f"service_type {o.service_type!r}: use ClusterIP, NodePort or LoadBalancer")
    if o.storage_access_mode not in ("ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"):
        raise ManifestError(f"storage_access_mode {o.storage_access_mode!r}: use ReadWriteMany (replicas on several nodes) or ReadWriteOnce")
    if o.storage_class is not None and not _DNS_SUBDOMAIN.fullmatch(o.storage_class):
        raise ManifestError(f"storage_class {o.storage_class!r} is not a valid name")
    for what in ("cpu_request", "cpu_limit", "memory_request", "memory_limit", "storage_size", "tmp_size"):
        value = getattr(o, what)
        if value is not None and not _QUANTITY.fullmatch(str(value)):
            raise ManifestError(f"{what} {value!r} is not a Kubernetes quantity (e.g. 500m, 2, 512Mi, 1Gi)")


def label_value(value: str) -> str:
    """A valid label value (≤ 63 of [A-Za-z0-9._-], alphanumeric at both ends); a shortened one ends
    in 8 hex digits of the full value's sha256, so distinct values stay distinct."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip("._-")
    if len(clean) > 63:
        clean = clean[:54].rstrip("._-") + "-" + hashlib.sha256(value.encode()).hexdigest()[:8]
    return clean


def serving_env(overrides: Mapping[str, str | int | float | bool] | None = None) -> dict[str, str]:
    """The ConfigMap's serving knobs: serving.settings.Settings defaults, then `overrides` (keys are
    VISIONFLOW_* names or Settings field names)."""
    defaults = {name: f.default for name, f in Settings.model_fields.items()}
    by_field = {f: env for env, f in KNOBS.items()}
    values: dict[str, Any] = {env: defaults[f] for env, f in KNOBS.items()}
    for key, value in (overrides or {}).items():
        env = key if key in KNOBS else by_field.get(key)
        if env is None:
            raise ManifestError(f"unknown serving knob {key!r}: use one of {', '.join(KNOBS)}")
        values[env] = value
    return {env: _env_text(v) for env, v in values.items()}


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"  # serving.settings.Settings reads on/off
    return str(value)


# ---- rendering ----


def _labels(o: ManifestOptions, lineage: Lineage) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": o.name,
        "app.kubernetes.io/version": label_value(lineage.model_version),
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/part-of": "visionflow",
        "app.kubernetes.io/managed-by": "visionflow",
    }
    return {k: v for k, v in labels.items() if v}


def _selector(o: ManifestOptions) -> dict[str, str]:
    """The labels that pick the pods: stable across model versions (a Deployment's selector is immutable)."""
    return {"app.kubernetes.io/name": o.name, "app.kubernetes.io/component": COMPONENT}


def _lineage_labels(lineage: Lineage) -> dict[str, str]:
    out = {}
    for key in LINEAGE_KEYS:
        value = getattr(lineage, key)
        if value is not None and label_value(str(value)):
            out[f"visionflow.io/{key.replace('_', '-')}"] = label_value(str(value))
    return out


def _lineage_annotations(lineage: Lineage) -> dict[str, str]:
    return {f"visionflow.io/{key.replace('_', '-')}": str(getattr(lineage, key)) for key in LINEAGE_KEYS if getattr(lineage, key) is not None}


def _meta(o: ManifestOptions, name: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if o.namespace:
        meta["namespace"] = o.namespace
    meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return meta


def config_name(o: ManifestOptions) -> str:
    return f"{o.name}-serving"


def claim_name(o: ManifestOptions) -> str:
    return f"{o.name}-inference-log"


def _deployment(image: str, lineage: Lineage, o: ManifestOptions) -> dict[str, Any]:
    labels = {**_labels(o, lineage), **_lineage_labels(lineage)}
    annotations = {**_lineage_annotations(lineage), "visionflow.io/image": image}
    resources: dict[str, Any] = {
        "requests": {"cpu": o.cpu_request, "memory": o.memory_request},
        "limits": {"memory": o.memory_limit, **({"cpu": o.cpu_limit} if o.cpu_limit is not None else {})},
    }
    probe = {"port": "http", "scheme": "HTTP"}
    container = {
        "name": "server",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": IMAGE_PORT, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": config_name(o)}}],
        "env": [  # order matters: $(POD_NAME) expands only variables defined above it
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "VISIONFLOW_INFERENCE_LOG", "value": f"{DATA_DIR}/inference-$(POD_NAME).db"},
            {
                "name": "VISIONFLOW_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": API_KEY_SECRET, "key": API_KEY_SECRET_KEY, "optional": not o.require_api_key}},
            },
        ],
        "resources": resources,
        # startup: up to 2 min to import, load and warm the model before liveness counts
        "startupProbe": {"httpGet": {"path": "/livez", **probe}, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 60},
        "readinessProbe": {"httpGet": {"path": "/readyz", **probe}, "periodSeconds": 5, "timeoutSeconds": 2, "failureThreshold": 2, "successThreshold": 1},
        "livenessProbe": {"httpGet": {"path": "/livez", **probe}, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_DRAIN_S)]}}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "inference-log", "mountPath": DATA_DIR}],
    }
    pod_annotations = {**annotations, "prometheus.io/scrape": "true", "prometheus.io/port": str(IMAGE_PORT), "prometheus.io/path": "/metrics"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(o, o.name, labels, annotations),
        "spec": {
            "replicas": o.replicas,  # the HPA moves it from here; without metrics-server it stays
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": _selector(o)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels, "annotations": pod_annotations},
                "spec": {
                    "automountServiceAccountToken": False,  # the server never calls the Kubernetes API
                    "enableServiceLinks": False,  # no VISIONFLOW_PORT=tcp://… from a Service named visionflow
                    "terminationGracePeriodSeconds": GRACE_PERIOD_S,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": UID,
                        "runAsGroup": UID,
                        "fsGroup": UID,  # the claim's files belong to the server's group
                        "fsGroupChangePolicy": "OnRootMismatch",
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": _selector(o)},
                        }
                    ],
                    "containers": [container],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {"sizeLimit": o.tmp_size}},
                        {"name": "inference-log", "persistentVolumeClaim": {"claimName": claim_name(o)}},
                    ],
                },
            },
        },
    }


def _service(lineage: Lineage, o: ManifestOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(o, o.name, _labels(o, lineage)),
        "spec": {"type": o.service_type, "selector": _selector(o), "ports": [{"name": "http", "port": o.port, "targetPort": "http", "protocol": "TCP"}]},
    }


def _hpa(lineage: Lineage, o: ManifestOptions) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(o, o.name, _labels(o, lineage)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": o.name},
            "minReplicas": o.replicas,
            "maxReplicas": o.max_replicas if o.max_replicas is not None else 2 * o.replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": o.target_cpu_percent}}}],
        },
    }


def _pdb(lineage: Lineage, o: ManifestOptions) -> dict[str, Any]:
    min_available = o.min_available if o.min_available is not None else min(1, o.replicas - 1)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(o, o.name, _labels(o, lineage)),
        # AlwaysAllow: a pod that never got ready (crash loop) does not hold a node drain up
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": _selector(o)}, "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }


def _configmap(lineage: Lineage, o: ManifestOptions) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(o, config_name(o), _labels(o, lineage)), "data": serving_env(o.knobs)}


def _pvc(lineage: Lineage, o: ManifestOptions) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": [o.storage_access_mode], "volumeMode": "Filesystem", "resources": {"requests": {"storage": o.storage_size}}}
    if o.storage_class is not None:
        spec["storageClassName"] = o.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(o, claim_name(o), _labels(o, lineage)), "spec": spec}


class _Dumper(yaml.SafeDumper):
    """yaml.safe_dump without anchors: a label dict shared by two places is written out twice."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def render_documents(image: str, lineage: Lineage, options: ManifestOptions | None = None) -> dict[str, dict[str, Any]]:
    """File name → the document as a dict, in apply order (kustomization.yaml last)."""
    o = options or ManifestOptions()
    image = check_image(image)
    _check_options(o)
    if not str(lineage.model_name).strip() or not str(lineage.model_version).strip():
        raise ManifestError("lineage needs model_name and model_version: they name the served model in labels and annotations")
    docs = {
        "configmap.yaml": _configmap(lineage, o),
        "pvc.yaml": _pvc(lineage, o),
        "deployment.yaml": _deployment(image, lineage, o),
        "service.yaml": _service(lineage, o),
        "hpa.yaml": _hpa(lineage, o),
        "pdb.yaml": _pdb(lineage, o),
    }
    kustomization: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if o.namespace:
        kustomization["namespace"] = o.namespace
    kustomization["resources"] = list(docs)
    docs["kustomization.yaml"] = kustomization
    return docs


def render_manifests(image: str, lineage: Lineage, options: ManifestOptions | None = None) -> dict[str, str]:
    """File name → YAML text for the served version; the same inputs give the same bytes."""
    return {name: _dump(doc) for name, doc in render_documents(image, lineage, options).items()}


def write_manifests(out_dir: Path, image: str, lineage: Lineage, options: ManifestOptions | None = None, *, validate: bool = True) -> list[Path]:
    """Render, validate against the strict schemas (a failure is a bug here: ManifestError, nothing
    written) and write the files into `out_dir`; returns them in apply order."""
    texts = render_manifests(image, lineage, options)
    if validate:
        problems = validate_manifests(texts)
        if problems:
            raise ManifestError(f"rendered manifests fail validation ({len(problems)} problem(s)): {problems[0]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        path = out_dir / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        paths.append(path)
    return paths


# ---- one file ----


def _ordered(docs: Mapping[str, str] | Iterable[dict[str, Any]], kinds: Iterable[str] | None = None) -> list[dict[str, Any]]:
    items = _load(docs) if isinstance(docs, Mapping) else [("", d) for d in docs]
    keep = set(kinds) if kinds is not None else None
    out = [d for _, d in items if d.get("kind") != "Kustomization" and (keep is None or d.get("kind") in keep)]
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    return sorted(out, key=lambda d: rank.get(d.get("kind", ""), len(rank)))  # stable: file order within a kind


def all_in_one(docs: Mapping[str, str] | Iterable[dict[str, Any]]) -> str:
    """Every object in one multi-document YAML, ConfigMap and claim before the Deployment that uses
    them (kubectl applies in file order); the Kustomization is left out, it is not an object."""
    return "---\n".join(_dump(d) for d in _ordered(docs))


def podman_compatible(docs: Mapping[str, str] | Iterable[dict[str, Any]], *, host_port: int = IMAGE_PORT) -> str:
    """The manifests as `podman kube play` 4.3 runs them, in one file (the rendered files stay as
    they are). Podman plays ConfigMap (read by envFrom from the same file) and Deployment (one pod
    per replica, named <name>-pod-<i>); it skips Service, HPA and PDB, so they are left out here.
    The PersistentVolumeClaim is left out too: podman makes it a named volume but fails when that
    volume exists, so a second play after `podman kube down` (which keeps volumes) would fail; the
    Deployment's claimName alone creates the volume on first use, owned by the container's user,
    and finds it again on the next play (the log survives, as with a claim). Adjusted:
    - one replica: podman publishes each containerPort on the host, a second pod fails on the port;
      `host_port` picks the host's side;
    - $(POD_NAME) is written out (<name>-pod-0): podman does not expand $(VAR) in env values;
    - the livenessProbe becomes a python3 check: podman turns an httpGet probe into
      `curl http://localhost:<port>` with a named port as 0, and the image has no curl; podman
      ignores startup and readiness probes, so the check waits out the startup budget first;
    - the emptyDir gets the Deployment's name: podman makes it a volume named after the pod volume,
      shared with any other pod that uses the same name.
    Not honoured by podman 4.3: terminationGracePeriodSeconds and preStop (`podman kube down` stops
    at once; `podman pod stop -t 45 <name>-pod-0` first for a graceful stop), fsGroup, HPA/PDB. A
    required API key needs `podman secret create visionflow-api-key` holding podman_secret_json(key)."""
    import copy

    out = []
    for doc in _ordered(docs, PODMAN_KINDS):
        doc = copy.deepcopy(doc)
        if doc["kind"] == "Deployment":
            _podman_deployment(doc, host_port)
        out.append(doc)
    return "---\n".join(_dump(d) for d in out)


def _podman_deployment(doc: dict[str, Any], host_port: int) -> None:
    name = doc["metadata"]["name"]
    doc["spec"]["replicas"] = 1
    pod = doc["spec"]["template"]["spec"]
    renamed = {}
    for vol in pod.get("volumes", []):
        if "emptyDir" in vol:
            renamed[vol["name"]] = vol["name"] = f"{name}-{vol['name']}"
    for c in pod.get("containers", []):
        for mount in c.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])
        for port in c.get("ports", []):
            if port.get("containerPort") == IMAGE_PORT:
                port["hostPort"] = host_port
        known: dict[str, str] = {}
        for env in c.get("env", []):
            if (env.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                known[env["name"]] = f"{name}-pod-0"
            elif "value" in env:
                env["value"] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m, known=known: known.get(m.group(1), m.group(0)), env["value"])
                known[env["name"]] = env["value"]
        probe = c.get("livenessProbe")
        if probe and "httpGet" in probe:
            url = f"http://127.0.0.1:{IMAGE_PORT}{probe['httpGet'].get('path', '/')}"
            check = f"python3 -c 'import urllib.request as u; u.urlopen(\"{url}\", timeout={probe.get('timeoutSeconds', 1)})'"
            startup = c.get("startupProbe") or {}
            budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
            # one string: podman joins the command with spaces and runs it with sh -c
            c["livenessProbe"] = {**{k: v for k, v in probe.items() if k != "httpGet"}, "exec": {"command": [check]}, "initialDelaySeconds": budget}


def podman_secret_json(api_key: str) -> str:
    """The content podman 4.3's secretKeyRef reads: a JSON map of key → base64 value (a Secret
    document played by podman is stored as YAML, which its secretKeyRef cannot read).
    Use: podman secret create visionflow-api-key - < that text."""
    import base64
    import json

    return json.dumps({API_KEY_SECRET_KEY: base64.b64encode(api_key.encode()).decode()})


# ---- validation ----


def _load(docs: Mapping[str, str] | Path | str) -> list[tuple[str, dict[str, Any]]]:
    """(source, document) pairs from {file name: YAML text}, a directory of *.yaml or one file."""
    if isinstance(docs, Mapping):
        sources = list(docs.items())
    else:
        path = Path(docs)
        files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
        sources = [(f.name, f.read_text()) for f in files]
    out = []
    for name, text in sources:
        for i, doc in enumerate(yaml.safe_load_all(text)):
            if doc is not None:
                out.append((name if i == 0 else f"{name}#{i + 1}", doc))
    return out


def validate_manifests(docs: Mapping[str, str] | Path | str | Iterable[dict[str, Any]], k8s_version: str = K8S_VERSION) -> list[str]:
    """Problems, one line each; [] when every document is valid. Each object is checked against
    kubernetes-validate's bundled strict schemas (offline; an unknown field is an error), then for
    what the schemas leave out: names, label and annotation syntax, selectors that match the pods, a
    Kustomization whose resources are all there. `docs` is {file name: YAML text}, a directory, one
    file, or already-parsed documents."""
    try:
        import kubernetes_validate.utils as kv
    except ImportError:
        return ["kubernetes-validate is not installed: pip install kubernetes-validate"]
    problems: list[str] = []
    try:
        if isinstance(docs, Mapping | Path | str):
            items = _load(docs)
            names = {Path(n).name for n in docs} if isinstance(docs, Mapping) else None
            if names is None and Path(docs).is_dir():
                names = {p.name for p in Path(docs).iterdir()}
        else:
            items, names = [(f"document {i + 1}", d) for i, d in enumerate(docs)], None
    except (OSError, yaml.YAMLError) as exc:
        return [f"cannot read the manifests: {str(exc).splitlines()[0]}"]
    for source, doc in items:
        if not isinstance(doc, dict) or not doc.get("kind") or not doc.get("apiVersion"):
            problems.append(f"{source}: not a Kubernetes object (no apiVersion/kind)")
            continue
        name = (doc.get("metadata") or {}).get("name")
        what = f"{source}: {doc['kind']}" + (f"/{name}" if name else "")
        if doc["kind"] == "Kustomization":
            problems += [f"{what}: {p}" for p in _check_kustomization(doc, names)]
            continue
        try:
            kv.validate(doc, k8s_version, strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path) or "(top)"
            problems.append(f"{what}: {path}: {exc.message}")
            continue
        except kv.SchemaNotFoundError as exc:
            problems.append(f"{what}: {exc.message}")
            continue
        except kv.VersionNotSupportedError:
            return [f"kubernetes-validate has no schemas for Kubernetes {k8s_version}: use one of {', '.join(sorted(set(kv.all_versions())))}"]
        problems += [f"{what}: {p}" for p in _check_semantics(doc)]
    return problems


def _check_kustomization(doc: dict[str, Any], names: set[str] | None) -> list[str]:
    problems = []
    if doc.get("apiVersion") != "kustomize.config.k8s.io/v1beta1":
        problems.append(f"apiVersion {doc.get('apiVersion')!r}: use kustomize.config.k8s.io/v1beta1")
    known = {"apiVersion", "kind", "metadata", "namespace", "resources", "labels", "commonAnnotations", "images", "namePrefix", "nameSuffix"}
    problems += [f"unknown field {k!r}" for k in doc if k not in known]
    resources = doc.get("resources")
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        return [*problems, "resources must be a list of file names"]
    if names is not None:
        problems += [f"resource {r!r} is not among the files" for r in resources if Path(r).name not in names]
    return problems


def _check_labels(where: str, labels: Any) -> list[str]:
    problems = []
    for key, value in (labels or {}).items():
        prefix, _, name = str(key).rpartition("/")
        if not (_QUALIFIED_NAME.fullmatch(name) and len(name) <= 63) or (prefix and not (_DNS_SUBDOMAIN.fullmatch(prefix) and len(prefix) <= 253)):
            problems.append(f"{where}: label key {key!r} is not a qualified name")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            problems.append(f"{where}: label {key}={value!r} is not a valid value (≤ 63 of A-Z a-z 0-9 . _ -, alphanumeric at both ends)")
    return problems


def _check_annotations(where: str, annotations: Any) -> list[str]:
    problems = []
    for key, value in (annotations or {}).items():
        prefix, _, name = str(key).rpartition("/")
        if not (_QUALIFIED_NAME.fullmatch(name) and len(name) <= 63) or (prefix and not _DNS_SUBDOMAIN.fullmatch(prefix)):
            problems.append(f"{where}: annotation key {key!r} is not a qualified name")
        if not isinstance(value, str):
            problems.append(f"{where}: annotation {key} must be a string (quote it)")
    return problems


def _check_semantics(doc: dict[str, Any]) -> list[str]:
    meta = doc.get("metadata") or {}
    name = meta.get("name")
    problems = []
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        problems.append(f"metadata.name {name!r} is not a DNS subdomain name")
    elif doc["kind"] == "Service" and not (_DNS_LABEL.fullmatch(name) and len(name) <= 63):
        problems.append(f"Service name {name!r} must be a DNS-1035 label (≤ 63, a letter first)")
    problems += _check_labels("metadata.labels", meta.get("labels"))
    problems += _check_annotations("metadata.annotations", meta.get("annotations"))
    spec = doc.get("spec") or {}
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        template = (spec.get("template") or {}).get("metadata") or {}
        problems += _check_labels("spec.template.metadata.labels", template.get("labels"))
        problems += _check_annotations("spec.template.metadata.annotations", template.get("annotations"))
        selector = (spec.get("selector") or {}).get("matchLabels") or {}
        problems += _check_labels("spec.selector.matchLabels", selector)
        pod_labels = template.get("labels") or {}
        if not selector or any(pod_labels.get(k) != v for k, v in selector.items()):
            problems.append("spec.selector.matchLabels must be non-empty and match spec.template.metadata.labels")
    elif doc["kind"] == "Service":
        problems += _check_labels("spec.selector", spec.get("selector"))
    elif doc["kind"] == "PodDisruptionBudget":
        problems += _check_labels("spec.selector.matchLabels", (spec.get("selector") or {}).get("matchLabels"))
    return problems
