"""MLflow 3 against a real sqlite store and a real `mlflow server`: runs, nested runs, tags, the
model logged, registered, aliased and loaded back by `models:/NAME@champion`."""

import pytest
import torch

from components.data.datasets import DatasetSpec
from components.models import create_model
from components.tracking import mlflow_store as store
from components.workspace import Workspace
from tests.conftest import start_mlflow_server

SPEC = DatasetSpec(["a", "b", "c"], 1, (12, 12), [0.2], [0.3])


def _exercise_store(ws, uri):
    import mlflow

    _, exp = store.configure(ws, uri)
    lineage = {"data_version": "d" * 32, "params_hash": "p" * 16, "git_commit": "c" * 40}
    parent = store.start_run(exp, "pipeline", lineage, {"a.b": "1"})
    child = store.start_run(exp, "cnn", {**lineage, "family": "cnn"}, {"lr": "0.1"}, parent_id=parent)
    logger = store.EpochLogger(child)
    for epoch in range(3):
        logger(epoch, {"train_loss": 1.0 / (epoch + 1), "val_acc": 0.5 + epoch / 10, "epoch": epoch})
    torch.manual_seed(0)
    model = create_model("cnn", num_classes=3, in_channels=1, image_size=(12, 12), widths=[4, 8]).eval()
    example = torch.randn(2, 1, 12, 12).numpy()
    uri_model = store.log_model(child, model, example, SPEC.to_json(), extra_metadata={"task": "classification"})
    store.end_run(child, ok=True)
    store.end_run(parent, ok=True)

    c = store.client()
    run = c.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["data_version"] == "d" * 32
    assert [m.value for m in c.get_metric_history(child, "val_acc")] == pytest.approx([0.5, 0.6, 0.7])
    assert run.data.params["lr"] == "0.1" and run.info.status == "FINISHED"

    tags = {**lineage, "evaluated": "true", "data_validated": "true", "test_accuracy": "0.9", "task": "classification"}
    v1 = store.register_version(uri_model, store.CLASSIFIER_MODEL, tags)
    store.set_alias(store.CLASSIFIER_MODEL, store.CHAMPION, v1, reason="first")
    assert store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION) == v1
    loaded = mlflow.pytorch.load_model(f"models:/{store.CLASSIFIER_MODEL}@champion", map_location="cpu")
    x = torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-6)
    info = mlflow.models.get_model_info(f"models:/{store.CLASSIFIER_MODEL}@champion")
    assert DatasetSpec.from_json(__import__("json").dumps(info.metadata["visionflow_spec"])) == SPEC
    return uri_model, v1


def test_sqlite_store_runs_registry_aliases_and_promotion(tmp_path, tracking_env):
    ws = Workspace.at(tmp_path, home=tmp_path / ".visionflow")
    uri_model, v1 = _exercise_store(ws, None)
    assert (ws.mlflow_dir / "mlflow.db").exists() and any((ws.mlflow_dir / "artifacts").rglob("MLmodel"))
    # promotion refuses what was never evaluated, and what came from data that failed validation
    v2 = store.register_version(uri_model, store.CLASSIFIER_MODEL, {"data_validated": "true"})
    with pytest.raises(store.PromotionError, match="no evaluation"):
        store.promote(store.CLASSIFIER_MODEL, v2)
    v3 = store.register_version(uri_model, store.CLASSIFIER_MODEL, {"evaluated": "true", "test_accuracy": "0.9", "data_validated": "false"})
    with pytest.raises(store.PromotionError, match="did not pass validation"):
        store.promote(store.CLASSIFIER_MODEL, v3)
    with pytest.raises(store.PromotionError, match="not found"):
        store.promote(store.CLASSIFIER_MODEL, "99")
    assert store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION) == v1
    # a family model's version is copied into the classifier model, then promoted, tagged as manual
    fam = store.register_version(uri_model, "visionflow-cnn", {"evaluated": "true", "test_accuracy": "0.95", "data_validated": "true"})
    new = store.promote("visionflow-cnn", fam)
    mv = store.client().get_model_version(store.CLASSIFIER_MODEL, new)
    assert store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION) == new != v1
    assert mv.tags["promotion"] == "manual" and mv.tags["promoted_by"] and mv.tags["registered_from"] == f"visionflow-cnn/{fam}"


@pytest.mark.slow
def test_against_a_real_mlflow_server(tmp_path, tracking_env):
    server, port = start_mlflow_server(tmp_path)
    try:
        ws = Workspace.at(tmp_path / "client", home=tmp_path / "client" / ".visionflow")
        _exercise_store(ws, f"http://127.0.0.1:{port}")
        assert not (ws.mlflow_dir / "mlflow.db").exists()  # everything went to the server
        assert any((tmp_path / "server-artifacts").rglob("MLmodel"))
    finally:
        server.terminate()
        server.wait(timeout=30)
