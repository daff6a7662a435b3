"""Latency of children as real TFLite models: PyTorch -> ONNX -> TFLite (onnx2tf), timed on the host CPU with LiteRT
or on an Android phone over adb with TFLite's ``benchmark_model``; cached in SQLite."""

from latency.result import LatencyResult
from latency.runners import AdbRunner, DeviceError, HostRunner, parse_adb_devices, parse_benchmark_output
from latency.service import LatencyService, build_service

__all__ = [
    "AdbRunner",
    "DeviceError",
    "HostRunner",
    "LatencyResult",
    "LatencyService",
    "build_service",
    "parse_adb_devices",
    "parse_benchmark_output",
]
