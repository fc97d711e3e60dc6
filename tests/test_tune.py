"""`visionflow tune`: the search space in params.yaml, the budget, the study in the workspace (real
Optuna on SQLite), and the command end to end (in-process CLI, real Prefect, DVC, MLflow): trials as
nested MLflow runs, pruning, the tuned profile a pipeline run can use, and a stopped search resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from components.config import ClassifierFamily, ConfigError, SearchDim, TuningConfig, flatten_search, load_config, parse_duration
from components.training import tune
from tests.conftest import REPO_ROOT

REPO_PARAMS = REPO_ROOT / "params.yaml"

# --- the space, the budget, the tuned profile (no training)


def test_budget_accepts_seconds_and_durations():
    assert parse_duration("90s") == 90 and parse_duration("20m") == 1200 and parse_duration("1h") == 3600 and parse_duration("1h30m") == 5400
    assert parse_duration(45) == 45 and parse_duration("2.5m") == 150 and TuningConfig(budget=30).budget_seconds() == 30
    for bad in ("abc", "20x", "m", "0", -5, "1h abc"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ConfigError, match=r"tuning.budget.*90s, 20m, 1h") as err:
        load_config(REPO_PARAMS, "default", ["tuning.budget=abc"])
    assert "\n" not in str(err.value)


def test_repo_spaces_hold_the_current_recipes():
    """Every family's current recipe (its autos resolved for digits and for photos) lies in its space, in every
    profile: trial 0 of a new study is the current recipe."""
    for profile in ("quick", "default", "full"):
        cfg = load_config(REPO_PARAMS, profile)
        for key, fam in cfg.models.classifiers().items():
            for channels in (1, 3):
                inside, outside = tune.current_values(fam, channels)
                assert outside == [] and set(inside) == set(fam.search), (profile, key, channels, outside)
    cnn = load_config(REPO_PARAMS, "default").models.cnn
    dims = {d.key: d for d in tune.search_dims(cnn.search)}
    assert dims["train.lr"].kind == "float" and dims["train.lr"].log and dims["train.epochs"].kind == "int" and dims["train.epochs"].step == 5
    assert dims["hparams.widths"].kind == "categorical" and [32, 64, 128] in dims["hparams.widths"].choices
    assert dims["train.crop_scale"].kind == "float"  # crop_scale takes floats: {low: 0.5, high: 1.0} is no int range


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("models.cnn.search.train.lrr=[1]", "'lrr' is not a train knob"),
        ('models.cnn.search={"optim": [1]}', "expected train.<knob> or hparams.<keyword>"),
        ('models.cnn.search={"hparams.depth": [1, 2]}', "model 'cnn' takes no 'depth'"),
        ('models.cnn.search={"train.augment": [shift, bogus]}', "'bogus' is not a valid augment"),
        ('models.cnn.search={"train.lr": {low: 1.0e-3, hi: 2}}', "a range is {low, high}"),
        ('models.cnn.search={"train.lr": {low: 0, high: 1, log: true}}', "log needs low > 0"),
        ('models.cnn.search={"train.epochs": {low: 10, high: 42, step: 5}}', "divide high - low"),
        ('models.cnn.search={"train.lr": []}', "an empty list of choices"),
        ('models.cnn.search={"train.lr": 0.1}', "expected a list of choices or a mapping"),
        ('models.cnn.search={"train.label_smoothing": {low: 0, high: 1.5}}', "is not a valid label_smoothing"),
    ],
)
def test_a_bad_space_is_one_config_error_naming_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(REPO_PARAMS, "quick", [override])
    msg = str(err.value)
    assert "models.cnn.search" in msg and words in msg and "\n" not in msg, msg


def test_space_forms_nesting_and_null():
    assert flatten_search({"train": {"lr": [1, 2]}, "hparams.dropout": {"low": 0, "high": 0.5}}) == {
        "train.lr": [1, 2],
        "hparams.dropout": {"low": 0, "high": 0.5},
    }
    assert flatten_search({"train.lr": [1], "train": {"lr": None}}) == {}  # a later null un-searches a key
    cfg = load_config(REPO_PARAMS, "quick", ["models.cnn.search.train.lr=[0.003, 1e-7]", "models.cnn.search.train.flip=null"])
    space = cfg.models.cnn.search
    assert space["train.lr"] == [0.003, 1e-7] and isinstance(space["train.lr"][1], float)  # YAML 1.1's "1e-7" string, as the knob takes it
    assert "train.flip" not in space and space["train.epochs"] == [1, 2]
    assert SearchDim("k", "int", low=10, high=40, step=5).contains(25) and not SearchDim("k", "int", low=10, high=40, step=5).contains(27)
    assert SearchDim("k", "categorical", ([32, 64], [8, 16])).contains((8, 16)) and not SearchDim("k", "categorical", (True, False)).contains(1)
    assert SearchDim("k", "categorical", (0, 0.3)).contains(0.0) and not SearchDim("k", "categorical", ("a", "b")).contains("c")
    assert SearchDim("k", "float", low=0.5, high=1.0).contains(0.6) and not SearchDim("k", "float", low=0.5, high=1.0).contains("auto")


def test_tuning_trains_nothing_so_it_is_not_in_the_params_hash():
    a = load_config(REPO_PARAMS, "default")
    assert a.hash() == load_config(REPO_PARAMS, "default", ["tuning.budget=1h", "tuning.studies={cnn: x}"]).hash()
    assert a.hash() != load_config(REPO_PARAMS, "default", ["models.cnn.train.lr=0.01"]).hash()


def _family(**search) -> ClassifierFamily:
    return ClassifierFamily.model_validate({"model": "cnn", "hparams": {"widths": [8, 16]}, "train": {"lr": 0.003, "epochs": 2}, "search": search})


def test_study_name_is_deterministic_and_moves_with_space_recipe_and_data():
    fam = _family(**{"train.lr": [0.003, 0.01]})
    name = tune.family_study_name("cnn", fam, "abcdef0123456789")
    assert name == tune.family_study_name("cnn", _family(**{"train.lr": [0.003, 0.01]}), "abcdef0123456789") and name.startswith("cnn-abcdef01-")
    assert name != tune.family_study_name("cnn", _family(**{"train.lr": [0.003, 0.02]}), "abcdef0123456789")
    assert name != tune.family_study_name("cnn", fam, "0123456789abcdef")
    other = ClassifierFamily.model_validate({**fam.model_dump(), "train": {**fam.train.model_dump(), "weight_decay": 0.0}})
    assert name != tune.family_study_name("cnn", other, "abcdef0123456789")


def test_prepare_study_queues_the_current_recipe_and_requeues_a_killed_trial(tmp_path):
    """Real Optuna on SQLite: trial 0 is the current recipe; a trial left RUNNING becomes FAIL and its values run again."""
    from optuna.trial import TrialState

    fam = _family(**{"train.lr": [0.003, 0.01], "hparams.widths": [[8, 16], [16, 32]]})
    url, tcfg = tune.storage_url(tmp_path), TuningConfig()
    plan = tune.prepare_study("cnn", fam, "abcdef0123456789", url, 1, tcfg)
    assert plan.default_queued and plan.outside == () and plan.requeued == ()
    study = tune.open_study(plan.study, url, tcfg)
    trial = study.ask()  # what `optimize` does: the queued trial first
    dims = tune.search_dims(fam.search)
    assert {d.key: tune._suggest(trial, d) for d in dims} == {"hparams.widths": [8, 16], "train.lr": 0.003}  # widths through JSON and back
    assert trial.user_attrs[tune.DEFAULT_ATTR] is True
    again = tune.prepare_study("cnn", fam, "abcdef0123456789", url, 1, tcfg)  # the trial's process died
    assert again.study == plan.study and again.requeued == (0,) and not again.default_queued
    trials = tune.open_study(plan.study, url, tcfg).trials
    assert trials[0].state == TrialState.FAIL and trials[1].state == TrialState.WAITING
    assert trials[1].system_attrs["fixed_params"] == {"hparams.widths": "[8, 16]", "train.lr": 0.003} and trials[1].user_attrs[tune.DEFAULT_ATTR]
    outside = tune.prepare_study("cnn", _family(**{"train.lr": [0.01, 0.02]}), "abcdef0123456789", url, 1, tcfg)
    assert outside.outside == ("train.lr",)  # the current 0.003 is not in the space: trial 0 samples it


def test_tuned_profile_takes_the_best_only_where_it_beats_the_current_recipe(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("models:\n  cnn: {train: {lr: 0.003}}\nprofiles:\n  quick:\n    models:\n      cnn: {train: {epochs: 1}}\n")
    better = tune.TuneResult("cnn", "cnn-s1", 0.9, {"train.lr": 0.01, "hparams.widths": [16, 32]}, 3, 1, 0, 0.8, 5.0, 2)
    worse = tune.TuneResult("rnn", "rnn-s2", 0.7, {"train.lr": 0.01}, 2, 0, 0, 0.7, 5.0, 1)
    path = tune.write_tuned_profile(params, "quick", [better, worse], ["models.cnn.train.batch_size=16", "tuning.trials=3"])
    assert path == tmp_path / "params.tuned.yaml"
    text = path.read_text()
    assert text.startswith("# Written by `visionflow tune`") and "cnn-s1" in text and "0.8000 (current recipe) → 0.9000 (best)" in text
    block = yaml.safe_load(text)["profiles"]["tuned"]
    assert block["models"]["cnn"]["train"] == {"epochs": 1, "batch_size": 16, "lr": 0.01} and block["models"]["cnn"]["hparams"] == {"widths": [16, 32]}
    assert "rnn" not in block["models"] and "trials" not in block.get("tuning", {})  # not better: the current recipe; tuning.* trains nothing
    cfg = load_config(params, "tuned")
    assert cfg.tuning.studies == {"cnn": "cnn-s1", "rnn": "rnn-s2"} and cfg.models.cnn.train.lr == 0.01 and cfg.models.cnn.train.epochs == 1
    assert load_config(params, "quick").models.cnn.train.lr == 0.003  # the other profiles are as they were


def test_a_budget_that_ends_before_the_pruner_acts_is_said():
    tuning = TuningConfig(startup_trials=5)
    short = tune.TuneResult("cnn", "cnn-s1", 0.86, {}, 4, 0, 0, 0.86, 400.0, 0)
    note = tune.pruner_idle_note(short, tuning, trials=None)
    assert note is not None and note.startswith("cnn: the budget ended after 4 finished trials, before the pruner's 5")
    assert tune.pruner_idle_note(short, tuning, trials=4) is None  # --trials asked for that few
    assert tune.pruner_idle_note(short, TuningConfig(pruner="hyperband", startup_trials=5), trials=None) is None  # no startup trials there
    assert tune.pruner_idle_note(tune.TuneResult("rnn", "rnn-s1", 0.78, {}, 4, 7, 0, 0.78, 400.0, 0), tuning, None) is None  # it pruned
    assert tune.pruner_idle_note(tune.TuneResult("rnn", "rnn-s1", 0.78, {}, 5, 0, 0, 0.78, 400.0, 0), tuning, None) is None  # it could have


def test_the_rest_of_the_budget_goes_to_the_best_family_first():
    r = lambda key, best, n: tune.TuneResult(key, f"{key}-s", best, {}, n, 0, 0, best, 1.0, 0)  # noqa: E731
    results = [r("cnn", 0.86, 1), r("rnn", 0.80, 1), r("cnn_lstm", 0.90, 1), r("gru", None, 0)]
    assert tune.focus_order(results) == ["cnn_lstm", "cnn", "rnn", "gru"]  # unmeasured last
    assert tune.focus_order([r("cnn", 0.9, 1), r("rnn", 0.9, 1)]) == ["cnn", "rnn"]  # a tie keeps the configured order
    searched = [r("cnn", 0.86, 1), r("rnn", 0.80, 1), r("cnn_lstm", 0.92, 7)]
    note = tune.focus_note(["cnn_lstm", "cnn", "rnn"], searched)
    assert note.startswith("cnn (val acc 0.8600), rnn (val acc 0.8000): only the current recipe was measured; the rest of the budget went to cnn_lstm")
    assert tune.focus_note(["cnn", "rnn"], [r("cnn", 0.9, 1), r("rnn", 0.8, 1)]) is None  # the budget ended at the baselines: nothing to say
    assert tune.focus_note(["cnn", "rnn"], [r("cnn", 0.9, 3), r("rnn", 0.8, 3)]) is None  # a trials cap let both search


def test_sibling_profile_files(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("profiles:\n  quick: {}\n")
    (tmp_path / "params.extra.yaml").write_text("profiles:\n  fast: {engine: {progress: false}}\n")
    assert load_config(params, "fast").engine.progress is False
    with pytest.raises(ConfigError, match="allowed: default, fast, quick"):
        load_config(params, "nope")
    (tmp_path / "params.twice.yaml").write_text("profiles:\n  quick: {}\n")
    with pytest.raises(ConfigError, match=r"profile 'quick' is defined in both .*params.yaml and .*params.twice.yaml"):
        load_config(params, "quick")
    (tmp_path / "params.twice.yaml").write_text("engine: {progress: false}\n")
    with pytest.raises(ConfigError, match="expected only a `profiles:` mapping"):
        load_config(params, "quick")


# --- the command


def _stripes(root: Path, per_class: int = 40, side: int = 16) -> Path:
    """Gray stripes, three orientations: learnt in an epoch or two at a good learning rate, never at 1e-7."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    for cls, coord in (("horizontal", yy), ("vertical", xx), ("diagonal", xx + yy)):
        for i in range(per_class):
            period = int(rng.integers(3, 6))
            img = np.where((coord + int(rng.integers(0, period))) % period < period / 2, 200, 50) + rng.normal(0, 20, (side, side))
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="L").save(root / cls / f"{i:03d}.png")
    return root


