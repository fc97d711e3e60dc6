"""Progressive delivery: a new classifier version meets real traffic before it takes all of it, and
the evidence in the inference log decides whether it does.

The state lives in the registry, on the version under rollout (tags `rollout.*`); the aliases keep
their meaning: `champion` serves, `challenger` is the version being tried. The service
(serving/rollout.py) polls `@challenger` and its `rollout.stage` — `shadow` (it answers a copy of
the traffic, never returned) or `canary` (it answers `rollout.percent` % of the clients) — and logs
its attempts to the inference log's `rollout_log`. The rollout flow (flows/rollout.py) reads that
window (`InferenceLog.rollout_window`), `decide`s, applies (`promote` / `abort` / nothing) and
`record`s every decision: version tags, a run nested under the challenger's MLflow run, and the
log's `rollout_decisions` table. Plain functions: no Prefect, no CLI.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from components.config import Config, RolloutConfig
from components.errors import VisionflowError
from components.monitoring.inference_log import InferenceLog, RolloutWindow
from components.tracking import mlflow_store as store
from components.workspace import Workspace

STAGE = "rollout.stage"  # shadow | canary (live) | promoted | rolled_back (over)
MODE = "rollout.mode"  # shadow | canary: how it met traffic (kept after the rollout ends)
PERCENT = "rollout.percent"  # canary: % of clients the challenger answers (0 in shadow)
SHADOW_SAMPLE = "rollout.shadow_sample"  # shadow: share of served requests the challenger also answers
STARTED = "rollout.started"  # unix time the rollout started: the start of its evidence window
CHAMPION_AT_START = "rollout.champion"  # the champion version it is compared with
ENDED = "rollout.ended"
VERDICT = "rollout.verdict"  # the last decision: promote | rollback | continue
REASON = "rollout.reason"
EVIDENCE = "rollout.evidence"  # the last decision's numbers, JSON
EVALUATED = "rollout.evaluated"  # unix time of the last decision
ENDED_BY = "rollout.ended_by"  # the user who promoted or aborted it by hand
LIVE_STAGES = ("shadow", "canary")
VERDICTS = ("promote", "rollback", "continue")
TAG_LIMIT = 5000  # the value length every MLflow store accepts (the rest of the code truncates reasons to it too)


class RolloutError(VisionflowError, ValueError):
    """A rollout command that cannot be done as asked; the message is one line that says what to do."""


@dataclass(frozen=True)
class RolloutPolicy:
    """The decision rule's knobs (`selection.rollout` in params.yaml)."""

    min_requests: int = 100
    min_labelled: int = 200
    margin: float = 0.02
    alpha: float = 0.05
    max_error_rate_increase: float = 0.01
    latency_budget_ms: float = 500.0
    max_window_hours: float = 72.0

    @classmethod
    def from_config(cls, cfg: RolloutConfig) -> RolloutPolicy:
        return cls(cfg.min_requests, cfg.min_labelled, cfg.margin, cfg.alpha, cfg.max_error_rate_increase, cfg.latency_budget_ms, cfg.max_window_hours)


@dataclass(frozen=True)
class RolloutDecision:
    verdict: str  # promote | rollback | continue
    reason: str  # one line, with the numbers
    numbers: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NonInferiority:
    """H0: challenger accuracy − champion accuracy ≤ −margin, against H1: > −margin (one-sided)."""

    test: str
    n: int  # labelled pairs (paired) or the smaller arm (independent)
    challenger_accuracy: float
    champion_accuracy: float
    z: float
    p_value: float

    @property
    def difference(self) -> float:
        return self.challenger_accuracy - self.champion_accuracy


