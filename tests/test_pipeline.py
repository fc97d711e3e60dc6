"""The whole `training_pipeline` on the quick profile: real ephemeral Prefect, real DVC/GX, real
sqlite MLflow. Every stage runs; aliases move only when they should; failures move nothing."""

import csv
import shutil

import pytest

from components.tracking import mlflow_store as store
from flows import training_pipeline as tp
from flows.training_pipeline import PipelineResult, training_pipeline
from tests.conftest import REPO_ROOT, make_folder


def _versions(name):
    return sorted(int(v.version) for v in store.client().search_model_versions(f"name='{name}'"))


@pytest.mark.slow
def test_pipeline_end_to_end_gate_and_failures(project, tmp_path, tracking_env, monkeypatch):
    shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
    src = make_folder(tmp_path / "src", classes=("cat", "dog", "owl"), per_class=20, size=(20, 24))
    res = training_pipeline(root=str(project), profile="quick", source=str(src))
    assert isinstance(res, PipelineResult)
    assert res.champion == "1" and res.generator == "1" and "no current champion" in res.decision
    assert res.bento and res.bento.startswith("visionflow:")
    assert (project / ".visionflow" / "reports" / "bento" / "Dockerfile").exists()

    # the report: one row per model, the stable `latest` path, the required columns
    with open(project / ".visionflow" / "reports" / "latest" / "report.csv") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"cnn", "rnn", "cnn_lstm", "decision_fusion", "gan"}
    assert rows["cnn"]["gflops"] and rows["rnn"]["acc_fgsm_0.1"] and rows["gan"]["gan_test"] and not rows["gan"]["accuracy"]

    # MLflow: one parent run, one nested run per model, lineage tags, the dataset input
    c = store.client()
    parent = c.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["data_version"] == res.data_version
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{res.parent_run_id}'")
    assert {r.info.run_name for r in children} == {"cnn", "rnn", "cnn_lstm", "decision_fusion", "gan"}
    cnn_run = next(r for r in children if r.info.run_name == "cnn")
    assert {"data_version", "params_hash", "git_commit", "family"} <= set(cnn_run.data.tags)
    assert "test_accuracy" in cnn_run.data.metrics and "val_acc" in cnn_run.data.metrics
    assert len(c.get_metric_history(cnn_run.info.run_id, "train_loss")) == 1  # per-epoch callback
    assert parent.inputs.dataset_inputs[0].dataset.digest == res.data_version
    fused = next(r for r in children if r.info.run_name == "decision_fusion")
    assert 0.0 <= fused.data.metrics["alpha"] <= 1.0

    # the same data and config again: every family comes from the cache (training skipped, said so);
    # the same model is not significantly better → challenger; champion stays
    res2 = training_pipeline(root=str(project), profile="quick", source=str(src))
    assert res2.cached == ["cnn", "cnn_lstm", "gan", "rnn"]
    runs2 = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{res2.parent_run_id}'")
    cnn2 = next(r for r in runs2 if r.info.run_name == "cnn")
    assert cnn2.data.tags["cached_from"] == cnn_run.info.run_id and "test_accuracy" in cnn2.data.metrics
    assert res2.champion == "1" and store.alias_version(store.GENERATOR_MODEL, store.GENERATOR) == "1"  # the same GAN-test is not better
    assert store.alias_version(store.CLASSIFIER_MODEL, store.CHALLENGER) == "2"
    assert "not" in res2.decision
    # ... and nothing is evaluated again either: same weights, test data and evaluation code
    assert res2.evaluations_cached == ["cnn", "cnn_lstm", "decision_fusion", "gan", "rnn"]
    assert cnn2.data.tags["evaluation_cached_from"] == cnn_run.info.run_id and (project / ".visionflow" / "reports" / "latest" / "report.csv").exists()

    # a change to the evaluation code re-evaluates every model and retrains none
    real = tp.code_version
    monkeypatch.setattr(tp, "code_version", lambda parts=None: "changed" if parts == tp.EVALUATION_CODE else real(parts))
    res_eval = training_pipeline(root=str(project), profile="quick", source=str(src))
    monkeypatch.undo()
    assert res_eval.cached == ["cnn", "cnn_lstm", "gan", "rnn"] and res_eval.evaluations_cached == []
    assert res_eval.metrics["cnn"]["accuracy"] == res2.metrics["cnn"]["accuracy"]  # the same model, evaluated again
    before = {n: _versions(n) for n in (store.CLASSIFIER_MODEL, "visionflow-cnn", store.GENERATOR_MODEL)}

    # failing validation: the flow stops before training, nothing is registered or moved
    bad = make_folder(tmp_path / "bad", classes=("cat", "dog", "owl"), per_class=20, size=(20, 24))
    (bad / "cat" / "broken.png").write_bytes(b"not a png")
    state = training_pipeline(root=str(project), profile="quick", source=str(bad), return_state=True)
    assert state.is_failed() and "cat/broken.png" in state.message
    # a crash inside training: the parent run is FAILED, no version is registered, no alias moves
    with pytest.raises(Exception, match="bogus"):
        training_pipeline(root=str(project), profile="quick", source=str(src), overrides=["models.rnn.hparams.cell=bogus"])
    after = {n: _versions(n) for n in before}
    assert after == before
    assert store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION) == "1"
    failed = c.search_runs([parent.info.experiment_id], "attributes.status = 'FAILED'")
    assert any(r.data.tags.get("mlflow.parentRunId") is None for r in failed)

    # --force retrains even with unchanged data and config
    res3 = training_pipeline(root=str(project), profile="quick", source=str(src), force=True)
    assert res3.cached == [] and res3.champion == "1"
