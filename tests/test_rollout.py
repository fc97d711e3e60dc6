"""Progressive delivery (components/delivery/rollout.py): the decision rule and its tests of
non-inferiority, the rollout window read from a real SQLite inference log, the rollout's state in a
real sqlite MLflow registry (aliases and tags after every transition, every refusal), the automatic
decision end to end, the `visionflow rollout` commands as subprocesses, and a pipeline run whose gate
winner starts a shadow rollout instead of taking `champion`."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import load_config
from components.data.datasets import DatasetSpec
from components.delivery import rollout
from components.delivery.rollout import RolloutDecision, RolloutError, RolloutPolicy, decide, farrington_manning, tango_paired
from components.models import create_model
from components.monitoring.inference_log import InferenceLog, PairedCounts, RolloutWindow, VersionStats
from components.tracking import mlflow_store as store
from components.tracking import promotion
from components.workspace import Workspace
from tests.conftest import REPO_ROOT

CLASSES = ["cat", "dog", "owl"]
NAME = store.CLASSIFIER_MODEL
HOUR = 3600.0
POLICY = RolloutPolicy()  # the documented defaults: 100 requests, 200 labelled, margin 0.02, alpha 0.05, +0.01 errors, 500 ms, 72 h


# --- the decision rule ----------------------------------------------------------------------------


def _stats(version: str, requests: int = 0, errors: int = 0, p95: float | None = 20.0, labelled: int = 0, correct: int = 0) -> VersionStats:
    return VersionStats(NAME, version, requests, errors, p95, labelled, correct)


def _shadow(paired: PairedCounts, requests: int = 500, errors: int = 0, p95: float = 20.0, champion_errors: int = 0) -> RolloutWindow:
    """A shadow window: every labelled pair scores both versions."""
    n = paired.n
    champ = _stats("1", requests, champion_errors, 15.0, n, paired.both_right + paired.champion_only)
    chall = _stats("2", requests, errors, p95, n, paired.both_right + paired.challenger_only)
    agreed = requests - errors - paired.champion_only - paired.challenger_only
    return RolloutWindow(0.0, 1.0, "shadow", champ, chall, paired, requests - errors, agreed)


def _canary(champion: tuple[int, int, int], challenger: tuple[int, int, int]) -> RolloutWindow:
    """(requests, labelled, correct) of each side, answering different requests."""
    return RolloutWindow(0.0, 1.0, "canary", _stats("1", champion[0], 0, 15.0, *champion[1:]), _stats("2", challenger[0], 0, 20.0, *challenger[1:]))


def test_tango_paired_score_statistic_by_hand():
    # b = 5 (challenger right only), c = 3 (champion right only), n = 100, margin 0.05 (δ = −0.05):
    # A = 2n = 200, B = −b − c + (2n − b + c)δ = −8 − 9.9 = −17.9, C = −cδ(1 − δ) = 0.1575,
    # q̂ = (√(B² − 4AC) − B) / 2A = (√194.41 + 17.9) / 400 = 0.0796077,
    # z = (b − c − nδ) / √(n(2q̂ + δ(1 − δ))) = 7 / √(100 · (0.1592155 − 0.0525)) = 7 / 3.266728 = 2.142813
    z, p = tango_paired(5, 3, 100, 0.05)
    assert z == pytest.approx(2.142813, abs=1e-6)
    assert p == pytest.approx(0.5 * math.erfc(2.142813 / math.sqrt(2)), abs=1e-6) and p == pytest.approx(0.016064, abs=1e-6)
    # with no margin it is McNemar's statistic without continuity correction: (b − c) / √(b + c)
    assert tango_paired(9, 1, 100, 0.0)[0] == pytest.approx(8 / math.sqrt(10))
    # a worse challenger: negative z, p near 1
    z, p = tango_paired(1, 12, 300, 0.02)
    assert z < 0 and p > 0.9


def test_farrington_manning_score_statistic_by_hand():
    # challenger 196/200 = 0.98, champion 590/600 = 0.98333, margin 0.02. The restricted MLE under
    # H0 (p1 − p2 = −0.02) is found here by maximising the likelihood directly (golden section),
    # then z = (p̂1 − p̂2 + 0.02) / √(p̃1(1 − p̃1)/200 + p̃2(1 − p̃2)/600) = 1.206458.
    def loglik(p2: float) -> float:
        p1 = p2 - 0.02
        return 196 * math.log(p1) + 4 * math.log(1 - p1) + 590 * math.log(p2) + 10 * math.log(1 - p2)

    lo, hi = 0.0200001, 0.9999999
    for _ in range(200):
        m1, m2 = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
        lo, hi = (m1, hi) if loglik(m1) < loglik(m2) else (lo, m2)
    pt2 = (lo + hi) / 2
    pt1 = pt2 - 0.02
    expected = (196 / 200 - 590 / 600 + 0.02) / math.sqrt(pt1 * (1 - pt1) / 200 + pt2 * (1 - pt2) / 600)
    z, p = farrington_manning(196, 200, 590, 600, 0.02)
    assert z == pytest.approx(expected, abs=1e-5) and z == pytest.approx(1.206458, abs=1e-5)
    assert p == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    assert farrington_manning(297, 300, 2940, 3000, 0.02)[1] < 0.05  # 0.99 vs 0.98: non-inferior


def test_rollback_at_once_on_a_higher_error_rate():
    paired = PairedCounts(380, 4, 6, 10)
    d = decide(_shadow(paired, requests=200, errors=5, champion_errors=0), POLICY, 0.0, HOUR)
    assert d.verdict == "rollback" and "error rate 0.0250 (5/200)" in d.reason and "max_error_rate_increase 0.01" in d.reason
    assert d.numbers["challenger_error_rate"] == 0.025
    # the same rate as the champion's is no reason; nor are a few errors before min_requests
    assert decide(_shadow(paired, requests=200, errors=2, champion_errors=1), POLICY, 0.0, HOUR).verdict != "rollback"
    early = decide(_shadow(PairedCounts(40, 0, 0, 0), requests=50, errors=5), POLICY, 0.0, HOUR)
    assert early.verdict == "continue" and "50/100 requests" in early.reason


def test_rollback_at_once_on_latency_beyond_the_budget():
    d = decide(_shadow(PairedCounts(380, 4, 6, 10), p95=612.0), POLICY, 0.0, HOUR)
    assert d.verdict == "rollback" and "p95 latency 612.0 ms > latency_budget_ms 500" in d.reason
    assert decide(_shadow(PairedCounts(380, 4, 6, 10), p95=499.0), POLICY, 0.0, HOUR).verdict == "promote"


def test_promote_on_enough_non_worse_paired_feedback():
    d = decide(_shadow(PairedCounts(380, 4, 6, 10)), POLICY, 0.0, 5 * HOUR)
    assert d.verdict == "promote", d.reason
    assert d.numbers["test"] == "Tango paired score test" and d.numbers["test_n"] == 400 and d.numbers["p_value"] < 0.05
    assert d.numbers["z"] == pytest.approx(tango_paired(6, 4, 400, 0.02)[0])
    assert "agreement" in d.reason and "0.9650 vs champion 0.9600 over 400 labelled pairs" in d.reason


def test_promote_on_enough_non_worse_independent_feedback():
    d = decide(_canary(champion=(5000, 3000, 2940), challenger=(500, 300, 297)), POLICY, 0.0, 5 * HOUR)
    assert d.verdict == "promote", d.reason
    assert d.numbers["test"] == "Farrington-Manning score test" and d.numbers["agreement"] is None
    assert d.numbers["z"] == pytest.approx(farrington_manning(297, 300, 2940, 3000, 0.02)[0])
    # a canary that may be slightly worse keeps collecting; a significantly worse one is rolled back at once
    unsure = decide(_canary(champion=(5000, 3000, 2940), challenger=(500, 300, 291)), POLICY, 0.0, 5 * HOUR)
    assert unsure.verdict == "continue" and unsure.numbers["p_value"] > 0.05, unsure.reason
    worse = decide(_canary(champion=(5000, 3000, 2940), challenger=(500, 300, 270)), POLICY, 0.0, 5 * HOUR)
    assert worse.verdict == "rollback" and "worse than the champion" in worse.reason and worse.numbers["worse_p_value"] < 0.05, worse.reason
    z0, p0 = farrington_manning(270, 300, 2940, 3000, 0.0)
    assert worse.numbers["worse_z"] == pytest.approx(z0) and worse.numbers["worse_p_value"] == pytest.approx(1 - p0)


def test_nothing_before_the_minimum_sample():
    # 150 pairs, challenger right on 4 more: significant (p ≈ 0.004), but 150 < min_labelled 200
    small = _shadow(PairedCounts(146, 0, 4, 0))
    assert tango_paired(4, 0, 150, 0.02)[1] < 0.01
    d = decide(small, POLICY, 0.0, HOUR)
    assert d.verdict == "continue" and "150/200 labelled" in d.reason
    # enough labels but too few requests (a canary answers a share only): no promotion either
    few = decide(_canary(champion=(5000, 3000, 2940), challenger=(90, 300, 297)), POLICY, 0.0, HOUR)
    assert few.verdict == "continue" and "90/100 requests" in few.reason
    # no traffic at all yet
    empty = RolloutWindow(0.0, 1.0, None, _stats("1"), _stats("2"))
    assert decide(empty, POLICY, 0.0, HOUR).verdict == "continue"


def test_significantly_worse_paired_feedback_rolls_back_at_once():
    d = decide(_shadow(PairedCounts(350, 30, 5, 15)), POLICY, 0.0, HOUR)
    assert d.verdict == "rollback" and "worse than the champion" in d.reason
    assert d.numbers["worse_z"] == pytest.approx(tango_paired(5, 30, 400, 0.0)[0])
    assert decide(_shadow(PairedCounts(100, 30, 5, 15)), POLICY, 0.0, HOUR).verdict == "continue", "not before min_labelled"


def test_rollback_at_the_maximum_window():
    worse = _shadow(PairedCounts(350, 9, 6, 15))  # a little worse, not significantly: neither verdict
    assert decide(worse, POLICY, 0.0, 71 * HOUR).verdict == "continue"
    d = decide(worse, POLICY, 0.0, 72 * HOUR)
    assert d.verdict == "rollback" and "no promotion after 72.0 h (max_window_hours 72)" in d.reason
    assert decide(RolloutWindow(0.0, 1.0, None, _stats("1"), _stats("2")), POLICY, 0.0, 100 * HOUR).verdict == "rollback"


# --- the rollout window, from a real inference log ------------------------------------------------


def _served(rid: str, version: str, predicted: str, ts: float, latency: float = 10.0) -> dict:
    return {"request_id": rid, "ts": ts, "endpoint": "/classify", "model_name": NAME, "model_version": version, "data_version": "d",
            "predicted": predicted, "confidence": 0.9, "latency_ms": latency}  # fmt: skip


def _attempt(rid: str, mode: str, version: str, predicted: str | None, ts: float, latency: float = 20.0, error: str | None = None) -> dict:
    return {"request_id": rid, "ts": ts, "mode": mode, "model_name": NAME, "model_version": version, "predicted": predicted,
            "confidence": None if predicted is None else 0.8, "latency_ms": latency, "error": error}  # fmt: skip


def test_rollout_window_in_shadow(tmp_path):
    log = InferenceLog(tmp_path / "inference.db")
    now = time.time()
    log.record([_served("old", "1", "cat", now - 7200)], classes=CLASSES)  # before the window
    log.record([_served(f"r{i}", "1", "cat" if i < 8 else "dog", now, 10.0 + i) for i in range(10)], classes=CLASSES)
    shadow = [_attempt(f"r{i}", "shadow", "2", "cat" if i < 6 else "dog", now, 20.0 + i) for i in range(8)]
    log.record_rollout([*shadow, _attempt("r8", "shadow", "2", None, now, 900.0, "RuntimeError: boom"), _attempt("r9", "shadow", "9", "owl", now)])
    log.record_rollout([_attempt("x1", "champion", "1", None, now, 0.1, "RuntimeError: champion down")])
    for rid, label in (("r0", "cat"), ("r1", "cat"), ("r6", "cat"), ("r7", "dog"), ("r8", "dog"), ("r9", "cat")):
        log.feedback(rid, label)
    w = log.rollout_window(now - 60, (NAME, "1"), (NAME, "2"))
    # champion: 10 served + 1 failure; labels on r0 r1 r6 r8 right, r7 r9 wrong; p95 of 10..19 ms (nearest rank) = 19
    assert (w.champion.requests, w.champion.errors, w.champion.labelled, w.champion.correct, w.champion.p95_latency_ms) == (11, 1, 6, 4, 19.0)
    assert w.champion.error_rate == pytest.approx(1 / 11) and w.champion.live_accuracy == pytest.approx(4 / 6)
    # challenger: 8 answers + 1 error (v9's row is another version); labels on r0 r1 r7 right, r6 wrong; p95 of 20..27 = 27
    assert (w.challenger.requests, w.challenger.errors, w.challenger.labelled, w.challenger.correct, w.challenger.p95_latency_ms) == (9, 1, 4, 3, 27.0)
    # paired: r0 r1 both right, r6 champion only, r7 challenger only; agreement: r0..r5 of 8 answered
    assert w.mode == "shadow" and w.paired == PairedCounts(2, 1, 1, 0)
    assert (w.shadowed, w.agreed, w.agreement) == (8, 6, 0.75)
    assert json.loads(json.dumps(w.as_dict()))["challenger"]["live_accuracy"] == 0.75
    with pytest.raises(ValueError, match="mode must be one of"):
        log.record_rollout([_attempt("r0", "blue", "2", "cat", now)])
    log.record_rollout_decision(ts=now, model_name=NAME, champion_version="1", challenger_version="2", stage="shadow", verdict="continue",
                                reason="collecting", numbers={"z": 1.5})  # fmt: skip
    assert log.rollout_decisions(NAME, "2")[0]["numbers"] == {"z": 1.5}
    log.close()


def test_rollout_window_in_canary(tmp_path):
    log = InferenceLog(tmp_path / "inference.db")
    now = time.time()
    # c0..c3 and c7 answered by the champion (c7 after the challenger failed on it), c4..c6 by the canary
    log.record([_served(f"c{i}", "1", "cat", now, 5.0) for i in (0, 1, 2, 3, 7)], classes=CLASSES)
    log.record([_served(f"c{i}", "3", "dog", now, 30.0) for i in (4, 5, 6)], classes=CLASSES)
    log.record_rollout([_attempt(f"c{i}", "canary", "3", "dog", now, 30.0) for i in (4, 5, 6)])
    log.record_rollout([_attempt("f-c7", "canary", "3", None, now, 40.0, "ValueError: shape")])
    for rid, label in (("c4", "dog"), ("c5", "cat"), ("c0", "cat")):
        log.feedback(rid, label)
    w = log.rollout_window(now - 60, (NAME, "1"), (NAME, "3"))
    assert w.mode == "canary" and w.agreement is None and w.paired.n == 0
    assert (w.challenger.requests, w.challenger.errors, w.challenger.labelled, w.challenger.correct, w.challenger.p95_latency_ms) == (4, 1, 2, 1, 30.0)
    assert (w.champion.requests, w.champion.errors, w.champion.labelled, w.champion.correct) == (5, 0, 1, 1)
    log.close()


# --- the state in the registry --------------------------------------------------------------------


def _log_model(exp: str, classes: list[str], seed: int) -> str:
    run = store.start_run(exp, f"cnn-{seed}", {"family": "cnn"})
    torch.manual_seed(seed)
    spec = DatasetSpec(list(classes), 1, (8, 8), [0.5], [0.25])
    model = create_model("cnn", num_classes=len(classes), in_channels=1, image_size=(8, 8), widths=[4, 8])
    uri = store.log_model(run, model, np.zeros((2, 1, 8, 8), np.float32), spec.to_json(), extra_metadata={"task": "classification"})
    store.end_run(run, ok=True)
    return uri


EVALUATED = {"task": "classification", "evaluated": "true", "data_validated": "true", "test_accuracy": "0.9"}


@pytest.fixture
def registry(tmp_path, tracking_env):
    """A project root with a sqlite MLflow store: two logged models (3 classes, 4 classes) to register versions from."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    ws = Workspace.at(root, home=root / ".visionflow")
    uri, exp = store.configure(ws)
    return {"root": root, "ws": ws, "uri": uri, "three": _log_model(exp, CLASSES, 1), "four": _log_model(exp, [*CLASSES, "emu"], 2)}


