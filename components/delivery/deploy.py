"""`visionflow deploy manifests`: the Kubernetes YAML for the version the registry says is champion,
with the image `visionflow package --image --push` recorded on that version (by digest). An image
named by hand must be one recorded on the champion: a cluster never runs a version the registry does
not serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.delivery.manifests import Lineage, ManifestError, ManifestOptions, check_image, podman_compatible, render_manifests, write_manifests
from components.delivery.podman import PODMAN_FILE
from components.tracking import mlflow_store as store

FLAVOUR_ORDER = ("slim", "full")


@dataclass(frozen=True)
class DeployPlan:
    image: str
    model_name: str
    model_version: str
    flavour: str
    files: tuple[Path, ...]


def recorded_images(tags: dict[str, str]) -> dict[str, str]:
    """{flavour: REGISTRY/REPO@sha256:…} pushed for a version (tags image.<flavour>.digest)."""
    return {f: tags[f"image.{f}.digest"] for f in FLAVOUR_ORDER if tags.get(f"image.{f}.digest")}


def choose_image(version: str, tags: dict[str, str], image: str | None, flavour: str | None) -> tuple[str, str]:
    """(image by digest, its flavour) for the champion `version`: the one named, if it is recorded on
    the version, else the recorded one of `flavour` (slim first)."""
    pushed = recorded_images(tags)
    if image:
        check_image(image)
        found = next((f for f, ref in pushed.items() if ref == image or ref.split("@")[1] == image.split("@")[1]), None)
        if found is None:
            known = ", ".join(pushed.values()) or "none pushed yet"
            raise ManifestError(f"{image} is not an image of the champion v{version} (its images: {known}); package the champion: visionflow package --image --push REGISTRY/REPO")  # fmt: skip
        return image, found
    for f in (flavour,) if flavour else FLAVOUR_ORDER:
        if f in pushed:
            return pushed[f], f
    what = f"a pushed {flavour} image" if flavour else "a pushed image"
    raise ManifestError(f"the champion v{version} has no {what}: visionflow package --image --push REGISTRY/REPO (then deploy manifests again)")


def champion_manifests(out_dir: Path, options: ManifestOptions, *, image: str | None = None, flavour: str | None = None, podman_port: int = 3000) -> DeployPlan:
    """Validate and write the manifests of the champion into `out_dir` (+ podman.yaml for `podman kube
    play`, published on the host's `podman_port`)."""
    ver = store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION)
    if ver is None:
        raise LookupError(f"{store.CLASSIFIER_MODEL} has no champion yet: run `visionflow run` (or `visionflow promote`) first")
    mv = store.client().get_model_version(store.CLASSIFIER_MODEL, ver)
    tags = dict(mv.tags or {})
    ref, chosen = choose_image(ver, tags, image, flavour)
    lineage = Lineage.from_mapping({"model_name": store.CLASSIFIER_MODEL, "model_version": ver, "run_id": mv.run_id, **tags})
    files = write_manifests(out_dir, ref, lineage, options)
    podman = Path(out_dir) / PODMAN_FILE
    podman.write_text(podman_compatible(render_manifests(ref, lineage, options), host_port=podman_port))
    return DeployPlan(ref, store.CLASSIFIER_MODEL, ver, chosen, (*files, podman))
