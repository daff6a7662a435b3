"""PyTorch -> ONNX -> TFLite (onnx2tf), and the check that the TFLite model computes what PyTorch does.

Runs inside the latency service's worker processes (TensorFlow and onnx2tf are imported once per worker). The
fast path asks onnx2tf only for the Keras graph (``disable_model_save``) and converts that to one float32 TFLite
flatbuffer with builtin ops: it skips the SavedModel export and the float16 model that onnx2tf writes by default,
which we never time. ``fast=False`` runs onnx2tf exactly as its defaults do (for the benchmark).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from pathlib import Path

import numpy as np

TFLITE_OPS_NOTE = "builtin TFLite ops only, so the official benchmark_model runs the model unchanged"


def converter_versions() -> dict:
    from importlib.metadata import version

    out = {}
    for package in ("torch", "onnx", "onnx2tf", "tensorflow"):
        try:
            out[package] = version(package)
        except Exception:
            out[package] = None
    return out


def realistic_eval(model):
    """``model`` in eval mode with realistic BN statistics and classifier scale (seeded, so always the same).

    Latency does not depend on the weights, but the conversion check needs outputs of a realistic scale: fresh
    initialisations (identity BN statistics, a 0.01-std classifier) give near-zero logits that hide layout bugs.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    model = model.eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0, 0.1, generator=generator)
            elif isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, m.in_features**-0.5, generator=generator)
    return model


def build_eval_model(arch: str, channels: int, num_classes: int):
    import torch

    from search_spaces import build_model

    torch.manual_seed(0)
    return realistic_eval(build_model(arch, num_classes=num_classes, in_channels=channels))


def build_eval_layer(spec):
    """One layer (a :class:`search_spaces.layers.LayerSpec`) as its own model, initialised as whole models are."""
    import torch

    from search_spaces.builder import build_layer

    torch.manual_seed(0)
    return realistic_eval(build_layer(spec))


def export_onnx(model, path: Path, resolution: int, channels: int) -> Path:
    import torch

    dummy = torch.zeros(1, channels, resolution, resolution)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(model, (dummy,), str(path), input_names=["input"], output_names=["logits"],
                          opset_version=17, dynamo=False)
    return path


def onnx_to_tflite(onnx_path: Path, out_dir: Path, *, fast: bool = True) -> Path:
    """Convert with onnx2tf; the working directory must hold the calibration file (see ``calibration``)."""
    import onnx2tf

    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if not fast:
            onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=str(out_dir), non_verbose=True)
            return out_dir / f"{onnx_path.stem}_float32.tflite"
        import tensorflow as tf

        model = onnx2tf.convert(
            input_onnx_file_path=str(onnx_path),
            output_folder_path=str(out_dir),
            non_verbose=True,
            disable_model_save=True,
            not_use_onnxsim=True,
        )
        # A bare tf.Module holds the function: converting with the Keras model as the trackable object makes TF
        # serialise every layer's Python config into a temporary SavedModel (26 of 28 s for MnasNet-B1, profiled).
        holder = tf.Module()
        holder.variables_ = model.variables
        holder.fn = tf.function(
            lambda *inputs: model(inputs),
            input_signature=[tf.TensorSpec(t.shape, t.dtype, t.name) for t in model.inputs],
        )
        converter = tf.lite.TFLiteConverter.from_concrete_functions([holder.fn.get_concrete_function()], holder)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    path = out_dir / f"{onnx_path.stem}_float32.tflite"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(flatbuffer)
    os.replace(tmp, path)
    return path