def _cli(*args: str):
    from flows.cli import app

    return CliRunner().invoke(app, list(args))


def _ok(res) -> None:
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"


@pytest.fixture(scope="module")
def tune_project(tmp_path_factory):
    """The repo's params.yaml and a small ingested stripes dataset; MLflow and signal handlers put back afterwards."""
    import subprocess

    root = tmp_path_factory.mktemp("tune") / "project"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    shutil.copy(REPO_PARAMS, root / "params.yaml")
    (root / ".gitignore").write_text("/.visionflow/\n/data/\n")
    before = os.environ.pop("MLFLOW_TRACKING_URI", None)  # this project's own store
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # the CLI installs its own
    try:
        src = _stripes(root.parent / "stripes")
        res = _cli("--profile", "quick", "ingest", "--source", str(src), "--root", str(root))
        _ok(res)
        yield root
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before


# One terrible choice (lr 1e-7 learns nothing) among good ones; seed 3 draws [0.01, 1e-7] after trial 0
# (the current recipe, lr 0.003), and lr 1e-7's first epoch trails the median: pruned.
SEARCH = [
    "--set", 'models.cnn.search={"train.lr": [0.01, 0.003, 1.0e-7], "train.epochs": [2]}', "--set", "models.cnn.train.epochs=2",
    "--set", "models.cnn.train.batch_size=16", "--set", "tuning.startup_trials=1", "--set", "tuning.warmup_epochs=0", "--set", "tuning.seed=3",
]  # fmt: skip


