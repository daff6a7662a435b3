"""Datasets for proxy training, prepared once into uint8 memory-mapped arrays that every child trains from.

Why a prepared cache: proxy training is the dominant cost of a search and thousands of children train on the same
subset, so JPEG decoding and resizing are done once. ``load_dataset(cfg.dataset)`` returns a
:class:`PreparedDataset` whose ``train``/``val`` splits are ``uint8`` NHWC memmaps; preparing is resumable and shows
a progress bar (``python -m nas.data prepare dataset=imagenet_subset dataset.root=...``).

Dataset config fields (``configs/dataset/*.yaml``):
  ``name``, ``source`` (fashion_mnist | cifar10 | imagefolder), ``root``, ``resolution`` (square side after
  resizing), ``channels`` (null: the source's own; 1 or 3 to convert), ``classes`` (null, a count drawn with the
  seed, or a list of class folder names), ``images_per_class`` (train images per class, null: all that remain),
  ``val_per_class`` (held out from the training images, fixed by ``seed``), ``seed``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import warnings
import zipfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnas_common import sources
from mnas_common.checks import is_int, known_fields, one_of, positive_int
from mnas_common.checks import seed as check_seed
from mnas_common.config import to_plain
from mnas_common.errors import first_line
from mnas_common.paths import cache_dir as default_cache_dir
from mnas_common.paths import directory_problem

__all__ = ["DamagedDataset", "DatasetConfig", "DatasetUnavailable", "PreparedDataset", "Split", "cache_root",
           "check_dataset", "load_dataset", "open_prepared", "prepare"]

FORMAT_VERSION = 2
# images written between progress checkpoints: a resumed prepare redoes at most one chunk
ARRAY_CHUNK = 2048
FILE_CHUNK = 256
# floats (4 bytes each) resized at once from an array source: 2,048 Fashion-MNIST images at 1,024 px are 8 GiB
RESIZE_FLOATS = 2**26
# the largest dataset.resolution: above any proxy or deployment input (224 px); 100,000 px asked 10 GB per image
MAX_RESOLUTION = 1024
# what reading a damaged prepared file raises: missing, cut off, garbage, not what prepare wrote (numpy: ValueError,
# EOFError, BadZipFile for bytes starting "PK"), a meta.json that is not JSON or lacks a field. Any other OSError
# (too many open files, out of memory, a disk's I/O error) is the machine's, not the file's: it propagates and
# nothing is deleted or started over, since rebuilding a healthy cache costs minutes and fails for the same reason.
DAMAGE = (FileNotFoundError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where prepared datasets live, absolute: ``cache_dir``, or None for ``$MNAS_CACHE_DIR/data``, else
    ``~/.cache/mnasnet-search/data``. An empty one is refused: ``cache_dir=$UNSET`` was the current directory."""
    if cache_dir is None:
        return default_cache_dir("data")
    if isinstance(cache_dir, str) and not cache_dir.strip():
        raise ValueError(f"cache_dir is empty; leave it out (or null) for the default $MNAS_CACHE_DIR/data, else "
                         f"~/.cache/mnasnet-search/data (here {default_cache_dir('data')})")
    # expanded here: a shell leaves the ~ of cache_dir=~/x alone (not a variable assignment); absolute, as workers
    # that change directory open the prepared dataset by its path
    return Path(cache_dir).expanduser().absolute()