def _upper_tail(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def tango_paired(challenger_only: int, champion_only: int, n: int, margin: float) -> tuple[float, float]:
    """Tango's score test for non-inferiority of paired proportions: (z, one-sided p).

    Tango T. (1998), "Equivalence test and confidence interval for the difference in proportions for
    the paired-sample design", Statistics in Medicine 17:891–908 (also Nam 1997, Biometrics 53:1422).
    Only the discordant pairs carry the difference — b = challenger right only, c = champion right
    only, of n pairs — as in McNemar's test, which it extends to a margin δ = −margin ≠ 0:
    z = (b − c − nδ) / sqrt(n(2q̂ + δ(1 − δ))), q̂ the maximum-likelihood P(champion right only) under
    H0: q̂ = (sqrt(B² − 4AC) − B) / 2A with A = 2n, B = −b − c + (2n − b + c)δ, C = −cδ(1 − δ).
    Paired: in shadow both versions answer the same request, and its feedback label scores both.
    """
    if n <= 0:
        return 0.0, 0.5
    delta = -margin
    b, c = challenger_only, champion_only
    a_, b_, c_ = 2 * n, -b - c + (2 * n - b + c) * delta, -c * delta * (1 - delta)
    q21 = (math.sqrt(max(b_ * b_ - 4 * a_ * c_, 0.0)) - b_) / (2 * a_)
    var = n * (2 * q21 + delta * (1 - delta))
    num = b - c - n * delta
    z = num / math.sqrt(var) if var > 0 else (0.0 if num == 0 else math.copysign(math.inf, num))
    return z, _upper_tail(z)


def farrington_manning(x1: int, n1: int, x2: int, n2: int, margin: float) -> tuple[float, float]:
    """Farrington–Manning score test for non-inferiority of two independent proportions: (z, one-sided p),
    x1/n1 the challenger's correct/labelled, x2/n2 the champion's.

    Farrington C.P., Manning G. (1990), "Test statistics and sample size formulae for comparative
    binomial trials with null hypothesis of non-zero risk difference or non-unity relative risk",
    Statistics in Medicine 9:1447–1454 (the restricted MLE of Miettinen & Nurminen 1985, in closed
    form): z = (p̂1 − p̂2 − δ) / sqrt(p̃1(1 − p̃1)/n1 + p̃2(1 − p̃2)/n2), p̃ the maximum-likelihood
    proportions under H0: p1 − p2 = δ = −margin. Independent: in canary each request is answered by
    one version only.
    """
    if n1 <= 0 or n2 <= 0:
        return 0.0, 0.5
    delta = -margin
    p1, p2 = x1 / n1, x2 / n2
    theta = n2 / n1
    a = 1 + theta
    b = -(1 + theta + p1 + theta * p2 + delta * (theta + 2))
    c = delta * delta + delta * (2 * p1 + theta + 1) + p1 + theta * p2
    d = -p1 * delta * (1 + delta)
    v = b**3 / (3 * a) ** 3 - b * c / (6 * a * a) + d / (2 * a)
    u = math.copysign(math.sqrt(max(b * b / (3 * a) ** 2 - c / (3 * a), 0.0)), v)
    w = (math.pi + math.acos(max(-1.0, min(1.0, v / u**3)))) / 3 if u != 0 else math.pi / 2
    pt1 = min(1.0, max(0.0, 2 * u * math.cos(w) - b / (3 * a)))
    pt2 = min(1.0, max(0.0, pt1 - delta))
    var = pt1 * (1 - pt1) / n1 + pt2 * (1 - pt2) / n2
    num = p1 - p2 - delta
    z = num / math.sqrt(var) if var > 0 else (0.0 if num == 0 else math.copysign(math.inf, num))
    return z, _upper_tail(z)


def non_inferiority(window: RolloutWindow, margin: float) -> NonInferiority | None:
    """The test that fits how the challenger met traffic: paired in shadow, independent in canary;
    None while there is no labelled request to test on."""
    if window.mode == "shadow":
        pc = window.paired
        if pc.n == 0:
            return None
        z, p = tango_paired(pc.challenger_only, pc.champion_only, pc.n, margin)
        return NonInferiority("Tango paired score test", pc.n, (pc.both_right + pc.challenger_only) / pc.n, (pc.both_right + pc.champion_only) / pc.n, z, p)
    if window.mode == "canary":
        ch, cp = window.challenger, window.champion
        if not ch.labelled or not cp.labelled:
            return None
        z, p = farrington_manning(ch.correct, ch.labelled, cp.correct, cp.labelled, margin)
        return NonInferiority("Farrington-Manning score test", min(ch.labelled, cp.labelled), ch.correct / ch.labelled, cp.correct / cp.labelled, z, p)
    return None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def decide(window: RolloutWindow, policy: RolloutPolicy, started_at: float, now: float) -> RolloutDecision:
    """The rollout's verdict on its window so far, in this order:

    1. rollback at once when, over at least `min_requests` challenger requests, its error rate exceeds
       the champion's by more than `max_error_rate_increase`, or its p95 latency exceeds
       `latency_budget_ms` — an absolute budget (the service's own batching budget by default), not a
       multiple of the champion's: what clients can bear does not depend on how fast the old model was;
    2. promote when, also over at least `min_requests` requests, at least `min_labelled` labelled
       requests (shadow: pairs; canary: each version) show the challenger's live accuracy not worse
       than the champion's by `margin`: a one-sided non-inferiority test at `alpha` (Tango's paired
       score test in shadow, Farrington–Manning's in canary);
    3. rollback at once when, on the same sample, the challenger is significantly *worse* than the
       champion: the same test at margin 0, other tail (p < `alpha`) — more evidence cannot save it;
    4. rollback once `max_window_hours` have passed without 1.–3.;
    5. continue collecting otherwise.
    Agreement with the champion (shadow) is reported, not decided on: a better model disagrees where
    the champion was wrong.
    """
    ch, cp = window.challenger, window.champion
    elapsed = max(0.0, now - started_at) / 3600
    test = non_inferiority(window, policy.margin)
    numbers: dict[str, Any] = {"mode": window.mode, "elapsed_hours": round(elapsed, 4)}
    for side, s in (("challenger", ch), ("champion", cp)):
        numbers |= {f"{side}_requests": s.requests, f"{side}_errors": s.errors, f"{side}_error_rate": s.error_rate,
                    f"{side}_p95_latency_ms": s.p95_latency_ms, f"{side}_labelled": s.labelled, f"{side}_live_accuracy": s.live_accuracy}  # fmt: skip
    pc = window.paired
    numbers |= {"agreement": window.agreement, "shadowed": window.shadowed, "paired_n": pc.n, "paired_both_right": pc.both_right,
                "paired_champion_only": pc.champion_only, "paired_challenger_only": pc.challenger_only, "paired_both_wrong": pc.both_wrong,
                "margin": policy.margin, "alpha": policy.alpha, "min_requests": policy.min_requests, "min_labelled": policy.min_labelled,
                "max_error_rate_increase": policy.max_error_rate_increase, "latency_budget_ms": policy.latency_budget_ms,
                "max_window_hours": policy.max_window_hours}  # fmt: skip
    if test is not None:
        numbers |= {"test": test.test, "test_n": test.n, "difference": test.difference, "z": test.z, "p_value": test.p_value}
    agreement = "" if window.agreement is None else f"; agreement {window.agreement:.3f} over {window.shadowed}"
    enough_requests = ch.requests >= policy.min_requests
    if enough_requests:
        increase = ch.error_rate - cp.error_rate
        if increase > policy.max_error_rate_increase:
            return RolloutDecision("rollback", f"challenger error rate {ch.error_rate:.4f} ({ch.errors}/{ch.requests}) exceeds the champion's "
                                   f"{cp.error_rate:.4f} ({cp.errors}/{cp.requests}) by {increase:.4f} > max_error_rate_increase {policy.max_error_rate_increase:g}",
                                   numbers)  # fmt: skip
        if ch.p95_latency_ms is not None and ch.p95_latency_ms > policy.latency_budget_ms:
            return RolloutDecision("rollback", f"challenger p95 latency {_ms(ch.p95_latency_ms)} > latency_budget_ms {policy.latency_budget_ms:g} over "
                                   f"{ch.requests - ch.errors} answers (champion p95 {_ms(cp.p95_latency_ms)})", numbers)  # fmt: skip
    evidence = "no labelled request yet"
    if test is not None:
        labelled = f"{test.n} labelled pairs" if window.mode == "shadow" else f"{ch.labelled} + {cp.labelled} labelled requests"
        core = f"live accuracy {test.challenger_accuracy:.4f} vs champion {test.champion_accuracy:.4f} over {labelled}"
        stat = f"{test.test}, margin {policy.margin:g}: z={test.z:.3f}, p={test.p_value:.3g}"
        evidence = f"{core} ({stat})"
        if enough_requests and test.n >= policy.min_labelled and test.p_value < policy.alpha:
            return RolloutDecision("promote", f"not worse than the champion: {core} ({stat} < alpha {policy.alpha:g}); {ch.requests} requests, error rate "
                                   f"{ch.error_rate:.4f} vs {cp.error_rate:.4f}, p95 {_ms(ch.p95_latency_ms)} vs {_ms(cp.p95_latency_ms)}{agreement}",
                                   numbers)  # fmt: skip
        worse = non_inferiority(window, 0.0)
        if enough_requests and worse is not None and worse.n >= policy.min_labelled and 1.0 - worse.p_value < policy.alpha:
            numbers |= {"worse_z": worse.z, "worse_p_value": 1.0 - worse.p_value}
            return RolloutDecision("rollback", f"worse than the champion: {core} ({worse.test}, margin 0: z={worse.z:.3f}, p={1.0 - worse.p_value:.3g} "
                                   f"< alpha {policy.alpha:g}); {ch.requests} requests{agreement}", numbers)  # fmt: skip
    if elapsed >= policy.max_window_hours:
        return RolloutDecision("rollback", f"no promotion after {elapsed:.1f} h (max_window_hours {policy.max_window_hours:g}): {evidence}; "
                               f"{ch.requests} requests{agreement}", numbers)  # fmt: skip
    n = test.n if test is not None else 0
    return RolloutDecision("continue", f"collecting: {ch.requests}/{policy.min_requests} requests, {n}/{policy.min_labelled} labelled; {evidence}{agreement}; "
                           f"{elapsed:.1f} of {policy.max_window_hours:g} h", numbers)  # fmt: skip


# --- the state in the registry ------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutState:
    """A version's rollout as its tags record it."""

    model_name: str
    version: str
    stage: str  # shadow | canary | promoted | rolled_back
    mode: str
    percent: float
    shadow_sample: float
    started: float
    champion: str | None  # the champion it is compared with (at start)
    is_challenger: bool  # @challenger points at it: the service serves its stage
    ended: float | None = None
    verdict: str | None = None
    reason: str | None = None
    evaluated: float | None = None

    @property
    def live(self) -> bool:
        """Under way: the service routes to it (a live stage on the version @challenger names)."""
        return self.stage in LIVE_STAGES and self.is_challenger

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "live": self.live}


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _state(name: str, version: str, tags: dict[str, str], challenger: str | None) -> RolloutState | None:
    if STAGE not in tags:
        return None
    return RolloutState(name, str(version), tags[STAGE], tags.get(MODE, tags[STAGE]), _float(tags.get(PERCENT)) or 0.0, _float(tags.get(SHADOW_SAMPLE)) or 1.0,
                        _float(tags.get(STARTED)) or 0.0, tags.get(CHAMPION_AT_START) or None, str(version) == challenger, _float(tags.get(ENDED)),
                        tags.get(VERDICT), tags.get(REASON), _float(tags.get(EVALUATED)))  # fmt: skip


