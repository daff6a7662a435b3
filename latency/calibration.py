"""Real images for conversion: onnx2tf's calibration file and the inputs of the PyTorch-vs-TFLite check.

onnx2tf downloads ``calibration_image_sample_data_20x128x128x3_float32.npy`` unless that file is in the current
working directory; we write it ourselves, from real Fashion-MNIST images, into the conversion working directory.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

CALIBRATION_NAME = "calibration_image_sample_data_20x128x128x3_float32.npy"


@lru_cache(maxsize=1)
def _fashion_mnist_images() -> np.ndarray:
    """The training images, read once per process (0.3 s a read; a table build converts ~1,700 layers)."""
    from mnas_common.sources import fashion_mnist

    return fashion_mnist(None, download=False).images


def real_images(count: int, resolution: int, channels: int, seed: int = 0) -> np.ndarray:
    """``count`` real Fashion-MNIST training images as float32 NCHW in [0, 1], resized and channel-replicated."""
    import torch
    import torch.nn.functional as F

    try:
        images = _fashion_mnist_images()
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(images), size=count, replace=False))
        x = torch.from_numpy(images[idx].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    except FileNotFoundError:
        # No dataset on this machine: smooth deterministic patterns (never the network).
        grid = torch.linspace(0, 1, 28)
        x = torch.stack([(torch.outer(grid, grid.roll(i)) + 0.1 * i) % 1.0 for i in range(count)])[:, None]
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    if channels != x.shape[1]:
        x = x.expand(-1, channels, -1, -1) if x.shape[1] == 1 else x.mean(1, keepdim=True).expand(-1, channels, -1, -1)
    return np.ascontiguousarray(x.numpy().astype(np.float32))


def write_calibration_file(directory: str | Path) -> Path:
    """Write onnx2tf's calibration file (20 x 128 x 128 x 3, float32 in [0, 1]) into ``directory``."""
    path = Path(directory) / CALIBRATION_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        data = real_images(20, 128, 3).transpose(0, 2, 3, 1)  # NHWC
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")  # several workers may write at once
        np.save(tmp, np.ascontiguousarray(data))
        tmp.replace(path)
    return path