SOURCES = ("fashion_mnist", "cifar10", "imagefolder")


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "fashion_mnist"
    source: str = "fashion_mnist"
    root: str | None = None
    resolution: int = 28
    channels: int | None = None
    classes: Any = None
    images_per_class: int | None = None
    val_per_class: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        one_of("dataset.source", self.source, SOURCES)
        if not is_int(self.resolution) or not 8 <= self.resolution <= MAX_RESOLUTION:
            raise ValueError(f"dataset.resolution must be an integer in [8, {MAX_RESOLUTION}], got {self.resolution!r}")
        if self.channels is not None and (not is_int(self.channels) or self.channels not in (1, 3)):
            raise ValueError(f"dataset.channels must be null, 1 or 3, got {self.channels!r}")
        positive_int("dataset.images_per_class", self.images_per_class, allow_none=True)
        positive_int("dataset.val_per_class", self.val_per_class)
        check_seed("dataset.seed", self.seed)  # numpy refused a negative one after the source was read, naming no field
        classes = self.classes
        if isinstance(classes, bool) or not (
            classes is None or isinstance(classes, int) or
            (isinstance(classes, (list, tuple)) and classes and all(isinstance(c, (str, int)) and
                                                                    not isinstance(c, bool) for c in classes))
        ):
            raise ValueError(f"dataset.classes must be null, a number of classes or a non-empty list of class names, "
                             f"got {classes!r}")
        if classes is not None and (classes if isinstance(classes, int) else len(classes)) < 2:
            raise ValueError(f"dataset.classes must choose at least 2 classes (a classifier of one class is right by "
                             f"construction), got {classes!r}")
        if isinstance(classes, (list, tuple)) and len(set(classes)) != len(classes):
            raise ValueError(f"dataset.classes lists a class twice: {list(classes)}")
        if isinstance(classes, list):
            object.__setattr__(self, "classes", tuple(classes))
        if isinstance(self.root, str):
            # the shell leaves the ~ of dataset.root=~/data alone (not a variable assignment): expanded once here,
            # the source, the cache key (~/x and /home/me/x are one cache) and the recorded config all agree
            object.__setattr__(self, "root", os.path.expanduser(self.root))
        if self.source == "imagefolder" and not self.root:
            raise ValueError(f"dataset {self.name!r}: set dataset.root to an ImageNet-style folder (train/<wnid>/*.JPEG)")

    @classmethod
    def from_config(cls, cfg: Mapping) -> DatasetConfig:
        cfg = {k: v for k, v in dict(to_plain(cfg)).items() if k != "_target_"}
        known_fields("dataset", cfg, cls.__dataclass_fields__)
        return cls(**cfg)

    def key(self) -> str:
        """Identity of the prepared arrays (everything that changes their content)."""
        root = str(Path(self.root).resolve()) if self.root else None
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "name"}
        fields.update(root=root, classes=list(self.classes) if isinstance(self.classes, tuple) else self.classes,
                      format=FORMAT_VERSION)
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.name}-{self.resolution}px-{digest}"


@dataclass
class Split:
    """``x``: uint8 images N x H x W x C (memory-mapped), ``y``: int64 labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class PreparedDataset:
    name: str
    num_classes: int
    channels: int
    resolution: int
    train: Split
    val: Split
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    path: Path
    info: dict

    def __reduce__(self):
        # pickled (for worker processes, Ray tasks) as its cache path, not as a copy of the arrays
        return (open_prepared, (str(self.path),))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "channels": self.channels,
            "resolution": self.resolution,
            "num_train": len(self.train),
            "num_val": len(self.val),
            "class_names": list(self.class_names),
            "split": "val: val_per_class images per class held out from the training images, drawn with seed",
            "path": str(self.path),
            **{k: v for k, v in self.info.items() if k not in ("val_indices",)},
        }


def _select(labels: np.ndarray, class_names: list[str], per_class: int | None, val_per_class: int, seed: int,
            where: str):
    """Per class: shuffle with ``seed``, hold out ``val_per_class``, keep ``per_class`` for training. A class
    too small is named by its name (wnid, folder, Fashion-MNIST name), not its position in the chosen list."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c, name in enumerate(class_names):
        idx = np.flatnonzero(labels == c)
        need = val_per_class + (per_class or 1)
        if len(idx) < need:
            raise ValueError(
                f"{where}: class {name!r} has {len(idx)} images, fewer than val_per_class + images_per_class = {need}"
            )
        idx = rng.permutation(idx)
        val_idx.append(idx[:val_per_class])
        train_idx.append(idx[val_per_class : val_per_class + per_class] if per_class else idx[val_per_class:])
    # interleave classes in a fixed random order so memmap reads of a shuffled batch stay spread out
    train = rng.permutation(np.concatenate(train_idx))
    val = np.sort(np.concatenate(val_idx))
    return train, val


