"""A trained classifier → ONNX, for the slim serving image (onnxruntime, no torch).

The graph takes the normalised float32 batch (N, C, H, W) with a dynamic batch axis and returns
what the model's forward returns (logits, or decision fusion's log-probabilities); the service
applies the spec's preprocessing before it and softmax after it, as the torch service does.
The exporter is torch's default (torch.export → onnxscript); the legacy TorchScript exporter is
the fallback for a model torch.export cannot trace. Every export is checked with onnx's checker
and run once in onnxruntime against torch at another batch size before it is accepted.
"""

from __future__ import annotations

import copy
import json
import re
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from components.data.preprocess import DatasetSpec, softmax
from components.errors import VisionflowError

DEFAULT_OPSET = 18  # the dynamo exporter's native opset; onnxruntime >= 1.14 runs it
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MODEL_FILE = "model.onnx"
SPEC_FILE = "spec.json"
EXPORT_FILE = "export.json"
FULL_IMAGE_HINT = "serve it from the full image: visionflow package --image --flavour full"
EXPORTERS = ("dynamo", "torchscript")


class ExportError(VisionflowError, ValueError):
    """A model that cannot be served by the ONNX image; the message is one line: what, why, what to do."""


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    input_name: str
    output_name: str
    exporter: str  # "dynamo" (torch.export) or "torchscript" (legacy fallback)
    onnx_version: str
    torch_version: str
    size_bytes: int
    seconds: float

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "path": self.path.name}, sort_keys=True)  # next to it: no build-host path in the image


@dataclass(frozen=True)
class Parity:
    n: int
    label_mismatches: int
    max_abs_prob_diff: float
    passed: bool
    tol: float = 1e-4


def _one_line(exc: BaseException) -> str:
    """The first line of the innermost cause: the exporters wrap the specific failure (an op without
    an ONNX translation) in generic, multi-line, coloured messages."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def _fail(model: nn.Module, why: str) -> ExportError:
    return ExportError(f"cannot export {type(model).__name__} to ONNX: {why}; {FULL_IMAGE_HINT}")


def is_generator(model: nn.Module) -> bool:
    """The GAN (labels → images) is served by `/generate`, not a classifier: it has no ONNX form here."""
    from components.models.gan import ConditionalDCGAN, Generator

    return isinstance(model, ConditionalDCGAN | Generator)


def _cpu_copy(model: nn.Module) -> nn.Module:
    """An fp32, eval-mode, contiguous-layout copy on the CPU: the caller's model (maybe on a GPU, in
    channels_last or training mode) stays as it was."""
    m = copy.deepcopy(model).cpu().float().eval()
    return m.to(memory_format=torch.contiguous_format)


def _torch_probs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).float(), 1).numpy()


def _session(path: Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _run_exporter(model: nn.Module, example: torch.Tensor, path: Path, opset: int, exporter: str) -> None:
    with warnings.catch_warnings():  # tracer and deprecation chatter; the outcome is verified after
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset, dynamo=True, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), external_data=False)  # fmt: skip
        else:
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False, verbose=False,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})  # fmt: skip


def _verify(model: nn.Module, spec: DatasetSpec, path: Path, tol: float) -> None:
    """onnx's checker, then onnxruntime at batch sizes other than the traced one against torch: a
    batch size baked into the graph or a mistranslated op fails here, not in the service."""
    import onnx

    onnx.checker.check_model(str(path))
    sess = _session(path)
    rng = np.random.default_rng(0)
    for b in (1, 3):
        x = rng.standard_normal((b, spec.in_channels, *spec.image_size), dtype=np.float32)
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        if got.shape != (b, spec.num_classes):
            raise ValueError(f"onnxruntime gave shape {got.shape} for a batch of {b}, expected {(b, spec.num_classes)}")
        diff = float(np.abs(softmax(got) - _torch_probs(model, x)).max())
        if not diff <= tol:
            raise ValueError(f"onnxruntime's probabilities differ from torch's by {diff:.2e} (> {tol:g}) at batch {b}")


def export_onnx(model: nn.Module, spec: DatasetSpec, path: Path, opset: int = DEFAULT_OPSET, exporter: str = "auto", tol: float = 1e-4) -> OnnxExport:
    """Write `model` (a classifier for `spec`) to `path` as ONNX and verify it. `exporter`: auto (the
    dynamo exporter, then TorchScript if that fails), dynamo or torchscript. Raises ExportError."""
    import onnx

    if exporter not in ("auto", *EXPORTERS):
        raise ValueError(f"exporter must be auto, dynamo or torchscript, got {exporter!r}")
    if is_generator(model):
        raise _fail(model, "it is a GAN generator (class labels → images), not an image classifier")
    m = _cpu_copy(model)
    example = torch.zeros(2, spec.in_channels, *spec.image_size)  # 2: torch.export specialises a batch of 1
    try:
        with torch.no_grad():
            out = m(example)
    except Exception as exc:
        raise _fail(
            model, f"its forward does not take a (N, {spec.in_channels}, {spec.image_size[0]}, {spec.image_size[1]}) image batch ({_one_line(exc)})"
        ) from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, spec.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise _fail(model, f"its forward returns {shape}, not (N, {spec.num_classes}) class scores")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for name in EXPORTERS if exporter == "auto" else (exporter,):
        t0 = time.perf_counter()
        try:
            _run_exporter(m, example, path, opset, name)
            _verify(m, spec, path, tol)
        except Exception as exc:
            errors.append(f"{name} exporter: {_one_line(exc)}")
            path.unlink(missing_ok=True)
            continue
        return OnnxExport(
            path, opset, INPUT_NAME, OUTPUT_NAME, name, onnx.__version__, torch.__version__, path.stat().st_size, round(time.perf_counter() - t0, 3)
        )
    raise _fail(model, "; ".join(errors))


def write_onnx_dir(model: nn.Module, spec: DatasetSpec, out_dir: Path, opset: int = DEFAULT_OPSET, exporter: str = "auto") -> OnnxExport:
    """What the slim image serves: `model.onnx`, `spec.json` (DatasetSpec.to_json) and `export.json`
    (exporter, opset, versions), read back by serving.onnx_model.load_onnx_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = export_onnx(model, spec, out_dir / MODEL_FILE, opset, exporter)
    (out_dir / SPEC_FILE).write_text(spec.to_json(), encoding="utf-8")
    (out_dir / EXPORT_FILE).write_text(result.to_json(), encoding="utf-8")
    return result


def check_parity(model: nn.Module, onnx_path: Path, x: np.ndarray, batch_size: int = 256, tol: float = 1e-4) -> Parity:
    """Torch vs onnxruntime on `x` (a normalised float32 batch): softmax on both sides, as served.
    Passed: the same label for every input and no probability further apart than `tol`."""
    m = _cpu_copy(model)
    sess = _session(Path(onnx_path), threads=max(1, torch.get_num_threads()))
    name_in, name_out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    x = np.asarray(x, dtype=np.float32)
    mismatches, max_diff = 0, 0.0
    for i in range(0, len(x), batch_size):
        xb = np.ascontiguousarray(x[i : i + batch_size])
        p_torch = _torch_probs(m, xb)
        p_onnx = softmax(sess.run([name_out], {name_in: xb})[0])
        mismatches += int((p_torch.argmax(1) != p_onnx.argmax(1)).sum())
        max_diff = max(max_diff, float(np.abs(p_torch - p_onnx).max()))
    return Parity(len(x), mismatches, max_diff, mismatches == 0 and max_diff <= tol, tol)