def _version(model_uri: str, **tags: str) -> str:
    return store.register_version(model_uri, NAME, {**EVALUATED, **tags})


def _tags(version: str) -> dict[str, str]:
    return store.version_tags(NAME, version)


def _aliases() -> tuple[str | None, str | None]:
    return store.alias_version(NAME, store.CHAMPION), store.alias_version(NAME, store.CHALLENGER)


def test_start_promote_abort_with_aliases_and_tags_after_each(registry):
    three, four = registry["three"], registry["four"]
    v1 = _version(three)
    with pytest.raises(RolloutError, match="has no champion to compare with"):
        rollout.start(v1)
    store.set_alias(NAME, store.CHAMPION, v1, reason="first")
    # every refusal is one line that says what to do
    refusals = [
        ((), "has no challenger: name a version"),
        ((v1,), f"v{v1} is the champion already"),
        (("99",), "v99 not found in the registry"),
        ((_version(four),), "another class set than champion v1 (4 classes [cat, dog, owl, emu] vs 3 [cat, dog, owl])"),
        ((store.register_version(three, NAME, {"data_validated": "true"}),), "not an evaluated classifier"),
        ((v1, "blue"), "--mode must be shadow or canary"),
        ((v1, "canary", 0.0), "--percent must be in (0, 100]"),
    ]
    for args, words in refusals:
        with pytest.raises(RolloutError) as err:
            rollout.start(*args)
        assert words in str(err.value) and "\n" not in str(err.value), (args, str(err.value))
    assert _aliases() == (v1, None)

    # the challenger by default: shadow, tags for the service, champion untouched
    v2 = _version(three)
    store.set_alias(NAME, store.CHALLENGER, v2, reason="lost the gate")
    before = time.time()
    st = rollout.start()
    tags = _tags(v2)
    assert st.live and st.version == v2 and st.champion == v1 and _aliases() == (v1, v2)
    assert (tags["rollout.stage"], tags["rollout.mode"], tags["rollout.percent"], tags["rollout.shadow_sample"], tags["rollout.champion"]) == (
        "shadow", "shadow", "0", "1", v1)  # fmt: skip
    assert before - 1 <= float(tags["rollout.started"]) <= time.time()
    with pytest.raises(RolloutError, match=f"a rollout is already running: {NAME} v{v2} in shadow since .*rollout abort"):
        rollout.start(v2, "canary", 10)

    # a decision recorded: version tags, a run nested under the version's run, the log's table
    log = InferenceLog(registry["ws"].inference_log)
    decision = RolloutDecision("continue", "collecting: 3/100 requests", {"challenger_requests": 3, "p_value": 0.4, "test": "Tango paired score test"})
    run_id = rollout.record(st, decision, log)
    tags = _tags(v2)
    assert tags["rollout.verdict"] == "continue" and json.loads(tags["rollout.evidence"])["p_value"] == 0.4
    run = store.client().get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == store.client().get_model_version(NAME, v2).run_id
    assert run.data.metrics["challenger_requests"] == 3 and "test" not in run.data.metrics
    assert log.rollout_decisions(NAME, v2)[0]["verdict"] == "continue"
    log.close()

    # abort: rolled back, @challenger removed, champion untouched
    st = rollout.abort("too slow", manual=True)
    tags = _tags(v2)
    assert not st.live and _aliases() == (v1, None)
    assert (tags["rollout.stage"], tags["rollout.verdict"], tags["rollout.reason"]) == ("rolled_back", "rollback", "too slow") and tags["rollout.ended_by"]
    for fn in (rollout.abort, rollout.promote):
        with pytest.raises(RolloutError, match="no rollout is running"):
            fn()
    assert rollout.status().stage == "rolled_back"

    # the same version again, as a canary; then promoted by hand
    st = rollout.start(v2, "canary", 25)
    tags = _tags(v2)
    assert (tags["rollout.stage"], tags["rollout.percent"]) == ("canary", "25") and "rollout.verdict" not in tags and _aliases() == (v1, v2)
    st = rollout.promote("live accuracy fine", manual=True)
    tags = _tags(v2)
    assert _aliases() == (v2, None) and st.stage == "promoted"
    assert tags["promotion"] == "manual" and "canary rollout promoted by hand: live accuracy fine" in tags["champion_reason"]
    assert rollout.status().stage == "promoted" and rollout.active() is None

    # a long evidence stays valid JSON within the tag limit
    assert len(rollout._evidence({f"k{i}": "x" * 100 for i in range(100)})) <= rollout.TAG_LIMIT
    assert json.loads(rollout._evidence({f"k{i}": "x" * 100 for i in range(100)}))["truncated"] is True


