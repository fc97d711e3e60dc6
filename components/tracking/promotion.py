"""Registration, champion selection and promotion: the registry policy as plain, tested functions.

The order is what makes it safe (the flow calls them in this order, each as one task):

1. `register_candidates` registers every evaluated model, idempotently (a retry finds its versions),
   and the best-on-validation classifier as a version of `visionflow-classifier`. No alias moves.
2. `decide` compares that version with the current champion (McNemar gate on the same test split)
   and applies the class-set policy. A registry error is an error (`RegistryError`), never "no
   champion": the run fails and nothing moves.
3. the flow builds and verifies the Bento of `decision.serving_version` (components/packaging).
4. `apply` moves the aliases, last. Any failure before it leaves every alias where it was.

With `selection.rollout.mode` shadow or canary, a gate winner does not take `champion` at once: it
becomes `challenger` under a rollout (components/delivery/rollout.py) and live traffic decides.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.config import SelectionConfig
from components.delivery import rollout
from components.results import Evaluation
from components.tracking import mlflow_store as store
from components.tracking.selection import gate


@dataclass(frozen=True)
class Candidate:
    """One evaluated classifier of this run."""

    key: str
    family: str
    run_id: str
    model_uri: str
    val_acc: float
    test_acc: float
    correct_path: str  # test_correct.json: per-image correctness on the test split, manifest order
    val_robust: float = 0.0  # mean validation accuracy under the evaluation's noise and FGSM attacks

    @classmethod
    def from_eval(cls, e: Evaluation) -> "Candidate":
        return cls(e.key, e.family, e.run_id, e.model_uri, float(e.val_acc), float(e.metrics["accuracy"]), e.correct_path, float(e.val_robust))


@dataclass(frozen=True)
class GeneratorCandidate:
    run_id: str
    model_uri: str
    gan_test: float
    gan_train: float


@dataclass(frozen=True)
class Registration:
    versions: dict[str, str]  # registered model name → version, one per family model
    best: Candidate  # chosen on validation only
    classifier_version: str  # best's version of visionflow-classifier
    generator_version: str | None = None
    generator_score: float | None = None


@dataclass(frozen=True)
class SelectionDecision:
    promote: bool  # the new classifier version becomes champion
    reason: str
    classifier_version: str
    champion_version: str | None  # the champion before this run
    challenger_accuracy: float
    champion_accuracy: float | None = None
    p_value: float | None = None
    class_set_changed: bool = False
    generator_version: str | None = None
    promote_generator: bool = False
    generator_reason: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    best: str = ""
    rollout: str | None = None  # shadow | canary: the gate winner goes through a rollout instead of `promote`
    rollout_percent: float = 0.0
    rollout_shadow_sample: float = 1.0

    @property
    def alias(self) -> str:
        return store.CHAMPION if self.promote else store.CHALLENGER

    @property
    def serving_version(self) -> str:
        """The classifier version that serves after this run (what the Bento must hold)."""
        return self.classifier_version if self.promote or self.champion_version is None else self.champion_version

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alias": self.alias, "serving_version": self.serving_version}


def _common_tags(lineage: dict[str, str], run_id: str, family: str, task: str) -> dict[str, str]:
    return {**lineage, "run_id": run_id, "family": family, "evaluated": "true", "data_validated": "true", "task": task}


def best_candidate(candidates: list[Candidate], robustness_weight: float = 0.0) -> Candidate:
    """The classifier to register as `visionflow-classifier`: validation figures only (test stays unseen)."""
    return max(candidates, key=lambda c: ((1 - robustness_weight) * c.val_acc + robustness_weight * c.val_robust, c.val_acc))


def register_candidates(candidates: list[Candidate], generator: GeneratorCandidate | None, lineage: dict[str, str],
                        robustness_weight: float = 0.0) -> Registration:  # fmt: skip
    """Every model as `visionflow-<key>`, the best on validation as a `visionflow-classifier` version
    (by validation accuracy, or with `robustness_weight` w by (1−w)·accuracy + w·robust accuracy)."""
    if not candidates:
        raise ValueError("no evaluated classifier to register")
    versions: dict[str, str] = {}
    for c in candidates:
        tags = {**_common_tags(lineage, c.run_id, c.family, "classification"), "test_accuracy": f"{c.test_acc:.6f}", "val_accuracy": f"{c.val_acc:.6f}"}
        name = store.registered_name(c.key)
        versions[name] = store.register_version(c.model_uri, name, tags)
    best = best_candidate(candidates, robustness_weight)
    tags = {**_common_tags(lineage, best.run_id, best.family, "classification"), "model_key": best.key, "test_accuracy": f"{best.test_acc:.6f}",
            "val_accuracy": f"{best.val_acc:.6f}", "registered_from": f"{store.registered_name(best.key)}/{versions[store.registered_name(best.key)]}"}  # fmt: skip
    classifier_version = store.register_version(best.model_uri, store.CLASSIFIER_MODEL, tags)
    gen_version, gen_score = None, None
    if generator is not None:
        gtags = {
            **_common_tags(lineage, generator.run_id, "gan", "generation"),
            "gan_test": f"{generator.gan_test:.6f}",
            "gan_train": f"{generator.gan_train:.6f}",
        }
        gen_version = store.register_version(generator.model_uri, store.GENERATOR_MODEL, gtags)
        gen_score = float(gtags["gan_test"])  # as the registry holds it: compared with the alias holder's tag, an equal score stays equal
    return Registration(versions, best, classifier_version, gen_version, gen_score)


Loader = Callable[[str], tuple[Any, Any]]  # model URI → (model, DatasetSpec)


def decide(
    reg: Registration, data_dir: Path, cfg: SelectionConfig, classes: list[str], load: Loader, paired: Callable[[str, Path, Loader], list[bool]]
) -> SelectionDecision:
    """Gate the new classifier version against the current champion; say why, in numbers."""
    challenger_correct = json.loads(Path(reg.best.correct_path).read_text())["correct"]
    champion = store.alias_version(store.CLASSIFIER_MODEL, store.CHAMPION)  # RegistryError on an outage
    gen_promote, gen_reason = _decide_generator(reg)
    common = {"classifier_version": reg.classifier_version, "champion_version": champion, "generator_version": reg.generator_version,
              "promote_generator": gen_promote, "generator_reason": gen_reason, "versions": reg.versions, "best": reg.best.key}  # fmt: skip
    acc = sum(challenger_correct) / max(len(challenger_correct), 1)
    if champion is None:
        return SelectionDecision(True, "no current champion", challenger_accuracy=acc, **common)
    uri = f"models:/{store.CLASSIFIER_MODEL}/{champion}"
    _, champ_spec = load(uri)
    if list(champ_spec.classes) != list(classes):
        change = (
            f"class set changed (champion v{champion}: {len(champ_spec.classes)} classes {_short(champ_spec.classes)}; new: {len(classes)} {_short(classes)})"
        )
        if cfg.on_class_change == "promote":
            return SelectionDecision(
                True, f"{change}: promoted by selection.on_class_change=promote", challenger_accuracy=acc, class_set_changed=True, **common
            )
        return SelectionDecision(False, f"{change}: champion held by selection.on_class_change=hold; `visionflow promote` to switch",
                                 challenger_accuracy=acc, class_set_changed=True, **common)  # fmt: skip
    champion_correct = paired(uri, data_dir, load)
    d = gate(challenger_correct, champion_correct, margin=cfg.margin, alpha=cfg.alpha)
    numbers = {"challenger_accuracy": d.challenger_accuracy, "champion_accuracy": d.champion_accuracy, "p_value": d.p_value}
    ro = cfg.rollout
    if d.promote and ro.mode != "off":  # the offline gate is won; live traffic has the last word
        how = f"{ro.mode} rollout" + (f" at {ro.percent:g} % of clients" if ro.mode == "canary" else "")
        return SelectionDecision(False, f"{d.reason}; {how} instead of promotion (selection.rollout.mode={ro.mode}): live traffic decides",
                                 rollout=ro.mode, rollout_percent=ro.percent, rollout_shadow_sample=ro.shadow_sample, **numbers, **common)  # fmt: skip
    return SelectionDecision(d.promote, d.reason, **numbers, **common)


def _short(classes: list[str], n: int = 5) -> str:
    return "[" + ", ".join(classes[:n]) + (", ..." if len(classes) > n else "") + "]"


def _decide_generator(reg: Registration) -> tuple[bool, str]:
    """The best generator by GAN-test keeps the `generator` alias."""
    if reg.generator_version is None:
        return False, ""
    current = store.alias_version(store.GENERATOR_MODEL, store.GENERATOR)
    if current is None:
        return True, f"GAN-test {reg.generator_score:.4f}; no generator yet"
    score = float(store.version_tags(store.GENERATOR_MODEL, current).get("gan_test", -1))
    if reg.generator_score > score:
        return True, f"GAN-test {reg.generator_score:.4f} > {score:.4f} (v{current})"
    return False, f"GAN-test {reg.generator_score:.4f} <= {score:.4f} (v{current} kept)"


def apply(decision: SelectionDecision) -> list[dict[str, Any]]:
    """Move the aliases: the last step of a run, after the Bento of `serving_version` was verified.
    A rollout under way keeps @challenger from a version that merely lost the gate; a gate winner
    (promoted, or rolled out with supersede) ends it. Returns what became of each version this run
    registered, with its reason (the run's summary)."""
    out: list[dict[str, Any]] = []
    if decision.generator_version:
        if decision.promote_generator:
            store.set_alias(store.GENERATOR_MODEL, store.GENERATOR, decision.generator_version, reason=decision.generator_reason)
        out.append(_outcome(store.GENERATOR_MODEL, decision.generator_version, "@generator" if decision.promote_generator else "not @generator",
                            decision.generator_reason))  # fmt: skip
    name, version = store.CLASSIFIER_MODEL, decision.classifier_version
    running = rollout.active(name)
    if decision.rollout:
        rollout.start(version, decision.rollout, decision.rollout_percent, decision.rollout_shadow_sample, reason=decision.reason, supersede=True, name=name)
        outcome = f"@challenger, {decision.rollout} rollout started" + (
            f" (superseding v{running.version}'s)" if running and running.version != version else ""
        )
    elif decision.promote:
        store.set_alias(name, store.CHAMPION, version, reason=decision.reason)
        outcome = "@champion"
        if running is not None and running.version != version:  # compared with a champion that no longer serves
            rollout.abort(f"superseded: champion moved to v{version} by a pipeline run ({decision.reason})", name=name)
            outcome += f" (v{running.version}'s rollout ended)"
    elif running is not None and running.version != version:
        held = f"{decision.reason}; @challenger stays with v{running.version}, under a {running.stage} rollout"
        store._registry_call(f"tag {name} v{version}", store.client().set_model_version_tag, name, version, "challenger_reason", held[:5000])
        outcome = f"registered only (v{running.version} is under rollout)"
    else:
        store.set_alias(name, store.CHALLENGER, version, reason=decision.reason)
        outcome = "@challenger"
    out.insert(0, _outcome(name, version, outcome, decision.reason, best=decision.best))
    return out


def _outcome(model: str, version: str, outcome: str, reason: str, best: str = "") -> dict[str, Any]:
    return {"model": model, "version": str(version), "outcome": outcome, "reason": reason, "best": best}


ALIASES = ((store.CLASSIFIER_MODEL, store.CHAMPION), (store.CLASSIFIER_MODEL, store.CHALLENGER), (store.GENERATOR_MODEL, store.GENERATOR))


def alias_holders() -> list[dict[str, Any]]:
    """Who holds each alias now, since when and why (the `<alias>_since` / `<alias>_reason` tags
    set_alias wrote), and the challenger's rollout stage."""
    out = []
    for model, alias in ALIASES:
        version = store.alias_version(model, alias)
        tags = store.version_tags(model, version) if version else {}
        stage = tags.get(rollout.STAGE) if alias == store.CHALLENGER and tags.get(rollout.STAGE) in rollout.LIVE_STAGES else None
        out.append({"model": model, "alias": alias, "version": version, "since": tags.get(f"{alias}_since"), "reason": tags.get(f"{alias}_reason"),
                    "rollout": stage})  # fmt: skip
    return out


def summary_lines(aliases: list[dict[str, Any]], registered: list[dict[str, Any]]) -> list[str]:
    """The run's summary: who holds each alias after the run, then what this run registered — each with its reason."""
    lines = []
    for a in aliases:
        if a["version"] is None:
            lines.append(f"{a['alias']:<13}: none")
            continue
        live = f"; {a['rollout']} rollout under way (`visionflow rollout status`)" if a.get("rollout") else ""
        why = f" since {a['since']}" if a.get("since") else ""
        why += f": {a['reason']}" if a.get("reason") else ""
        lines.append(f"{a['alias']:<13}: {a['model']} v{a['version']}  (models:/{a['model']}@{a['alias']}{live}){why}")
    for r in registered:
        best = f" ({r['best']}, best on validation)" if r.get("best") else ""
        lines.append(f"this run     : {r['model']} v{r['version']}{best} → {r['outcome']}: {r['reason'] or '-'}")
    return lines