@pytest.mark.slow
def test_tune_end_to_end_then_run_the_tuned_profile(tune_project):
    import optuna

    from components.tracking import mlflow_store as store

    root = tune_project
    res = _cli("--profile", "quick", "tune", "--family", "cnn", "--trials", "3", *SEARCH, "--root", str(root))
    _ok(res)
    assert "next: visionflow run --profile tuned" in res.stdout and "visionflow-tune" in res.stdout

    tuned = yaml.safe_load((root / "params.tuned.yaml").read_text())["profiles"]["tuned"]
    name = tuned["tuning"]["studies"]["cnn"]
    assert name.startswith("cnn-") and name in res.stdout
    study = optuna.load_study(study_name=name, storage=tune.storage_url(root / ".visionflow"))
    states = [t.state.name for t in study.trials]
    assert len(states) == 3 and "PRUNED" in states and states[0] == "COMPLETE"
    assert study.trials[0].params["train.lr"] == 0.003 and study.trials[0].user_attrs[tune.DEFAULT_ATTR]  # trial 0: the current recipe
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    assert pruned.params["train.lr"] == 1e-7

    # the tuned profile: the best lr where it beat the current recipe on validation, else the current one; the study as lineage
    best, default = study.best_trial, study.trials[0]
    cfg = load_config(root / "params.yaml", "tuned")
    assert cfg.models.cnn.train.lr == (best.params["train.lr"] if best.value > default.value else 0.003)
    assert cfg.models.cnn.train.batch_size == 16 and cfg.tuning.studies == {"cnn": name} and cfg.models.rnn.hparams["hidden"] == 16  # quick's

    # MLflow: one parent run in the tune experiment, one nested run per trial with its state, values and epochs
    c = store.client()
    exp = c.get_experiment_by_name("visionflow-tune")
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and parents[0].data.tags["study.cnn"] == name
    assert parents[0].info.run_id in res.stdout and "cnn.best_val_acc" in parents[0].data.metrics
    assert [a.path for a in c.list_artifacts(parents[0].info.run_id)] == ["params.tuned.yaml"]
    trials = {r.data.tags["trial"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert sorted(trials) == ["0", "1", "2"]
    for t in study.trials:
        run = trials[str(t.number)]
        assert run.data.tags["trial_state"] == t.state.name and run.data.tags["study"] == name and float(run.data.params["train.lr"]) == t.params["train.lr"]
        assert "val_acc" in run.data.metrics and len(c.get_metric_history(run.info.run_id, "val_acc")) >= 1
    assert not any(p.name.startswith("trial-") for p in (root / ".visionflow" / "tune" / name).glob("*"))  # trials' models deleted

    # the pipeline on the tuned profile: it trains, and its config carries the studies
    run = _cli("run", "--profile", "tuned", "--set", "packaging.enabled=false", "--set", "models.gan.enabled=false", "--root", str(root))
    _ok(run)
    pipeline = c.get_experiment_by_name("visionflow")
    parent = next(r for r in c.search_runs([pipeline.experiment_id], "attributes.status = 'FINISHED'") if "mlflow.parentRunId" not in r.data.tags)
    assert parent.data.params["tuning.studies.cnn"] == name and parent.data.tags["profile"] == "tuned"
    config = json.loads(Path(c.download_artifacts(parent.info.run_id, "config.json", str(root.parent))).read_text())
    assert config["tuning"]["studies"] == {"cnn": name}


@pytest.mark.slow
def test_after_every_current_recipe_the_budget_goes_to_the_best_family(tune_project):
    """tuning.focus: leader (default): trial 0 of each family, then the rest of a budget with no trials cap (quick has 4) to the
    family best on validation; the other's search stops at its current recipe, and `tune` says so."""
    import optuna

    from components.tracking import mlflow_store as store

    root = tune_project
    space = ["--set", 'models.cnn.search={"train.lr": [0.01, 0.003, 0.001], "train.epochs": [1]}', "--set", "models.cnn.train.epochs=1",
             "--set", "models.cnn.train.batch_size=32", "--set", 'models.rnn.search={"train.lr": [0.01, 0.003], "train.epochs": [1]}',
             "--set", "models.rnn.train.batch_size=32", "--set", "models.rnn.train.lr=0.003", "--set", "tuning.trials=null"]  # fmt: skip
    res = _cli("--profile", "quick", "tune", "--family", "cnn", "--family", "rnn", "--budget", "25s", *space, "--root", str(root))
    _ok(res)
    names = load_config(root / "params.yaml", "tuned").tuning.studies
    storage = tune.storage_url(root / ".visionflow")
    studies = {k: optuna.load_study(study_name=names[k], storage=storage) for k in ("cnn", "rnn")}
    first = {k: s.trials[0] for k, s in studies.items()}
    assert all(t.state.name == "COMPLETE" and t.user_attrs[tune.DEFAULT_ATTR] for t in first.values())  # every current recipe measured
    leader, other = ("cnn", "rnn") if first["cnn"].value >= first["rnn"].value else ("rnn", "cnn")
    assert len(studies[other].trials) == 1 and len(studies[leader].trials) > 1, {k: len(s.trials) for k, s in studies.items()}
    assert min(t.datetime_start for t in studies[leader].trials[1:]) > first[other].datetime_complete  # the search began after both baselines
    note = f"{other} (val acc {first[other].value:.4f}): only the current recipe was measured; the rest of the budget went to {leader}"
    assert note in res.stdout
    c = store.client()  # MLflow says what the search chose and why: the order, and the note
    parent = c.search_runs([c.get_experiment_by_name("visionflow-tune").experiment_id], "tags.families = 'cnn,rnn'")[0]
    assert parent.data.tags["focus_order"] == f"{leader},{other}" and note in parent.data.tags["notes"]


@pytest.mark.slow
def test_a_stopped_search_resumes_its_study(tune_project):
    import optuna

    root = tune_project
    space = ["--set", 'models.cnn.search={"train.lr": [0.01, 0.005], "train.epochs": [1]}', "--set", "models.cnn.train.lr=0.01",
             "--set", "models.cnn.train.epochs=1", "--set", "models.cnn.train.batch_size=16"]  # fmt: skip
    first = _cli("--profile", "quick", "tune", "--family", "cnn", "--trials", "2", *space, "--root", str(root))
    _ok(first)
    name = load_config(root / "params.yaml", "tuned").tuning.studies["cnn"]
    storage = tune.storage_url(root / ".visionflow")
    before = [(t.number, t.state.name, t.params) for t in optuna.load_study(study_name=name, storage=storage).trials]
    assert [s for _, s, _ in before] == ["COMPLETE", "COMPLETE"]

    # a search killed mid-trial (kill -9): its trial stays RUNNING in the storage
    study = optuna.load_study(study_name=name, storage=storage)
    killed = study.ask()
    values = {"train.lr": killed.suggest_categorical("train.lr", [0.01, 0.005]), "train.epochs": killed.suggest_categorical("train.epochs", [1])}

    again = _cli("--profile", "quick", "tune", "--family", "cnn", "--trials", "3", *space, "--root", str(root))
    _ok(again)
    assert f"trials {killed.number} of study {name} were left running" in again.stdout
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert [(t.number, t.state.name, t.params) for t in trials[:2]] == before  # the earlier trials are kept, not re-run
    assert trials[killed.number].state.name == "FAIL"
    rerun = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(rerun) == 1 and rerun[0].params == values and rerun[0].state.name == "COMPLETE"
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3 and len(trials) == 4  # only what was left ran

    done = _cli("--profile", "quick", "tune", "--family", "cnn", "--trials", "3", *space, "--root", str(root))
    _ok(done)
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 4  # nothing left to run


@pytest.mark.slow
def test_a_recipe_that_fails_every_trial_stops_the_search_in_one_line(tune_project):
    """Three failed trials in a row: the search stops, says why in one line, the parent run is FAILED and no profile is written."""
    from components.tracking import mlflow_store as store

    root = tune_project
    before = (root / "params.tuned.yaml").read_text() if (root / "params.tuned.yaml").exists() else None
    res = _cli("--profile", "quick", "tune", "--family", "rnn", "--trials", "5", "--set", 'models.rnn.search={"hparams.cell": [bogus]}', "--root", str(root))
    err = res.stderr.strip().splitlines()[-1]  # after Optuna's warning (with traceback) per failed trial
    assert res.exit_code == 1 and err.startswith("error: ") and "rnn: 3 trials in a row failed" in err and "bogus" in err, res.output
    c = store.client()
    exp = c.get_experiment_by_name("visionflow-tune")
    parents = [r for r in c.search_runs([exp.experiment_id], "tags.families = 'rnn'") if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.status for p in parents] == ["FAILED"]
    after = (root / "params.tuned.yaml").read_text() if (root / "params.tuned.yaml").exists() else None
    assert after == before


def test_bad_tune_input_is_one_line_and_exit_2(tmp_path):
    shutil.copy(REPO_PARAMS, tmp_path / "params.yaml")
    for args, words in (
        (["tune", "--budget", "abc"], "--budget 'abc': expected seconds or a duration like 90s, 20m, 1h"),
        (["tune", "--family", "resnet"], "family 'resnet' is not an enabled classifier family (choose from: cnn, rnn, cnn_lstm)"),
        (["tune", "--task-runner", "ray"], "use thread or dask"),
        (["tune", "--set", "tuning.pruner=none"], "tuning.pruner"),
        (["run", "--tune", "1m", "--source", str(tmp_path)], "--tune searches on the checked-out data"),
        (["run", "--tune", "soon"], "--tune 'soon': expected seconds or a duration"),
    ):
        res = _cli(*args, "--root", str(tmp_path))
        err = res.stderr.strip()
        assert res.exit_code == 2 and len(err.splitlines()) == 1 and words in err, (args, res.exit_code, res.output)
    assert not (tmp_path / ".visionflow" / "optuna.db").exists()