def _decision(version: str, champion: str | None, promote: bool, reason: str, mode: str | None = None) -> promotion.SelectionDecision:
    return promotion.SelectionDecision(promote, reason, version, champion, 0.9, 0.8, 0.01, rollout=mode, rollout_percent=10.0, best="cnn")


def test_pipeline_apply_starts_keeps_and_supersedes_rollouts(registry):
    three = registry["three"]
    v1 = _version(three)
    out = promotion.apply(_decision(v1, None, True, "no current champion"))
    assert _aliases() == (v1, None) and out[0]["outcome"] == "@champion"
    # a gate winner with selection.rollout.mode=shadow: @challenger under a shadow rollout, champion stays
    v2 = _version(three)
    out = promotion.apply(_decision(v2, v1, False, "beats the champion; shadow rollout instead of promotion", "shadow"))
    assert _aliases() == (v1, v2) and _tags(v2)["rollout.stage"] == "shadow" and out[0]["outcome"] == "@challenger, shadow rollout started"
    # a gate loser does not take @challenger from a running rollout
    v3 = _version(three)
    out = promotion.apply(_decision(v3, v1, False, "not significant"))
    assert _aliases() == (v1, v2) and "stays with v2" in _tags(v3)["challenger_reason"] and out[0]["outcome"] == "registered only (v2 is under rollout)"
    # the next gate winner supersedes it
    v4 = _version(three)
    out = promotion.apply(_decision(v4, v1, False, "beats the champion", "canary"))
    assert _aliases() == (v1, v4) and _tags(v2)["rollout.stage"] == "rolled_back" and "superseded by v4" in _tags(v2)["rollout.reason"]
    assert _tags(v4)["rollout.percent"] == "10" and "superseding v2's" in out[0]["outcome"]
    # a promotion without rollout (mode off) ends the rollout it makes stale
    lines = promotion.summary_lines(promotion.alias_holders(), out)
    assert lines[0].startswith(f"champion     : {NAME} v{v1}  (models:/{NAME}@champion) since ") and lines[0].endswith(": no current champion")
    assert lines[1].startswith(f"challenger   : {NAME} v{v4}  (models:/{NAME}@challenger; canary rollout under way") and lines[2] == "generator    : none"
    assert lines[3].startswith(f"this run     : {NAME} v{v4} (cnn, best on validation) → @challenger, canary rollout started (superseding v2's): ")
    # a promotion without rollout (mode off) ends the rollout it makes stale
    v5 = _version(three)
    out = promotion.apply(_decision(v5, v1, True, "beats the champion"))
    assert _aliases() == (v5, None) and _tags(v4)["rollout.stage"] == "rolled_back" and rollout.active() is None
    assert out[0]["outcome"] == "@champion (v4's rollout ended)" and "champion moved to v5" in _tags(v4)["rollout.reason"]