def active(name: str = store.CLASSIFIER_MODEL) -> RolloutState | None:
    """The rollout under way: @challenger's version with a live stage; None when there is none.
    A registry outage is a RegistryError, never "no rollout"."""
    challenger = store.alias_version(name, store.CHALLENGER)
    if challenger is None:
        return None
    st = _state(name, challenger, store.version_tags(name, challenger), challenger)
    return st if st is not None and st.live else None


def status(name: str = store.CLASSIFIER_MODEL) -> RolloutState | None:
    """The rollout under way, else the latest one (by start time), else None."""
    live = active(name)
    if live is not None:
        return live
    challenger = store.alias_version(name, store.CHALLENGER)
    versions = store._registry_call(f"search versions of {name}", store.client().search_model_versions, f"name='{name}'")
    states = [s for mv in versions if (s := _state(name, str(mv.version), dict(mv.tags or {}), challenger)) is not None]
    return max(states, key=lambda s: s.started) if states else None


def _classes(name: str, version: str) -> list[str]:
    """The class set logged with a version (its `visionflow_spec` metadata; the weights are not loaded)."""
    import mlflow

    info = store._registry_call(f"read the model info of {name} v{version}", mlflow.models.get_model_info, f"models:/{name}/{version}")
    spec = (info.metadata or {}).get("visionflow_spec")
    if not spec:
        raise RolloutError(f"{name} v{version} has no visionflow_spec metadata: it was not logged by visionflow, so it cannot be rolled out")
    return list(spec["classes"])


