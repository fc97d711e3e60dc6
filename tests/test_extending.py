"""A new model family is one file plus one block under `models:` in params.yaml.

The example is docs/examples/ (the docs' Extending page shows the same files): copied into a fresh
project next to its params.yaml, the quick profile trains it, evaluates it, registers it and puts it
in the report, with no other file of visionflow touched.
"""

import csv
import shutil
import sys

import pytest

from components.config import ConfigError, load_config
from components.tracking import mlflow_store as store
from flows.training_pipeline import training_pipeline
from tests.conftest import REPO_ROOT, make_folder

EXAMPLES = REPO_ROOT / "docs" / "examples"
SMALL = ["models.rnn.enabled=false", "models.cnn_lstm.enabled=false", "models.gan.enabled=false", "packaging.enabled=false"]


def _project_with_tiny(project):
    """The repo's params.yaml with the example's block as the first family, and the example module beside it."""
    params = (REPO_ROOT / "params.yaml").read_text()
    assert params.count("\nmodels:\n") == 1
    (project / "params.yaml").write_text(params.replace("\nmodels:\n", "\nmodels:\n" + (EXAMPLES / "tiny_family.yaml").read_text(), 1))
    shutil.copy(EXAMPLES / "tiny_family.py", project / "tiny_family.py")


@pytest.fixture
def clean_imports():
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name == "tiny_family":
            del sys.modules[name]


@pytest.mark.slow
def test_a_new_family_is_one_file_and_one_block(project, tmp_path, tracking_env, clean_imports):
    _project_with_tiny(project)
    cfg = load_config(project / "params.yaml", "quick")
    assert cfg.models.tiny.kind == "classifier" and cfg.models.tiny.train.epochs == 2 and cfg.models.tiny.hparams == {"width": 8}
    assert "tiny" in cfg.models.classifiers()
    assert load_config(project / "params.yaml", "quick", ["models.tiny.train.epochs=1"]).models.tiny.train.epochs == 1  # --set reaches it
    with pytest.raises(ConfigError, match="unknown key 'models.tiny.train.epohcs'"):
        load_config(project / "params.yaml", "quick", ["models.tiny.train.epohcs=1"])

    src = make_folder(tmp_path / "src", classes=("cat", "dog", "owl"), per_class=20, size=(20, 24))
    res = training_pipeline(root=str(project), profile="quick", source=str(src), overrides=SMALL)
    with open(project / ".visionflow" / "reports" / "latest" / "report.csv") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"tiny", "cnn"}
    assert rows["tiny"]["family"] == "tiny" and 0.0 <= float(rows["tiny"]["accuracy"]) <= 1.0
    assert "tiny" in res.metrics and "accuracy" in res.metrics["tiny"]
    c = store.client()
    tiny_versions = c.search_model_versions("name='visionflow-tiny'")
    assert len(tiny_versions) == 1 and tiny_versions[0].tags["val_accuracy"]
    parent = c.get_run(res.parent_run_id)
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{res.parent_run_id}'")
    tiny_run = next(r for r in children if r.info.run_name == "tiny")
    assert tiny_run.data.tags["family"] == "tiny" and "test_accuracy" in tiny_run.data.metrics


def test_a_family_whose_module_is_missing_fails_in_one_line(project, clean_imports):
    (project / "params.yaml").write_text("models:\n  tiny2:\n    module: no_such_family_module\n")
    with pytest.raises(ConfigError, match="models.tiny2.module: cannot import 'no_such_family_module'") as err:
        load_config(project / "params.yaml")
    assert "\n" not in str(err.value)
    (project / "params.yaml").write_text("models:\n  tiny3: {train: {epochs: 1}}\n")
    with pytest.raises(ConfigError, match="unknown key 'models.tiny3'"):
        load_config(project / "params.yaml")
