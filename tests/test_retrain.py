"""Maintenance: retraining runs when the data version changed, drift exceeds the threshold, or forced."""

import shutil

import pytest

from components.tracking import mlflow_store as store
from flows.retrain import retrain_flow
from tests.conftest import REPO_ROOT, make_folder


@pytest.mark.slow
def test_retrain_decides_on_data_change_drift_and_force(project, tmp_path, tracking_env):
    shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
    src = make_folder(tmp_path / "src", classes=("cat", "dog"), per_class=15, size=(16, 16))
    quick = dict(root=str(project), profile="quick", overrides=["packaging.enabled=false"])
    first = retrain_flow(**quick, source=str(src))
    assert first["retrained"] and first["reason"] == "no champion yet"

    again = retrain_flow(**quick, source=str(src))
    assert not again["retrained"] and "data unchanged" in again["reason"]
    assert set(again["metrics"]) >= {"drift_class_tv", "drift_pixel_mean_shift", "drift_prediction_tv", "drift_score"}
    assert again["metrics"]["drift_class_tv"] == 0.0 and again["metrics"]["drift_pixel_mean_shift"] == 0.0

    # retrain_on=drift: a new data version that does not drift past the threshold is not retrained
    drifting = dict(quick, overrides=[*quick["overrides"], "schedule.retrain_on=drift", "schedule.drift_threshold=0.9"])
    same_kind = make_folder(tmp_path / "src1", classes=("cat", "dog"), per_class=16, size=(16, 16))
    calm = retrain_flow(**drifting, source=str(same_kind))
    assert not calm["retrained"] and "drift score" in calm["reason"] and calm["metrics"]["drift_score"] <= 0.9

    forced = retrain_flow(**quick, source=str(src), force=True)
    assert forced["retrained"] and forced["reason"] == "forced"

    bigger = make_folder(tmp_path / "src2", classes=("cat", "dog"), per_class=25, size=(16, 16))
    changed = retrain_flow(**quick, source=str(bigger))
    assert changed["retrained"] and changed["reason"].startswith("data version changed")
    run = store.client().get_run(changed["parent_run_id"])
    assert run.data.tags["retrain_reason"].startswith("data version changed") and "drift_score" in run.data.metrics