def _short(classes: list[str], n: int = 5) -> str:
    return "[" + ", ".join(classes[:n]) + (", ..." if len(classes) > n else "") + "]"


def _when(ts: float | None) -> str:
    return "?" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _set_tags(name: str, version: str, tags: dict[str, str]) -> None:
    c = store.client()
    for k, v in tags.items():
        store._registry_call(f"tag {name} v{version}", c.set_model_version_tag, name, version, k, str(v)[:TAG_LIMIT])


def _drop_challenger_alias(name: str, version: str) -> None:
    """Remove @challenger if it still names `version` (another run may have moved it meanwhile)."""
    if store.alias_version(name, store.CHALLENGER) == version:
        store._registry_call(f"remove {name}@{store.CHALLENGER}", store.client().delete_registered_model_alias, name, store.CHALLENGER)


def start(version: str | None = None, mode: str = "shadow", percent: float = 10.0, shadow_sample: float = 1.0, *, reason: str = "",
          supersede: bool = False, name: str = store.CLASSIFIER_MODEL) -> RolloutState:  # fmt: skip
    """Start rolling out `version` (default: the current @challenger) against the champion: it becomes
    @challenger with a live stage the service picks up on its next poll. `supersede` (a pipeline run's
    gate winner) ends a rollout of another version first instead of refusing."""
    if mode not in LIVE_STAGES:
        raise RolloutError(f"--mode must be shadow or canary (got {mode!r})")
    if mode == "canary" and not 0 < percent <= 100:
        raise RolloutError(f"a canary answers a share of the clients: --percent must be in (0, 100] (got {percent:g})")
    if not 0 < shadow_sample <= 1:
        raise RolloutError(f"--shadow-sample must be in (0, 1] (got {shadow_sample:g})")
    champion = store.alias_version(name, store.CHAMPION)
    if champion is None:
        raise RolloutError(f"{name} has no champion to compare with: the first version is promoted directly (`visionflow run` or `visionflow promote`)")
    if version is None:
        version = store.alias_version(name, store.CHALLENGER)
        if version is None:
            raise RolloutError(
                f"{name} has no challenger: name a version (`visionflow rollout start VERSION`) or let a pipeline run make one (`visionflow run`)"
            )
    version = str(version)
    try:
        tags = store.version_tags(name, version)
    except LookupError:
        raise RolloutError(f"{name} v{version} not found in the registry at {os.environ.get('MLFLOW_TRACKING_URI')}") from None
    if version == champion:
        raise RolloutError(f"{name} v{version} is the champion already: a rollout tries another version against it")
    if tags.get("evaluated") != "true" or tags.get("data_validated") != "true" or tags.get("task", "classification") != "classification":
        raise RolloutError(f"{name} v{version} is not an evaluated classifier on validated data (tags evaluated, data_validated, task): "
                           "only a pipeline run's versions can meet traffic")  # fmt: skip
    running = active(name)
    if running is not None:
        if supersede and running.version == version:
            return running  # a retried step: already under way
        if not supersede:
            raise RolloutError(f"a rollout is already running: {name} v{running.version} in {running.stage} since {_when(running.started)}; "
                               "`visionflow rollout promote` or `visionflow rollout abort` first")  # fmt: skip
    new, old = _classes(name, version), _classes(name, champion)
    if new != old:
        raise RolloutError(f"{name} v{version} was trained on another class set than champion v{champion} ({len(new)} classes {_short(new)} vs "
                           f"{len(old)} {_short(old)}): their answers are not comparable; promote it by hand (`visionflow promote {name} {version}`)")  # fmt: skip
    if running is not None:
        abort(f"superseded by v{version}{': ' + reason if reason else ''}", name=name)
    now = time.time()
    c = store.client()
    for key in (ENDED, ENDED_BY, VERDICT, REASON, EVIDENCE, EVALUATED):  # a version rolled out before starts with a clean record
        if key in tags:
            store._registry_call(f"untag {name} v{version}", c.delete_model_version_tag, name, version, key)
    # tags first, the alias last (store.set_alias): the service sees the alias only with its stage
    _set_tags(name, version, {MODE: mode, PERCENT: f"{percent:g}" if mode == "canary" else "0", SHADOW_SAMPLE: f"{shadow_sample:g}",
                              STARTED: f"{now:.3f}", CHAMPION_AT_START: champion, STAGE: mode})  # fmt: skip
    what = f"{mode} rollout against champion v{champion}" + (f" at {percent:g} % of clients" if mode == "canary" else "")
    store.set_alias(name, store.CHALLENGER, version, reason=f"{what}{': ' + reason if reason else ''}")
    st = _state(name, version, store.version_tags(name, version), version)
    assert st is not None
    return st