def _resize_array(images: np.ndarray, resolution: int, channels: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, 3, -1, -1)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _decode_file(path: Path, resolution: int, channels: int) -> np.ndarray:
    """Decode, resize the shorter side to ``resolution`` and centre-crop (the standard evaluation transform)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        w, h = im.size
        scale = resolution / min(w, h)
        im = im.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def decode_workers() -> int:
    """Threads decoding image files: ``$MNAS_DECODE_WORKERS`` or the number of cores (at most 8)."""
    value = os.environ.get("MNAS_DECODE_WORKERS")
    if value is not None:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"MNAS_DECODE_WORKERS must be a positive integer, got {value!r}")
        return int(value)
    return max(1, min(8, os.cpu_count() or 1))


def _decode_or_error(path: Path, resolution: int, channels: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return _decode_file(path, resolution, channels), None
    except Exception as exc:  # only decoding errors: KeyboardInterrupt and friends still stop the preparation
        return None, f"{path}: {exc.__class__.__name__}: {exc}"


def _load_source(cfg: DatasetConfig):
    if cfg.source == "fashion_mnist":
        return sources.fashion_mnist(cfg.root)
    if cfg.source == "cifar10":
        if not cfg.root:
            raise ValueError("dataset.root must point at CIFAR-10 (cifar-10-batches-py)")
        return sources.cifar10(cfg.root)
    return sources.image_folder(cfg.root, cfg.classes, cfg.seed)


def _restrict_classes(src, classes, seed):
    """For array sources: keep a subset of classes (count drawn with the seed or a list of names/indices)."""
    if classes is None:
        return src, np.arange(len(src.labels))
    names = src.class_names
    if isinstance(classes, int):
        if not 1 <= classes <= len(names):
            raise ValueError(f"dataset.classes = {classes}, but the dataset has {len(names)} classes")
        keep = sorted(np.random.default_rng(seed).choice(len(names), size=classes, replace=False).tolist())
    else:
        keep = []
        for c in classes:
            if isinstance(c, int) and 0 <= c < len(names):
                keep.append(c)
            elif c in names:
                keep.append(names.index(c))
            else:
                raise ValueError(f"unknown class {c!r}; known: {', '.join(names)}")
        if len(set(keep)) != len(keep):  # by index and by name
            raise ValueError(f"dataset.classes lists a class twice: {list(classes)}")
    mask = np.isin(src.labels, keep)
    remap = {old: new for new, old in enumerate(keep)}
    labels = np.asarray([remap[int(v)] for v in src.labels[mask]], dtype=np.int64)
    return sources.ArraySource(src.images[mask], labels, [names[k] for k in keep]), np.flatnonzero(mask)


def prepare(cfg: DatasetConfig, cache_dir: str | Path | None = None, *, progress: bool = True,
            source_checked: bool = False) -> Path:
    """Build (or finish building) the prepared arrays of ``cfg``; returns their directory. ``source_checked``: the
    caller has just compared a finished cache with its source (:func:`check_dataset`), so it is not listed and
    fingerprinted a second time (about a second per 50,000 files)."""
    out = cache_root(cache_dir) / cfg.key()
    if (out / "meta.json").exists():
        changed = None if source_checked else _source_changed(cfg, out)
        if changed:
            raise DatasetUnavailable(changed)
        return out
    out.mkdir(parents=True, exist_ok=True)
    # one preparer per cache directory (parallel sweeps share it): the others wait, then find meta.json
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "meta.json").exists():
            return out
        return _prepare_locked(cfg, out, progress)


def _prepare_locked(cfg: DatasetConfig, out: Path, progress: bool) -> Path:
    from tqdm.auto import tqdm

    started = time.perf_counter()
    try:  # the source and what the config asks of it: a problem here is the user's to fix, in one line
        # taken before reading: a file changed while this runs shows as a changed source next time, never as a match
        fingerprint = _source_fingerprint(cfg)
        src = _load_source(cfg)
        fingerprint = fingerprint or _source_fingerprint(cfg)  # nothing to list before a download
        origin = np.arange(len(src.labels))  # position of each image in the source (its file list or IDX file)
        if isinstance(src, sources.ArraySource):
            src, origin = _restrict_classes(src, cfg.classes, cfg.seed)
        num_classes = len(src.class_names)
        train_idx, val_idx = _select(src.labels, src.class_names, cfg.images_per_class, cfg.val_per_class, cfg.seed,
                                     f"dataset {cfg.name}")
    except (OSError, ValueError) as exc:
        message = first_line(exc)
        raise DatasetUnavailable(message if message.startswith(f"dataset {cfg.name}") else
                                 f"dataset {cfg.name}: {message}") from None
    native = src.images.shape[-1] if isinstance(src, sources.ArraySource) else 3
    channels = cfg.channels or native
    shape = (cfg.resolution, cfg.resolution, channels)
    _check_space(cfg, out, {"train": len(train_idx), "val": len(val_idx)}, shape)
    skipped: list[str] = []
    # Pillow releases the GIL while decoding and resizing, so threads spread JPEG preparation over the cores
    with ThreadPoolExecutor(max_workers=decode_workers()) as pool:
        for split, idx in (("train", train_idx), ("val", val_idx)):
            np.save(out / f"{split}_y.npy", src.labels[idx])
            x_path, done_path = out / f"{split}_x.u8", out / f"{split}_progress.json"
            state = _read_progress(done_path, x_path, (len(idx), *shape), fingerprint)
            done = state["done"]
            skipped.extend(state.get("skipped", []))  # corrupt images met before an interruption stay counted
            split_skipped = list(state.get("skipped", []))
            x = np.lib.format.open_memmap(x_path, mode="r+" if done else "w+", dtype=np.uint8, shape=(len(idx), *shape))
            chunk = ARRAY_CHUNK if isinstance(src, sources.ArraySource) else FILE_CHUNK
            bar = tqdm(total=len(idx), initial=done, desc=f"prepare {cfg.name}/{split}", unit="img", disable=not progress)
            for start in range(done, len(idx), chunk):
                part = idx[start : start + chunk]
                if isinstance(src, sources.ArraySource):  # resized in pieces: the floats of a chunk grow as res**2
                    step = max(1, RESIZE_FLOATS // (cfg.resolution * cfg.resolution * channels))
                    for at in range(0, len(part), step):
                        piece = part[at : at + step]  # the chunk's last piece, or the whole chunk: not step long
                        x[start + at : start + at + len(piece)] = _resize_array(src.images[piece], cfg.resolution,
                                                                                channels)
                else:
                    files = [src.files[i] for i in part]
                    decoded = pool.map(lambda f: _decode_or_error(f, cfg.resolution, channels), files)
                    for j, (arr, error) in enumerate(decoded):
                        if error is None:
                            x[start + j] = arr
                        else:  # a corrupt image is skipped (left black), counted and named
                            skipped.append(error)
                            split_skipped.append(error)
                            warnings.warn(f"skipping corrupt image {error}", stacklevel=2)
                x.flush()
                _write_json(done_path, {"done": start + len(part), "skipped": split_skipped, "source": fingerprint})
                bar.update(len(part))
            bar.close()
            del x
    pixels = np.load(out / "train_x.u8", mmap_mode="r")
    sample = pixels[: min(len(pixels), 4096)].reshape(-1, channels).astype(np.float64) / 255.0
    meta = {
        "name": cfg.name,
        "source": cfg.source,
        "num_classes": num_classes,
        "class_names": src.class_names,
        "channels": channels,
        "resolution": cfg.resolution,
        "num_train": int(len(train_idx)),
        "num_val": int(len(val_idx)),
        "mean": sample.mean(0).tolist(),
        "std": (sample.std(0) + 1e-6).tolist(),
        "seed": cfg.seed,
        "images_per_class": cfg.images_per_class,
        "val_per_class": cfg.val_per_class,
        "skipped_images": skipped,
        "prepare_seconds": time.perf_counter() - started,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "source_fingerprint": fingerprint,
    }
    # positions in the source's full training set: which images were trained on and held out is auditable
    np.save(out / "train_source_indices.npy", origin[train_idx])
    np.save(out / "val_source_indices.npy", origin[val_idx])
    _write_json(out / "meta.json", meta)  # written last: its presence means the arrays are complete
    return out


def _size(n: float) -> str:
    """``n`` bytes for a reader: 144.3 KiB, 1.5 TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _check_space(cfg: DatasetConfig, out: Path, counts: dict[str, int], shape: tuple[int, ...]) -> None:
    """Refuse, before any array is created, a preparation the disk of ``out`` cannot hold. The arrays are sparse
    files: numpy creates them at full size at once and the disk fills only as images are written, so without
    this an oversized one failed hours in (``dataset.resolution=100000``: a 1.6 TB file, then an allocator error).
    What an interrupted preparation already wrote is on the disk already and not counted again."""
    need = 0
    for split, n in counts.items():
        x_bytes = n * int(np.prod(shape))
        try:
            written = (out / f"{split}_x.u8").stat().st_blocks * 512
        except (FileNotFoundError, AttributeError):  # not started (st_blocks: POSIX only)
            written = 0
        need += max(0, x_bytes - written) + 3 * 8 * n  # images; labels and source positions (int64)
    free = shutil.disk_usage(out).free
    if need > free:
        raise DatasetUnavailable(f"dataset {cfg.name}: its prepared arrays need {_size(need)} more at "
                                 f"{cfg.resolution} px but {out.parent} has {_size(free)} free; lower "
                                 f"dataset.resolution or dataset.images_per_class, or set cache_dir to a larger disk")


