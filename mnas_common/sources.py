"""Where images come from: Fashion-MNIST IDX files, CIFAR-10 python batches, ImageNet-style image folders.

Shared by ``nas.data`` (proxy training) and ``latency.calibration`` (real images for conversion checks).

A source yields the *training* images of the chosen classes; the held-out validation split is drawn from them by
``nas.data.prepare`` (as the paper held out 50K ImageNet training images), so the official test sets stay unseen.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnas_common.paths import cache_dir

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


@dataclass
class ArraySource:
    """Images already decoded: ``images`` uint8 NHWC, ``labels`` int64, ``class_names`` by label."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]


@dataclass
class FileSource:
    """Images on disk, decoded lazily: ``files[i]`` has label ``labels[i]``."""

    files: list[Path]
    labels: np.ndarray
    class_names: list[str]


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    try:
        with _open_maybe_gz(path) as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # a cut-off or damaged download: a traceback before
        raise ValueError(f"{path}: damaged ({type(exc).__name__}: {exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise ValueError(f"{path}: unsupported IDX element type 0x{dtype_code:02x} (expected unsigned byte)")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(shape))} values)")
    return body.reshape(shape)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    return None


def _fashion_mnist_files(root: Path) -> list[Path] | None:
    images, labels = _find(root, "train-images-idx3-ubyte"), _find(root, "train-labels-idx1-ubyte")
    return [images, labels] if images and labels else None


def _fashion_mnist_download() -> Path:
    return cache_dir("downloads") / "FashionMNIST" / "raw"


def fashion_mnist(root: str | Path | None, *, download: bool = True) -> ArraySource:
    """Fashion-MNIST training set (60,000 28x28 grey images) from IDX files.

    Debian's ``dataset-fashion-mnist`` puts them in /usr/share/datasets/fashion-mnist. Where that is missing,
    torchvision's downloader is the fallback for users with internet.
    """
    root = Path(root or FASHION_MNIST_ROOT).expanduser()
    found = _fashion_mnist_files(root)
    if found is None:
        if not download:
            raise FileNotFoundError(
                f"Fashion-MNIST not found in {root} (install the Debian package dataset-fashion-mnist)"
            )
        import socket

        target = cache_dir("downloads")
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)  # a machine without internet fails in seconds instead of hanging
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(target), train=True, download=True)
        except Exception as exc:
            raise FileNotFoundError(
                f"Fashion-MNIST not found in {root} and the download failed ({exc.__class__.__name__}); "
                "install the Debian package dataset-fashion-mnist"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
        return fashion_mnist(_fashion_mnist_download(), download=False)
    images, labels = found
    x = read_idx(images)
    y = read_idx(labels).astype(np.int64)
    if x.ndim != 3 or len(x) != len(y):
        raise ValueError(f"{images}: expected N x 28 x 28 images matching {len(y)} labels, got {x.shape}")
    return ArraySource(x[..., None], y, list(FASHION_MNIST_CLASSES))


def cifar10_batches(root: str | Path) -> list[Path]:
    """Where the five training batches are: in ``root/cifar-10-batches-py`` (the archive unpacked) or ``root``."""
    root = Path(root).expanduser()
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").exists() else root
    return [base / f"data_batch_{i}" for i in range(1, 6)]


def cifar10(root: str | Path) -> ArraySource:
    """CIFAR-10 training set from the python batches (``cifar-10-batches-py/data_batch_{1..5}``)."""
    xs, ys = [], []
    for path in cifar10_batches(root):
        if not path.exists():
            raise FileNotFoundError(f"CIFAR-10 batch missing: {path}")
        with open(path, "rb") as f:
            try:  # a cut-off file, or another dataset's (CIFAR-100 has fine_labels): a traceback before
                batch = pickle.load(f, encoding="bytes")
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                ys.append(np.asarray(batch[b"labels"], dtype=np.int64))
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}: not a CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    return ArraySource(np.concatenate(xs), np.concatenate(ys), list(CIFAR10_CLASSES))


def image_folder(root: str | Path, classes: int | Sequence[str] | None, seed: int) -> FileSource:
    """An ImageNet-style folder: ``root/train/<wnid>/*.JPEG`` (or ``root/<wnid>/*`` without ``train/``).

    ``classes``: None for all, an int to draw that many classes with ``seed``, or an explicit list of wnids.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    train = root / "train" if (root / "train").is_dir() else root
    available = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not available:
        raise ValueError(f"no class folders in {train}")
    if classes is None:
        chosen = available
    elif isinstance(classes, int):
        if not 1 <= classes <= len(available):
            raise ValueError(f"dataset.classes = {classes}, but {train} has {len(available)} classes")
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(available, size=classes, replace=False).tolist())
    else:
        chosen = [str(c) for c in classes]
        unknown = [c for c in chosen if c not in available]
        if unknown:
            raise ValueError(f"unknown class(es) {', '.join(unknown)}: no such folder in {train}")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"dataset.classes lists a class twice: {chosen}")
    files, labels = [], []
    for label, name in enumerate(chosen):
        found = sorted(p for p in (train / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ValueError(f"class {name!r} has no images in {train / name}")
        files.extend(found)
        labels.extend([label] * len(found))
    return FileSource(files, np.asarray(labels, dtype=np.int64), chosen)


def source_files(kind: str, root: str | Path | None, classes=None, seed: int = 0) -> list[Path] | None:
    """The files source ``kind`` reads, listed (not read) in label order; None when nothing is there to compare
    with (a source moved or unmounted after preparing, Fashion-MNIST not downloaded yet)."""
    if kind == "fashion_mnist":
        return _fashion_mnist_files(Path(root or FASHION_MNIST_ROOT).expanduser()) or \
            _fashion_mnist_files(_fashion_mnist_download())
    if not root or not Path(root).expanduser().is_dir():
        return None
    if kind == "cifar10":
        return [p for p in cifar10_batches(root) if p.exists()] or None
    return image_folder(root, classes, seed).files


def fingerprint(files: Sequence[Path]) -> str:
    """A cheap identity of a source: each file's class folder and name, size and modification time, in order (the
    order gives the labels). One stat per file, no content read: listing and fingerprinting a folder of 55,000
    files (the default imagenet_subset) took 0.8 s on the busy 2-core CI machine. Folder and name rather than the
    full path: one folder reached through a symlink or another spelling is one source, as the cache key (which
    resolves the root) already says."""
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.parent.name}/{path.name}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