def test_the_summary_names_alias_holders_apart_from_what_the_run_registered():
    aliases = [{"model": NAME, "alias": "champion", "version": "1", "since": "t1", "reason": "no current champion", "rollout": None},
               {"model": NAME, "alias": "challenger", "version": "2", "since": "t2", "reason": "beats it; shadow rollout", "rollout": "shadow"},
               {"model": store.GENERATOR_MODEL, "alias": "generator", "version": "1", "since": "t1", "reason": "GAN-test 0.9; no generator yet", "rollout": None}]  # fmt: skip
    registered = [{"model": NAME, "version": "2", "outcome": "@challenger, shadow rollout started", "reason": "beats it", "best": "cnn"},
                  {"model": store.GENERATOR_MODEL, "version": "2", "outcome": "not @generator", "reason": "GAN-test 0.8 <= 0.9 (v1 kept)", "best": ""}]  # fmt: skip
    lines = promotion.summary_lines(aliases, registered)
    assert lines[2] == "generator    : visionflow-gan v1  (models:/visionflow-gan@generator) since t1: GAN-test 0.9; no generator yet"
    assert "shadow rollout under way" in lines[1]
    assert lines[4] == "this run     : visionflow-gan v2 → not @generator: GAN-test 0.8 <= 0.9 (v1 kept)"