def _write_json(path: Path, value: dict) -> None:
    """Write-then-rename: a crash or Ctrl-C mid-write leaves the previous file whole, never a cut-off one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=list))
    os.replace(tmp, path)


def _read_progress(path: Path, x_path: Path, shape: tuple[int, ...], source: dict | None) -> dict:
    """The checkpoint of a split's interrupted preparation, or ``done: 0`` (start the split over) when there is none
    or it cannot be trusted: a file cut off by a crash (written before writes were atomic), edited, or not ours.
    Redoing a split costs minutes; refusing to prepare until a user finds and deletes the file costs more.
    A checkpoint of another state of the source (fingerprint ``source``) is not resumed: its images and the new
    file list would mix labels, or overrun an array sized for the old one. Nor is one whose image array is not the
    split's (``shape``): numpy zero-extends a truncated one (the images it lost stayed black) and one of another
    size was written past its end."""
    try:
        state = json.loads(path.read_text())
        if is_int(state["done"]) and 0 <= state["done"] <= shape[0] and isinstance(state.get("skipped", []), list):
            if "source" in state and state["source"] != source:  # (one from before fingerprints has none: resumed)
                warnings.warn(f"{path}: the source changed since this preparation was interrupted; starting this "
                              "split over", stacklevel=3)
            elif _holds(x_path, shape):
                return state
    except DAMAGE:  # missing, not JSON, not a mapping, no "done" (EMFILE and friends: not a reason to start over)
        pass
    return {"done": 0}


def _holds(x_path: Path, shape: tuple[int, ...]) -> bool:
    """Whether ``x_path`` is a whole uint8 ``.npy`` array of ``shape`` (read-only, a short file fails to map)."""
    try:
        x = np.load(x_path, mmap_mode="r")
    except DAMAGE:
        return False
    return x.shape == shape and x.dtype == np.uint8


def _source_fingerprint(cfg: DatasetConfig) -> dict | None:
    """``{dir, files}``: where the source's files were listed, and their fingerprint; None with nothing to list."""
    files = sources.source_files(cfg.source, cfg.root, cfg.classes, cfg.seed)
    if files is None:
        return None
    return {"dir": str(Path(files[0]).parent) if files else "", "files": sources.fingerprint(files)}