def make_interpreter(tflite_path: str | Path, threads: int = 1):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the deprecated runtime, only as a fallback (it crashes under NumPy 2)
        from tflite_runtime.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(tflite_path), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def compare_outputs(model, tflite_path: Path, images: np.ndarray) -> tuple[float, float]:
    """Max absolute and relative error between PyTorch (NCHW) and TFLite (NHWC) on the same real images."""
    import torch

    interpreter = make_interpreter(tflite_path)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    max_abs, max_ref = 0.0, 0.0
    for image in images:
        with torch.no_grad():
            ref = model(torch.from_numpy(image[None])).numpy()
        nhwc = image.transpose(1, 2, 0)[None]
        if tuple(inp["shape"]) != nhwc.shape:
            raise ValueError(f"TFLite input shape {tuple(inp['shape'])} differs from the expected {nhwc.shape}")
        interpreter.set_tensor(inp["index"], nhwc.astype(inp["dtype"]))
        interpreter.invoke()
        got = interpreter.get_tensor(out["index"])
        if ref.ndim == 4:  # a feature map (one layer as its own model): TFLite keeps it NHWC
            got = got.transpose(0, 3, 1, 2)
        got = got.reshape(ref.shape)
        max_abs = max(max_abs, output_error(got, ref))
        max_ref = max(max_ref, float(np.abs(ref).max()))
    return max_abs, max_abs / max(max_ref, 1e-12)


def output_error(got: np.ndarray, ref: np.ndarray) -> float:
    """The largest absolute difference; infinite where either output holds a NaN or an infinity (nothing can be
    compared there, so the check must fail: Python's ``max`` would have dropped a NaN and passed it)."""
    diff = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(ref, dtype=np.float64))
    return float(diff.max()) if np.isfinite(diff).all() else float("inf")


def convert_and_check(arch: str, *, resolution: int, channels: int, num_classes: int, out_dir: Path,
                      atol: float, rtol: float, fast: bool = True, check_images: int = 4) -> dict:
    """Export, convert and verify one child. Returns a dict (status, error, paths, errors, seconds)."""
    start = time.perf_counter()
    model = build_eval_model(arch, channels, num_classes)
    return convert_module(model, size=resolution, channels=channels, out_dir=out_dir, atol=atol, rtol=rtol,
                          fast=fast, check_images=check_images, start=start)


def convert_layer_and_check(spec, *, out_dir: Path, atol: float, rtol: float, fast: bool = True,
                            check_images: int = 2) -> dict:
    """The same for one layer of a network, with the input shape it has in the network."""
    start = time.perf_counter()
    model = build_eval_layer(spec)
    return convert_module(model, size=spec.size, channels=spec.cin, out_dir=out_dir, atol=atol, rtol=rtol,
                          fast=fast, check_images=check_images, start=start)


def convert_module(model, *, size: int, channels: int, out_dir: Path, atol: float, rtol: float, fast: bool,
                   check_images: int, start: float) -> dict:
    """PyTorch module (input 1 x channels x size x size) -> ONNX -> TFLite in ``out_dir``, checked on real images."""
    from latency.calibration import real_images

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(model, out_dir / "model.onnx", size, channels)
    tflite_path = onnx_to_tflite(onnx_path, out_dir, fast=fast)
    convert_seconds = time.perf_counter() - start
    max_abs, max_rel = compare_outputs(model, tflite_path, real_images(check_images, size, channels, seed=1))
    finite = math.isfinite(max_abs)  # JSON (the cache's records, SQLite's JSON functions) has no infinity
    result = {
        "status": "ok",
        "error": None,
        "onnx_path": str(onnx_path),
        "tflite_path": str(tflite_path),
        "max_abs_err": max_abs if finite else None,
        "max_rel_err": max_rel if finite else None,
        "convert_seconds": convert_seconds,
    }
    if not finite:
        result["status"] = "failed"
        result["error"] = "conversion mismatch: an output holds NaN or infinity (TFLite vs PyTorch on real images)"
    elif not (max_abs <= atol or max_rel <= rtol):
        result["status"] = "failed"
        result["error"] = (f"conversion mismatch: max abs error {max_abs:.3g} > {atol:g} and max relative error "
                           f"{max_rel:.3g} > {rtol:g} (TFLite vs PyTorch on real images)")
    return result