def _end(stage: str, verdict: str, reason: str, name: str, manual: bool) -> RolloutState:
    running = active(name)
    if running is None:
        raise RolloutError(f"no rollout is running for {name} (`visionflow rollout status`; start one with `visionflow rollout start [VERSION]`)")
    if stage == "promoted":  # the champion moves first: a failure here leaves the rollout running, not half-promoted
        store.set_alias(
            name, store.CHAMPION, running.version, manual=manual, reason=f"{running.stage} rollout promoted{' by hand' if manual else ''}: {reason}"
        )
    tags = {STAGE: stage, ENDED: f"{time.time():.3f}", VERDICT: verdict, REASON: reason}
    if manual:
        tags[ENDED_BY] = getpass.getuser()
    _set_tags(name, running.version, tags)
    _drop_challenger_alias(name, running.version)
    st = _state(name, running.version, store.version_tags(name, running.version), None)
    assert st is not None
    return st


def promote(reason: str = "", *, manual: bool = False, name: str = store.CLASSIFIER_MODEL) -> RolloutState:
    """The version under rollout becomes champion through store.set_alias (`champion_since`,
    `champion_reason`; `promotion=manual` with who and when for a person's command), then stage
    `promoted` and @challenger removed."""
    return _end("promoted", "promote", reason or ("promoted by hand" if manual else "promoted"), name, manual)