def test_evaluate_promotes_on_live_evidence_and_rolls_back_on_errors(registry):
    ws, three = registry["ws"], registry["three"]
    v1, v2, v3 = _version(three), _version(three), _version(three)
    store.set_alias(NAME, store.CHAMPION, v1)
    cfg = load_config(registry["root"] / "params.yaml", "default", ["selection.rollout.min_requests=20", "selection.rollout.min_labelled=30",
                                                                    "selection.rollout.margin=0.1"])  # fmt: skip
    assert rollout.evaluate(ws, cfg)["verdict"] is None
    rollout.start(v2, "shadow")
    log = InferenceLog(ws.inference_log)
    now = time.time()
    log.record([_served(f"s{i}", v1, CLASSES[i % 3], now) for i in range(40)], classes=CLASSES)
    log.record_rollout([_attempt(f"s{i}", "shadow", v2, CLASSES[i % 3], now) for i in range(40)])
    for i in range(29):
        log.feedback(f"s{i}", CLASSES[i % 3])
    dry = rollout.evaluate(ws, cfg, act=False)
    assert dry["verdict"] == "continue" and "29/30 labelled" in dry["reason"] and dry["window"]["paired"]["both_right"] == 29 and _aliases() == (v1, v2)
    assert "rollout.verdict" not in _tags(v2) and not log.rollout_decisions()  # decided, recorded nowhere
    log.feedback("s29", CLASSES[29 % 3])
    # 30 agreeing labelled pairs at margin 0.1: Tango z = √(30 · 0.1 / 0.9) = 1.826 > 1.645
    res = rollout.evaluate(ws, cfg)
    assert res["verdict"] == "promote", res["reason"]
    assert res["numbers"]["z"] == pytest.approx(math.sqrt(30 * 0.1 / 0.9), abs=1e-6)
    assert _aliases() == (v2, None) and _tags(v2)["rollout.stage"] == "promoted" and _tags(v2)["rollout.verdict"] == "promote"
    assert [d["verdict"] for d in log.rollout_decisions(NAME, v2)] == ["promote"]
    # a failing challenger: rolled back at once, champion untouched
    rollout.start(v3, "canary", 50)
    log.record_rollout([_attempt(f"f{i}", "canary", v3, None, time.time(), 5.0, "RuntimeError: broken") for i in range(20)])
    log.record([_served(f"k{i}", v2, "cat", time.time()) for i in range(20)])
    res = rollout.evaluate(ws, cfg)
    assert res["verdict"] == "rollback" and "error rate 1.0000 (20/20)" in res["reason"]
    assert _aliases() == (v2, None) and _tags(v3)["rollout.stage"] == "rolled_back"
    log.close()