def _source_changed(cfg: DatasetConfig, out: Path) -> str | None:
    """Why the finished cache ``out`` no longer matches its source, or None.

    A changed source is refused rather than rebuilt: rebuilding would change the images under a search being
    resumed, or under another run reading this directory, and make new results incomparable with the old ones.
    Deleting the directory is the user's decision. A source that is gone leaves its cache usable (that is what the
    cache is for), and so does a cache prepared before fingerprints were recorded (nothing to compare with)."""
    try:
        recorded = json.loads((out / "meta.json").read_text()).get("source_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None  # a damaged meta.json is open_prepared's to name (and load_dataset's to rebuild)
    if not recorded:
        return None
    try:
        current = _source_fingerprint(cfg)
    except (OSError, ValueError):  # a class folder gone, a file vanished between listing and stat
        current = "unlistable"
    if (cfg.source == "fashion_mnist" and isinstance(current, dict) and isinstance(recorded, dict)
            and current["dir"] != recorded.get("dir")):
        # read from another folder now, as Fashion-MNIST is once its Debian package is installed after a download
        # (same images, other files): the folder it was prepared from is not the one listed, as if it were gone.
        # Only Fashion-MNIST: an image folder's dir is its first drawn class, which class folders added or removed
        # change (classes: N draws others), and that change went unnoticed, its old classes' cache reused
        return None
    if isinstance(current, dict) and not isinstance(recorded, dict):
        current = current["files"]  # recorded before the folder was: its files only
    if current is None or current == recorded:
        return None
    return (f"dataset {cfg.name}: its source {cfg.root or sources.FASHION_MNIST_ROOT} changed (files added, removed "
            f"or modified) since it was prepared in {out}; delete that directory to prepare it from the new files")


def check_dataset(cfg: DatasetConfig, cache_dir: str | Path | None = None) -> str | None:
    """A reason the dataset cannot be prepared (its source is missing) or its prepared cache cannot be used (its
    source changed since), found without reading the source; None when it is prepared from the source as it is, or
    the source is there. Fashion-MNIST may still be downloaded, so its absence is not a problem
    here (the download fails within seconds, with its own message, where there is no internet)."""
    out = cache_root(cache_dir) / cfg.key()
    if (out / "meta.json").exists():
        return _source_changed(cfg, out)
    root = Path(cfg.root) if cfg.root else None
    if cfg.source == "imagefolder" and (root is None or not root.is_dir()):
        return f"dataset {cfg.name}: image folder not found: {cfg.root} (set dataset.root or IMAGENET_ROOT)"
    if cfg.source == "cifar10" and not (root and sources.cifar10_batches(root)[0].exists()):
        return f"dataset {cfg.name}: CIFAR-10 batches not found in {cfg.root} (set dataset.root or CIFAR10_ROOT)"
    if problem := directory_problem(out):  # to be prepared: a search found this only after writing its store
        return f"dataset {cfg.name}: cannot prepare it in {out.parent}: {problem} (cache_dir or MNAS_CACHE_DIR)"
    return None


def load_dataset(cfg: Mapping | DatasetConfig, cache_dir: str | Path | None = None, *, progress: bool = True,
                 source_checked: bool = False) -> PreparedDataset:
    """Prepare the dataset if needed and open its memory-mapped splits; a damaged cache is rebuilt (damaged as
    :func:`open_prepared` says: an OSError of the machine, such as too many open files, propagates and deletes
    nothing). ``source_checked`` as for :func:`prepare`."""
    cfg = cfg if isinstance(cfg, DatasetConfig) else DatasetConfig.from_config(cfg)
    path = prepare(cfg, cache_dir, progress=progress, source_checked=source_checked)
    try:
        return open_prepared(path)
    except DamagedDataset as exc:
        with open(path / ".lock", "w") as lock:  # the same lock as prepare: no one reads it while it is rebuilt
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:  # another process that met the same damage may have rebuilt it while this one waited
                return open_prepared(path)
            except (DamagedDataset, FileNotFoundError):
                pass
            warnings.warn(f"{exc}; rebuilding it", stacklevel=2)
            for item in path.iterdir():
                if item.name != ".lock":
                    item.unlink()
        return open_prepared(prepare(cfg, cache_dir, progress=progress))


class DatasetUnavailable(ValueError):
    """The dataset's source is missing or unreadable, or does not hold what the config asks of it (classes, images
    per class), or the cache's disk cannot hold its arrays; the message is one line naming the dataset and the
    problem."""


class DamagedDataset(ValueError):
    """A prepared dataset directory whose files are missing, truncated or not what ``prepare`` wrote (``DAMAGE``)."""


def open_prepared(path: str | Path) -> PreparedDataset:
    """Open a finished prepared directory (memory-mapped, nothing is read until used).

    Every array is checked against the shapes and sizes ``meta.json`` records (a missing, truncated or garbage
    ``.u8``/``.npy`` file, or a meta.json that is not JSON or lacks a field, raises :class:`DamagedDataset` naming
    the directory, instead of a numpy error later). Any other OSError (too many open files, out of memory, an I/O
    error) is not damage: it propagates unchanged, and :func:`load_dataset` deletes nothing.
    """
    path = Path(path)
    if not (path / "meta.json").exists():
        raise FileNotFoundError(f"{path}: not a finished prepared dataset (no meta.json)")
    try:
        meta = json.loads((path / "meta.json").read_text())
        splits = {}
        for name in ("train", "val"):
            x = np.load(path / f"{name}_x.u8", mmap_mode="r")
            y = np.load(path / f"{name}_y.npy")
            expected = (meta[f"num_{name}"], meta["resolution"], meta["resolution"], meta["channels"])
            if x.shape != expected or x.dtype != np.uint8 or y.shape != (expected[0],):
                raise ValueError(f"{name} arrays have shape {x.shape}/{y.shape}, expected {expected}")
            if y.size and not (0 <= int(y.min()) and int(y.max()) < meta["num_classes"]):
                raise ValueError(f"{name} labels outside [0, {meta['num_classes']})")
            splits[name] = Split(x, y)
        return PreparedDataset(  # inside: a meta.json without one of these fields is damage too
            name=meta["name"],
            num_classes=meta["num_classes"],
            channels=meta["channels"],
            resolution=meta["resolution"],
            train=splits["train"],
            val=splits["val"],
            class_names=meta["class_names"],
            mean=tuple(meta["mean"]),
            std=tuple(meta["std"]),
            path=path,
            info={k: meta[k] for k in ("seed", "images_per_class", "val_per_class", "skipped_images",
                                       "prepare_seconds")},
        )
    except DAMAGE as exc:
        raise DamagedDataset(f"prepared dataset {path} is damaged ({first_line(exc, with_type=True)})") from None