def abort(reason: str = "", *, manual: bool = False, name: str = store.CLASSIFIER_MODEL) -> RolloutState:
    """End the rollout without promoting: stage `rolled_back`, @challenger removed, champion untouched."""
    return _end("rolled_back", "rollback", reason or ("aborted by hand" if manual else "aborted"), name, manual)


def _evidence(numbers: dict[str, Any]) -> str:
    """The numbers as JSON within the tag limit: whole keys are dropped (never cut mid-value)."""
    text = json.dumps(numbers, default=str, separators=(",", ":"))
    if len(text) <= TAG_LIMIT:
        return text
    kept: dict[str, Any] = {"truncated": True}
    for k, v in numbers.items():
        if len(json.dumps({**kept, k: v}, default=str, separators=(",", ":"))) > TAG_LIMIT:
            break
        kept[k] = v
    return json.dumps(kept, default=str, separators=(",", ":"))


def record(
    state: RolloutState, decision: RolloutDecision, log: InferenceLog | None = None, *, champion: str | None = None, now: float | None = None
) -> str | None:
    """Record a decision everywhere it is looked for: the version's tags (`rollout.verdict`,
    `rollout.reason`, `rollout.evidence`), an MLflow run nested under the challenger version's run
    (the numbers as metrics), and the inference log's `rollout_decisions`. Returns that run's id."""
    now = time.time() if now is None else now
    name, version = state.model_name, state.version
    _set_tags(name, version, {VERDICT: decision.verdict, REASON: decision.reason, EVIDENCE: _evidence(decision.numbers), EVALUATED: f"{now:.3f}"})
    run_id = None
    mv = store._registry_call(f"read {name} v{version}", store.client().get_model_version, name, version)
    if mv.run_id:
        c = store.client()
        exp = c.get_run(mv.run_id).info.experiment_id
        tags = {
            "rollout.verdict": decision.verdict,
            "rollout.stage": state.stage,
            "model": f"{name}/{version}",
            "mlflow.note.content": decision.reason[:TAG_LIMIT],
        }
        run_id = store.start_run(exp, f"rollout-{decision.verdict}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}", tags, parent_id=mv.run_id)
        metrics = {k: float(v) for k, v in decision.numbers.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        store.log_metrics(run_id, metrics)
        store.end_run(run_id, ok=True)
    if log is not None:
        log.record_rollout_decision(ts=now, model_name=name, champion_version=champion or state.champion, challenger_version=version, stage=state.stage,
                                    verdict=decision.verdict, reason=decision.reason, numbers=decision.numbers)  # fmt: skip
    return run_id


def apply(state: RolloutState, decision: RolloutDecision) -> RolloutState:
    """Act on a verdict: promote, roll back, or leave the rollout running."""
    if decision.verdict == "promote":
        return promote(decision.reason, name=state.model_name)
    if decision.verdict == "rollback":
        return abort(decision.reason, name=state.model_name)
    return state


def evaluate(ws: Workspace, cfg: Config, *, act: bool = True, now: float | None = None) -> dict[str, Any]:
    """The rollout under way, its window since it started and the verdict; with `act`, the verdict
    recorded, then applied (the evidence first: a failed apply is retried on the next evaluation).
    No rollout: {"verdict": None, ...}."""
    store.configure(ws, cfg.tracking.uri, cfg.tracking.experiment)
    state = active()
    if state is None:
        return {"verdict": None, "reason": "no rollout is running", "state": None, "window": None, "numbers": {}, "applied": False}
    now = time.time() if now is None else now
    champion = store.alias_version(state.model_name, store.CHAMPION)
    log = InferenceLog(ws.inference_log)
    try:
        window = log.rollout_window(state.started, (state.model_name, champion or ""), (state.model_name, state.version))
        decision = decide(window, RolloutPolicy.from_config(cfg.selection.rollout), state.started, now)
        if champion == state.version:  # made champion by hand meanwhile (`visionflow promote`)
            decision = RolloutDecision("promote", f"v{state.version} was made champion outside the rollout; the rollout ends as promoted", decision.numbers)
        elif champion != state.champion:  # its evidence compares it with a version that no longer serves
            decision = RolloutDecision("rollback", f"the champion moved from v{state.champion} to v{champion} during the rollout; start it again "
                                       f"against v{champion} (`visionflow rollout start {state.version}`)", decision.numbers)  # fmt: skip
        after, run_id = state, None
        if act:
            run_id = record(state, decision, log, champion=champion, now=now)
            after = apply(state, decision)
    finally:
        log.close()
    return {"verdict": decision.verdict, "reason": decision.reason, "numbers": decision.numbers, "state": after.as_dict(), "started_state": state.as_dict(),
            "window": window.as_dict(), "champion": champion, "applied": act and decision.verdict != "continue", "run_id": run_id}  # fmt: skip