# --- the commands ---------------------------------------------------------------------------------

CLI = str(Path(sys.executable).parent / "visionflow")


def _cli(args: list[str], root: Path, uri: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_HOME", "BENTOML_HOME"))}
    return subprocess.run([CLI, "rollout", *args], cwd=root, capture_output=True, text=True, env={**env, "MLFLOW_TRACKING_URI": uri})


@pytest.mark.slow
def test_rollout_commands_say_what_to_do_in_one_line(registry):
    root, uri, three = registry["root"], registry["uri"], registry["three"]
    v1, other, v3 = _version(three), _version(registry["four"]), _version(three)
    store.set_alias(NAME, store.CHAMPION, v1)
    errors = [
        (["start"], 1, "has no challenger"),
        (["start", other], 1, "another class set"),
        (["start", v3, "--mode", "blue"], 2, "--mode must be shadow or canary"),
        (["start", v3, "--mode", "canary", "--percent", "150"], 2, "--percent must be in (0, 100]"),
        (["promote"], 1, "no rollout is running"),
    ]
    for args, code, words in errors:
        out = _cli(args, root, uri)
        err = out.stderr.strip()
        assert out.returncode == code and len(err.splitlines()) == 1 and words in err and "Traceback" not in err, (args, out.returncode, err)
    out = _cli(["status"], root, uri)
    assert out.returncode == 0 and "none has run" in out.stdout
    out = _cli(["start", v3, "--mode", "canary", "--percent", "20"], root, uri)
    assert out.returncode == 0, out.stderr
    assert f"v{v3} in canary at 20 % of clients, against champion v{v1}" in out.stdout and _aliases() == (v1, v3)
    out = _cli(["start", v3], root, uri)
    assert out.returncode == 1 and "a rollout is already running" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = _cli(["status"], root, uri)
    assert out.returncode == 0 and "verdict now  : continue (collecting: 0/100 requests" in out.stdout and "live accuracy" in out.stdout
    out = _cli(["abort", "--reason", "not today"], root, uri)
    assert out.returncode == 0 and f"champion v{v1} keeps serving" in out.stdout and _aliases() == (v1, None)
    out = _cli(["status"], root, uri)
    assert out.returncode == 0 and f"the last: {NAME} v{v3} (canary) rolled_back" in out.stdout and "not today" in out.stdout
    out = _cli(["start", v3, "--mode", "shadow"], root, uri)
    assert out.returncode == 0
    out = _cli(["evaluate"], root, uri)  # the Prefect flow, as the schedule runs it
    assert out.returncode == 0 and "decision     : continue" in out.stdout, out.stdout + out.stderr
    assert _tags(v3)["rollout.verdict"] == "continue" and _aliases() == (v1, v3)
    out = _cli(["promote"], root, uri)
    assert out.returncode == 0 and f"champion is now {NAME} v{v3}" in out.stdout and _aliases() == (v3, None)


# --- the pipeline ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_gate_winner_starts_a_shadow_rollout_instead_of_promotion(project, tmp_path, tracking_env, monkeypatch):
    from components.tracking.selection import Decision
    from flows.training_pipeline import training_pipeline
    from tests.conftest import make_folder

    shutil.copy(REPO_ROOT / "params.yaml", project / "params.yaml")
    src = make_folder(tmp_path / "src", classes=("cat", "dog", "owl"), per_class=10, size=(20, 24))
    small = ["models.rnn.enabled=false", "models.cnn_lstm.enabled=false", "models.gan.enabled=false", "packaging.enabled=false",
             "selection.rollout.mode=shadow"]  # fmt: skip
    first = training_pipeline(root=str(project), profile="quick", source=str(src), overrides=small)
    assert first.champion == "1" and "no current champion" in first.decision  # nothing to compare with: promoted at once
    # the next run wins the offline gate (forced here: noise images give chance-level models)
    monkeypatch.setattr(promotion, "gate", lambda *a, **k: Decision(True, "challenger 0.9000 beats champion 0.3000 (McNemar p=0.001 < 0.05)", 0.9, 0.3, 0.001))
    second = training_pipeline(root=str(project), profile="quick", source=str(src), overrides=small)
    assert second.champion == "1" and _aliases() == ("1", "2")
    tags = _tags("2")
    assert tags["rollout.stage"] == "shadow" and tags["rollout.champion"] == "1" and "shadow rollout instead of promotion" in second.decision
    holders = {a["alias"]: a for a in second.aliases}
    assert holders["champion"]["version"] == "1" and holders["challenger"]["version"] == "2" and holders["challenger"]["rollout"] == "shadow"
    assert second.registered[0]["outcome"] == "@challenger, shadow rollout started"
