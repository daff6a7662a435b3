"""Prepared datasets: real Fashion-MNIST subsets, real JPEG folders written here, split by seed, resumable cache."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nas.data as data_mod
from nas.data import DatasetConfig, cache_root, load_dataset, prepare
from mnas_common import sources
from mnas_common.sources import FASHION_MNIST_ROOT, read_idx
from tests.conftest import needs_fmnist

_real_decode = data_mod._decode_file


def fmnist(**kw) -> dict:
    cfg = dict(name="fm", source="fashion_mnist", root=FASHION_MNIST_ROOT, resolution=16, classes=3,
               images_per_class=20, val_per_class=10, seed=0)
    cfg.update(kw)
    return cfg


def write_folder(root: Path, classes: dict[str, int], size=(40, 30)) -> Path:
    """ImageNet layout with real JPEGs: each class has its own colour so labels can be checked from pixels."""
    rng = np.random.default_rng(0)
    for c, (wnid, n) in enumerate(classes.items()):
        d = root / "train" / wnid
        d.mkdir(parents=True)
        for i in range(n):
            arr = np.zeros((size[1], size[0], 3), np.uint8)
            arr[..., c % 3] = 200
            arr += rng.integers(0, 30, arr.shape, dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{wnid}_{i}.JPEG", quality=90)
    return root


def interrupt_after(monkeypatch, n: int) -> None:
    """Decoding fails after n images with KeyboardInterrupt (Ctrl-C mid-way, not a corrupt image); progress is
    checkpointed every 4 images."""
    real, calls = data_mod._decode_file, {"n": 0}

    def flaky(path, resolution, channels):
        calls["n"] += 1
        if calls["n"] > n:
            raise KeyboardInterrupt
        return real(path, resolution, channels)

    monkeypatch.setattr(data_mod, "_decode_file", flaky)
    monkeypatch.setattr(data_mod, "FILE_CHUNK", 4)


def folder_of_24(tmp_path: Path, images_per_class: int | None = 10) -> DatasetConfig:
    """Two classes of 12 JPEGs, 2 held out per class."""
    root = write_folder(tmp_path / "imnet", {"n01": 12, "n02": 12})
    return DatasetConfig.from_config(dict(name="imf", source="imagefolder", root=str(root), resolution=16, channels=3,
                                          images_per_class=images_per_class, val_per_class=2, seed=0))


def interrupted(cfg: DatasetConfig, cache_dir: Path, monkeypatch) -> Path:
    """The directory of a preparation of ``cfg`` interrupted (Ctrl-C, not a corrupt image) after 7 images, with a
    checkpoint at 4; decoding stays interrupting until the test restores ``_decode_file``."""
    interrupt_after(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, cache_dir, progress=False)
    return cache_root(cache_dir) / cfg.key()


@needs_fmnist
def test_fashion_mnist_subset_shapes_labels_and_split(tmp_path):
    d = load_dataset(fmnist(), cache_dir=tmp_path, progress=False)
    assert (d.num_classes, d.channels, d.resolution) == (3, 1, 16)
    assert d.train.x.shape == (60, 16, 16, 1) and d.train.x.dtype == np.uint8
    assert d.val.x.shape == (30, 16, 16, 1)
    assert np.bincount(d.train.y, minlength=3).tolist() == [20, 20, 20]
    assert np.bincount(d.val.y, minlength=3).tolist() == [10, 10, 10]
    train_src = np.load(d.path / "train_source_indices.npy")
    val_src = np.load(d.path / "val_source_indices.npy")
    assert not set(train_src) & set(val_src), "validation images must be held out of training"
    info = d.describe()
    assert info["num_train"] == 60 and info["num_val"] == 30 and info["seed"] == 0
    assert len(info["class_names"]) == 3 and json.dumps(info)
    # the labels really are the source labels of the chosen classes, remapped in order
    labels = read_idx(Path(FASHION_MNIST_ROOT) / "train-labels-idx1-ubyte.gz")
    chosen = sorted(set(labels[val_src].tolist()))
    assert [chosen.index(v) for v in labels[val_src]] == d.val.y.tolist()


@needs_fmnist
def test_split_is_fixed_by_seed_and_cache_is_reused(tmp_path):
    a = load_dataset(fmnist(), cache_dir=tmp_path, progress=False)
    b = load_dataset(fmnist(), cache_dir=tmp_path, progress=False)
    assert a.path == b.path and a.describe()["prepare_seconds"] == b.describe()["prepare_seconds"]
    c = load_dataset(fmnist(seed=1), cache_dir=tmp_path, progress=False)
    assert c.path != a.path
    assert not np.array_equal(np.load(a.path / "val_source_indices.npy"), np.load(c.path / "val_source_indices.npy"))
    # a fresh cache directory with the same seed gives identical arrays
    d = load_dataset(fmnist(), cache_dir=tmp_path / "other", progress=False)
    assert np.array_equal(np.asarray(a.train.x), np.asarray(d.train.x))
    assert np.array_equal(a.val.y, d.val.y)


@needs_fmnist
def test_cache_dir_default_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env" / "data"
    d = load_dataset(fmnist(channels=3, classes=["trouser", "bag"]), progress=False)
    assert str(d.path).startswith(str(tmp_path / "env" / "data"))
    assert d.channels == 3 and d.class_names == ["trouser", "bag"]
    x = np.asarray(d.train.x)
    assert np.array_equal(x[..., 0], x[..., 2]), "grey replicated to 3 channels"


@needs_fmnist
def test_a_class_named_twice_by_index_and_by_name_is_refused(tmp_path):
    """[1, "trouser"] passed the config's check and made two classes of one (the second label empty)."""
    with pytest.raises(ValueError, match="lists a class twice"):
        load_dataset(fmnist(classes=[1, "trouser"]), cache_dir=tmp_path, progress=False)


def test_a_relative_cache_dir_env_is_made_absolute(tmp_path, monkeypatch):
    """Worker processes change directory (the latency service's run in its work directory)."""
    from mnas_common.paths import cache_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNAS_CACHE_DIR", "rel")
    assert cache_dir("latency") == tmp_path / "rel" / "latency"


def test_image_folder_classes_by_count_and_list(tmp_path):
    root = write_folder(tmp_path / "imnet", {"n01": 8, "n02": 8, "n03": 8})
    cfg = dict(name="imf", source="imagefolder", root=str(root), resolution=16, channels=3, classes=["n03", "n01"],
               images_per_class=5, val_per_class=3, seed=0)
    d = load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)
    assert d.class_names == ["n03", "n01"] and d.train.x.shape == (10, 16, 16, 3)
    # class colour survives decode/resize: n03 (index 2) is blue-ish, n01 red-ish
    for x, y in zip(np.asarray(d.train.x), d.train.y):
        assert int(x.reshape(-1, 3).mean(0).argmax()) == (2 if y == 0 else 0)
    d2 = load_dataset({**cfg, "classes": 2}, cache_dir=tmp_path / "c", progress=False)
    assert d2.num_classes == 2 and set(d2.class_names) <= {"n01", "n02", "n03"}


@pytest.mark.parametrize("change, message", [
    ({"classes": ["n01", "n09"]}, "n09"),
    ({"root": "MISSING"}, "not found"),
    ({"images_per_class": 50}, "fewer than"),
    ({"resolution": 3}, "resolution"),
    ({"bogus": 1}, "bogus"),
    ({"image_per_class": 1}, r"image_per_class \(did you mean images_per_class\?\)"),
    ({"source": "mnist"}, "source"),
    ({"classes": True}, "dataset.classes"),
    ({"classes": []}, "dataset.classes"),
    ({"classes": 1}, "at least 2 classes"),  # trained 1-class children, top-1 = 1.0 by construction
    ({"classes": ["n01"]}, "at least 2 classes"),
    ({"classes": ["n01", "n01"]}, "lists a class twice"),
    ({"val_per_class": True}, "dataset.val_per_class"),
    ({"seed": -1}, r"dataset.seed must be an integer in \[0, 2\*\*64\), got -1"),  # numpy's, after reading
])
def test_bad_input_gives_clear_errors(tmp_path, change, message):
    root = write_folder(tmp_path / "imnet", {"n01": 6, "n02": 6})
    cfg = dict(name="imf", source="imagefolder", root=str(root), resolution=16, channels=3, classes=None,
               images_per_class=2, val_per_class=2, seed=0)
    cfg.update(change)
    if cfg["root"] == "MISSING":
        cfg["root"] = str(tmp_path / "nowhere")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)


def test_empty_class_is_named(tmp_path):
    root = write_folder(tmp_path / "imnet", {"n01": 6})
    (root / "train" / "n02").mkdir()
    cfg = dict(name="imf", source="imagefolder", root=str(root), resolution=16, images_per_class=2, val_per_class=2)
    with pytest.raises(ValueError, match="n02"):
        load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)


def test_corrupt_image_is_skipped_with_warning_and_counted(tmp_path):
    root = write_folder(tmp_path / "imnet", {"n01": 6, "n02": 6})
    bad = root / "train" / "n02" / "n02_3.JPEG"
    bad.write_bytes(b"not a jpeg at all")
    cfg = dict(name="imf", source="imagefolder", root=str(root), resolution=16, channels=3, images_per_class=4,
               val_per_class=2, seed=0)
    with pytest.warns(UserWarning, match="n02_3.JPEG"):
        d = load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)
    skipped = d.describe()["skipped_images"]
    assert len(skipped) == 1 and "n02_3.JPEG" in skipped[0]


def test_prepare_resumes_after_interruption(tmp_path, monkeypatch):
    cfg = folder_of_24(tmp_path)
    reference = prepare(cfg, tmp_path / "ref", progress=False)
    out = interrupted(cfg, tmp_path / "c", monkeypatch)
    assert not (out / "meta.json").exists()
    done = json.loads((out / "train_progress.json").read_text())["done"]
    assert 0 < done < 20

    seen = []

    def counting(path, resolution, channels):
        seen.append(path)
        return _real_decode(path, resolution, channels)

    monkeypatch.setattr(data_mod, "_decode_file", counting)
    path = prepare(cfg, tmp_path / "c", progress=False)
    assert len(seen) == 20 + 4 - done, "only the unfinished images are decoded again"
    for name in ("train_x.u8", "val_x.u8"):
        assert np.array_equal(np.load(path / name), np.load(reference / name))


@needs_fmnist
def test_concurrent_prepares_build_once(tmp_path, monkeypatch):
    import threading

    real, calls = data_mod._prepare_locked, []

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(data_mod, "_prepare_locked", counting)
    cfg = DatasetConfig.from_config(fmnist())
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(prepare(cfg, tmp_path, progress=False))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 3 and len(set(paths)) == 1 and len(calls) == 1
    assert load_dataset(cfg, cache_dir=tmp_path, progress=False).train.x.shape == (60, 16, 16, 1)


@pytest.mark.parametrize("damage", ["truncated", "other shape"])
def test_a_checkpoint_beside_an_image_array_not_of_its_split_starts_the_split_over(tmp_path, monkeypatch, damage):
    """Resuming opened the split's array as it was on disk: numpy zero-extends a truncated one, so the images it had
    lost stayed black in the finished cache, and one of another shape was written past its end (IndexError). Such a
    checkpoint cannot be trusted: the split starts over and ends equal to a fresh build."""
    cfg = folder_of_24(tmp_path)
    reference = data_mod.open_prepared(prepare(cfg, tmp_path / "ref", progress=False))
    out = interrupted(cfg, tmp_path / "c", monkeypatch)
    x_path = out / "train_x.u8"
    if damage == "truncated":
        with open(x_path, "r+b") as f:
            f.truncate(200)  # the .npy header and a few pixels
    else:
        np.save(x_path, np.zeros((5, 16, 16, 3), np.uint8), allow_pickle=False)
        os.replace(str(x_path) + ".npy", x_path)
    assert json.loads((out / "train_progress.json").read_text())["done"] > 0
    monkeypatch.setattr(data_mod, "_decode_file", _real_decode)
    d = load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)
    assert np.array_equal(d.train.x, reference.train.x) and np.array_equal(d.val.x, reference.val.x)


def test_skipped_images_stay_counted_across_a_resume(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "imnet", {"n01": 10, "n02": 10})
    for bad in sorted((root / "train" / "n01").iterdir()):
        bad.write_bytes(b"\xff\xd8 truncated")  # every n01 image is corrupt: whichever chunk runs first meets one
    cfg = DatasetConfig.from_config(dict(name="imf", source="imagefolder", root=str(root), resolution=16,
                                         channels=3, images_per_class=6, val_per_class=2, seed=0))
    interrupt_after(monkeypatch, 8)
    monkeypatch.setenv("MNAS_DECODE_WORKERS", "2")
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare(cfg, tmp_path / "c", progress=False)
    monkeypatch.setattr(data_mod, "_decode_file", _real_decode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)
    skipped = d.describe()["skipped_images"]
    assert len(skipped) == 8 and all("n01" in s for s in skipped), skipped


@needs_fmnist
def test_pickles_as_its_cache_path_not_its_arrays(tmp_path):
    import pickle

    d = load_dataset(fmnist(images_per_class=200), cache_dir=tmp_path, progress=False)
    blob = pickle.dumps(d)
    assert len(blob) < 2000 < d.train.x.nbytes
    e = pickle.loads(blob)
    assert e.path == d.path and e.describe() == d.describe()
    assert np.array_equal(np.asarray(e.train.x), np.asarray(d.train.x)) and np.array_equal(e.val.y, d.val.y)


def test_image_folder_selection_and_held_out_split_are_fixed_by_seed(tmp_path):
    root = write_folder(tmp_path / "imnet", {f"n0{i}": 10 for i in range(5)}, size=(20, 16))

    def cfg(**kw):
        base = dict(name="imf", source="imagefolder", root=str(root), resolution=16, channels=3, classes=3,
                    images_per_class=6, val_per_class=3, seed=0)
        return {**base, **kw}

    # classes by count: the same seed draws the same classes (even in a fresh cache), other seeds draw others
    a = load_dataset(cfg(), cache_dir=tmp_path / "a", progress=False)
    b = load_dataset(cfg(), cache_dir=tmp_path / "b", progress=False)
    assert a.class_names == b.class_names and len(a.class_names) == 3
    drawn = {tuple(load_dataset(cfg(seed=s), cache_dir=tmp_path / "a", progress=False).class_names)
             for s in range(6)}
    assert len(drawn) > 1, "the class draw must depend on the seed"
    assert np.array_equal(np.asarray(a.train.x), np.asarray(b.train.x)) and np.array_equal(a.val.y, b.val.y)

    # held-out split: disjoint from training, fixed by the seed, different under another seed (same classes)
    fixed = ["n00", "n02", "n04"]
    splits = {}
    for seed in (0, 0, 1):
        d = load_dataset(cfg(classes=fixed, seed=seed), cache_dir=tmp_path / f"s{len(splits)}", progress=False)
        train = np.load(d.path / "train_source_indices.npy")
        val = np.load(d.path / "val_source_indices.npy")
        assert not set(train.tolist()) & set(val.tolist()), "validation images must be held out of training"
        assert len(val) == 9 and len(train) == 18 and np.bincount(d.val.y).tolist() == [3, 3, 3]
        assert d.describe()["seed"] == seed
        splits[len(splits)] = (seed, sorted(val.tolist()))
    assert splits[0][1] == splits[1][1] and splits[0][1] != splits[2][1]


@needs_fmnist
@pytest.mark.parametrize("damage", ["truncated", "missing", "garbage", "labels", "meta not json", "meta field"])
def test_a_damaged_prepared_dataset_is_named_and_rebuilt(tmp_path, damage):
    good = load_dataset(fmnist(), cache_dir=tmp_path, progress=False)
    expected = np.array(good.train.x), good.train.y.copy()
    path = good.path
    del good
    target = path / "train_x.u8"
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif damage == "missing":
        target.unlink()
    elif damage == "garbage":
        target.write_bytes(np.random.default_rng(0).bytes(target.stat().st_size))
    elif damage == "meta not json":
        (path / "meta.json").write_text('{"name": "fm", "num_cl')
    elif damage == "meta field":  # a KeyError after the arrays were checked: a traceback, not named
        meta = json.loads((path / "meta.json").read_text())
        del meta["mean"]
        (path / "meta.json").write_text(json.dumps(meta))
    else:
        np.save(path / "train_y.npy", np.full(60, 99))
    with pytest.raises(data_mod.DamagedDataset, match=f"prepared dataset {path} is damaged"):
        data_mod.open_prepared(path)
    with pytest.warns(UserWarning, match="is damaged.*rebuilding it"):
        rebuilt = load_dataset(fmnist(), cache_dir=tmp_path, progress=False)
    assert np.array_equal(np.array(rebuilt.train.x), expected[0]) and np.array_equal(rebuilt.train.y, expected[1])


def test_a_cache_rebuilt_by_another_process_while_this_one_waited_is_kept(tmp_path, monkeypatch):
    """Two processes that met the same damaged cache both rebuilt it: the second, once the first released the lock,
    deleted the first's fresh build (under a run already reading it) and built it again. Under the lock, the cache
    is looked at again first: here the other process's rebuild happened between the first look and the lock."""
    root = write_folder(tmp_path / "imnet", {"n01": 6, "n02": 6})
    cfg = DatasetConfig.from_config(dict(name="imf", source="imagefolder", root=str(root), resolution=16, channels=3,
                                         images_per_class=4, val_per_class=2, seed=0))
    path = prepare(cfg, tmp_path / "c", progress=False)
    before = (path / "train_x.u8").stat().st_ino
    real, looks = data_mod.open_prepared, []

    def stale_first_look(p):
        looks.append(p)
        if len(looks) == 1:
            raise data_mod.DamagedDataset(f"prepared dataset {p} is damaged (as it was before the other rebuild)")
        return real(p)

    monkeypatch.setattr(data_mod, "open_prepared", stale_first_look)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "rebuilding it"
        d = load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)
    assert (path / "train_x.u8").stat().st_ino == before and len(d.train.y) == 8


def test_check_dataset_names_a_missing_source_without_reading_it(tmp_path):
    from nas.data import check_dataset

    assert "image folder not found" in check_dataset(DatasetConfig(name="inet", source="imagefolder",
                                                                   root=str(tmp_path / "none")), tmp_path)
    assert "CIFAR-10 batches not found" in check_dataset(DatasetConfig(name="c", source="cifar10",
                                                                       root=str(tmp_path)), tmp_path)
    assert check_dataset(DatasetConfig(**fmnist()), tmp_path) is None
    # a cache it cannot be prepared in: a search wrote its store, then died in the dataset's mkdir with a traceback
    (tmp_path / "file").write_text("")
    assert check_dataset(DatasetConfig(**fmnist()), tmp_path / "file" / "cache") == (
        f"dataset {fmnist()['name']}: cannot prepare it in {tmp_path / 'file' / 'cache'}: {tmp_path / 'file'} is not "
        "a directory (cache_dir or MNAS_CACHE_DIR)")


@pytest.mark.parametrize("damage", ['{"done": 1', "", "[]", '{"done": "lots"}', '{"done": 999}'])
def test_an_unreadable_progress_file_starts_the_split_over(tmp_path, monkeypatch, damage):
    """A progress file cut off by a crash (or edited) blocked preparation with a JSON traceback for good."""
    cfg = folder_of_24(tmp_path)
    reference = prepare(cfg, tmp_path / "ref", progress=False)
    out = interrupted(cfg, tmp_path / "c", monkeypatch)
    (out / "train_progress.json").write_text(damage)
    monkeypatch.setattr(data_mod, "_decode_file", _real_decode)
    path = prepare(cfg, tmp_path / "c", progress=False)
    for name in ("train_x.u8", "val_x.u8"):
        assert np.array_equal(np.load(path / name), np.load(reference / name))
    assert sorted(p.name for p in path.glob("*.tmp")) == [], "atomic writes leave no temporary file behind"


def write_cifar10(root: Path, per_class: int) -> Path:
    """Real CIFAR-10 python batches (pickled dicts of uint8 rows), ``per_class`` images of each class in all."""
    import pickle

    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    labels = np.tile(np.arange(10), per_class)
    rows = np.random.default_rng(0).integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
    for i, part in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": rows[part], b"labels": labels[part].tolist()}, f)
    return root


def test_a_root_under_home_is_expanded_and_shares_the_cache(tmp_path, monkeypatch, capsys):
    """dataset.root=~/data was read as ./~/data: the README's own nas.train example could not find CIFAR-10."""
    import shlex

    from nas.cli import check_command_line
    from nas.data import check_dataset

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    write_cifar10(home / "data", per_class=3)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("python -m nas.train") and "dataset.root=" in ln)
    # the README's overrides, as the shell passes them, on a tiny subset in a cache under ~ too
    argv = shlex.split(line)[3:] + ["dataset.images_per_class=2", "dataset.val_per_class=1"]
    cfg = DatasetConfig.from_config(check_command_line("train", argv).dataset)
    assert cfg.root == str(home / "data") and check_dataset(cfg, "~/cache") is None
    d = load_dataset(cfg, cache_dir="~/cache", progress=False)
    assert d.num_classes == 10 and len(d.train) == 20 and d.path.parent == home / "cache"
    assert replace(cfg, root="~/data").key() == cfg.key(), "~/data and its absolute path are one cache"
    assert len(sources.cifar10("~/data").labels) == 30  # the sources expand it too (other callers than nas.data)
    # unquoted, Hydra's lexer refuses the ~ with a message naming neither the quoting nor $HOME
    from nas.cli import ConfigError

    with pytest.raises(ConfigError, match=r"Hydra cannot read an unquoted ~: write dataset.root=\$HOME/data\)$"):
        check_command_line("train", ["arch=mnasnet_a1", "dataset=cifar10", "dataset.root=~/data"])
    # nas.data composes its own overrides: it printed the bare lexer error
    from nas.data.__main__ import main as data_main

    assert data_main(["prepare", "dataset=cifar10", "dataset.root=~/data"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("(Hydra cannot read an unquoted ~: write dataset.root=$HOME/data)")


@pytest.mark.parametrize("per_class", [10, None])
def test_a_source_changed_during_an_interruption_is_prepared_again(tmp_path, monkeypatch, per_class):
    """The resume took the old checkpoint over the new file list: labels of one listing with images of the other
    (same split size), or an array sized for the old listing written past its end (images_per_class=null)."""
    cfg = folder_of_24(tmp_path, images_per_class=per_class)
    root = Path(cfg.root)
    interrupted(cfg, tmp_path / "c", monkeypatch)
    for i in range(3):  # new images sort first in their class: every position after them shifts
        Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(root / "train" / "n02" / f"a{i}.JPEG")
    monkeypatch.setattr(data_mod, "_decode_file", _real_decode)
    with pytest.warns(UserWarning, match="source changed since this preparation was interrupted"):
        path = prepare(cfg, tmp_path / "c", progress=False)
    reference = prepare(cfg, tmp_path / "ref", progress=False)  # the changed folder, prepared in one go
    for name in ("train_x.u8", "val_x.u8", "train_y.npy", "val_y.npy"):
        assert np.array_equal(np.load(path / name), np.load(reference / name)), name


def test_a_checkpoint_from_before_fingerprints_is_resumed_without_a_warning(tmp_path, monkeypatch):
    """Read as a changed source: the split started over with a false "the source changed" warning."""
    cfg = folder_of_24(tmp_path)
    progress = interrupted(cfg, tmp_path / "c", monkeypatch) / "train_progress.json"
    state = json.loads(progress.read_text())
    progress.write_text(json.dumps({k: v for k, v in state.items() if k != "source"}))
    decoded = []
    monkeypatch.setattr(data_mod, "_decode_file", lambda *a: decoded.append(a) or _real_decode(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(cfg, tmp_path / "c", progress=False)
    assert len(decoded) == 24 - state["done"]  # resumed: only what the checkpoint had not done


@needs_fmnist
def test_a_cache_prepared_from_the_download_is_kept_once_the_package_is_installed(tmp_path, monkeypatch):
    """Fashion-MNIST is read from dataset.root when its files are there, else from torchvision's download folder. A
    cache prepared from the download was refused as a changed source once the files appeared in the root (the Debian
    package installed later): the same images in other files, and every search stopped until it was deleted."""
    import gzip
    import shutil

    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path / "cache"))
    download = tmp_path / "cache" / "downloads" / "FashionMNIST" / "raw"  # as torchvision leaves it: unpacked
    download.mkdir(parents=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (download / stem).write_bytes(gzip.decompress(Path(FASHION_MNIST_ROOT, f"{stem}.gz").read_bytes()))
    cfg = fmnist(root=str(tmp_path / "packaged"))  # nothing there yet: read from the download
    first = np.array(load_dataset(cfg, tmp_path / "c", progress=False).train.x)
    (tmp_path / "packaged").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):  # installed: other files
        shutil.copy(Path(FASHION_MNIST_ROOT, name), tmp_path / "packaged" / name)
    assert data_mod.check_dataset(DatasetConfig.from_config(cfg), tmp_path / "c") is None
    assert np.array_equal(load_dataset(cfg, tmp_path / "c", progress=False).train.x, first)
    shutil.rmtree(tmp_path / "packaged")  # the folder it was prepared from, changed, still counts
    labels = download / "train-labels-idx1-ubyte"
    later = labels.stat().st_mtime_ns + 10**9
    os.utime(labels, ns=(later, later))
    with pytest.raises(data_mod.DatasetUnavailable, match="changed"):
        load_dataset(cfg, tmp_path / "c", progress=False)


def test_a_finished_cache_of_a_changed_source_is_refused_not_rebuilt(tmp_path):
    """A finished cache was reused whatever had happened to its source since."""
    import pickle
    import shutil

    from nas.data import DatasetUnavailable, check_dataset, open_prepared

    root = write_cifar10(tmp_path / "c10", per_class=3)
    cfg = DatasetConfig(name="c10", source="cifar10", root=str(root), resolution=32, images_per_class=2,
                        val_per_class=1)
    reader = load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)
    before = np.array(reader.train.x)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    with open(batch, "rb") as f:
        content = pickle.load(f)
    content[b"data"] = 255 - content[b"data"]
    with open(batch, "wb") as f:
        pickle.dump(content, f)
    later = batch.stat().st_mtime_ns + 10**9
    os.utime(batch, ns=(later, later))  # edited a second later: the test's two writes can share one clock tick
    message = f"dataset c10: its source {root} changed .* since it was prepared in {reader.path}; delete that"
    with pytest.raises(DatasetUnavailable, match=message):
        load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)
    assert "changed" in check_dataset(cfg, tmp_path / "c"), "a search stops before it starts"
    # the cache is left as it was: a run reading it keeps its images
    assert np.array_equal(np.array(reader.train.x), before)
    assert np.array_equal(np.array(open_prepared(reader.path).train.x), before)

    shutil.rmtree(reader.path)  # what the message says to do
    rebuilt = load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)
    assert not np.array_equal(np.array(rebuilt.train.x), before)
    root.rename(tmp_path / "moved")  # a source gone (moved, unmounted) leaves its cache usable
    assert check_dataset(cfg, tmp_path / "c") is None
    assert np.array_equal(np.array(load_dataset(cfg, cache_dir=tmp_path / "c", progress=False).train.x),
                          np.array(rebuilt.train.x))


def _files(path: Path) -> dict[str, tuple[int, int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()}


def _too_many_open_files(monkeypatch) -> None:
    """Opening an image array fails as a process with a full descriptor table does (EMFILE): the file is healthy."""
    import errno

    real = np.load

    def load(file, *args, **kwargs):
        if str(file).endswith("_x.u8"):
            raise OSError(errno.EMFILE, "Too many open files", str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(np, "load", load)


def test_an_oserror_of_the_machine_is_not_damage_and_deletes_nothing(tmp_path, monkeypatch):
    """Any OSError counted as damage: with the file table full (EMFILE) load_dataset deleted every file of a healthy
    cache to rebuild it, and a rebuild failing for the same reason (or with the source gone) lost the cache."""
    import errno

    root = write_folder(tmp_path / "imnet", {"n01": 6, "n02": 6})
    cfg = DatasetConfig.from_config(dict(name="imf", source="imagefolder", root=str(root), resolution=16, channels=3,
                                         images_per_class=4, val_per_class=2, seed=0))
    path = prepare(cfg, tmp_path / "c", progress=False)
    before = _files(path)
    _too_many_open_files(monkeypatch)
    with pytest.raises(OSError) as raised:
        data_mod.open_prepared(path)
    assert raised.value.errno == errno.EMFILE and not isinstance(raised.value, data_mod.DamagedDataset)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "rebuilding it"
        with pytest.raises(OSError) as raised:
            load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)
    assert raised.value.errno == errno.EMFILE and _files(path) == before
    monkeypatch.undo()
    assert len(load_dataset(cfg, cache_dir=tmp_path / "c", progress=False).train) == 8


def test_an_oserror_of_the_machine_does_not_start_an_interrupted_split_over(tmp_path, monkeypatch):
    """The checkpoint's array could not be opened (EMFILE) and was taken for damaged: the split started over,
    overwriting what an interrupted preparation had written (hours of JPEG decoding for ImageNet)."""
    import errno

    cfg = folder_of_24(tmp_path)
    out = interrupted(cfg, tmp_path / "c", monkeypatch)
    kept = ("train_x.u8", "train_progress.json")  # (the labels are saved again on every start, the same)
    before = [(_files(out)[name], (out / name).read_bytes()) for name in kept]
    monkeypatch.setattr(data_mod, "_decode_file", _real_decode)
    _too_many_open_files(monkeypatch)
    with pytest.raises(OSError) as raised:
        prepare(cfg, tmp_path / "c", progress=False)
    assert raised.value.errno == errno.EMFILE
    assert [(_files(out)[name], (out / name).read_bytes()) for name in kept] == before


def _imagenet_args(root: Path, cache: Path) -> list[str]:
    return ["dataset=imagenet_subset", f"dataset.root={root}", "dataset.classes=null", "dataset.images_per_class=4",
            "dataset.val_per_class=2", "dataset.resolution=16", f"cache_dir={cache}"]


def test_nas_data_info_names_a_damaged_cache_and_changes_nothing(tmp_path, capsys):
    """info, documented to build nothing, called load_dataset: a damaged cache was deleted and rebuilt (minutes for
    ImageNet) by a command meant to describe it."""
    from nas.data.__main__ import main

    args = _imagenet_args(write_folder(tmp_path / "imnet", {"n01": 6, "n02": 6}), tmp_path / "c")
    assert main(["prepare", *args]) == 0
    path = Path(json.loads(capsys.readouterr().out)["path"])
    assert main(["info", *args]) == 0 and json.loads(capsys.readouterr().out)["num_train"] == 8
    target = path / "train_x.u8"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    before = _files(path)
    assert main(["info", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: prepared dataset {path} is damaged (ValueError: ") and err.endswith(
        "); run python -m nas.data prepare with the same arguments to rebuild it\n"), err
    assert _files(path) == before
    with pytest.warns(UserWarning, match="rebuilding it"):
        assert main(["prepare", *args]) == 0  # prepare rebuilds it, as the error says
    assert main(["info", *args]) == 0


def test_an_empty_cache_dir_is_refused_not_the_current_directory(tmp_path, monkeypatch):
    """cache_dir=$UNSET_VAR (empty) was Path("."): the dataset was prepared into the current directory, and its
    relative path recorded."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path / "env"))
    for empty in ("", "  "):
        with pytest.raises(ValueError, match=r"cache_dir is empty; leave it out \(or null\) for the default "
                                             r"\$MNAS_CACHE_DIR/data, else ~/.cache/mnasnet-search/data"):
            cache_root(empty)
    assert cache_root("rel") == tmp_path / "rel" and cache_root(Path("rel")).is_absolute()
    assert cache_root(None) == tmp_path / "env" / "data"


def test_nas_data_prepare_with_an_empty_cache_dir_is_one_error_line(tmp_path, monkeypatch, capsys):
    from nas.data.__main__ import main

    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "dataset=imagenet_subset", f"dataset.root={tmp_path}", "cache_dir="]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cache_dir is empty"), err
    assert list(tmp_path.iterdir()) == []


def test_nas_data_names_an_error_by_its_message_and_a_system_error_by_its_class_too(tmp_path, capsys):
    from nas.data.__main__ import main

    assert main(["prepare", "dataset=tiny_fashion_mnist", "dataset.images_per_class=0"]) == 2
    # was "error: ValueError: dataset.images_per_class ...", where nas.search and nas.train say "error: dataset..."
    assert capsys.readouterr().err == "error: dataset.images_per_class must be a positive integer or null, got 0\n"
    (tmp_path / "file").touch()
    assert main(["prepare", "dataset=tiny_fashion_mnist", f"cache_dir={tmp_path / 'file'}"]) == 2
    assert capsys.readouterr().err.startswith("error: NotADirectoryError: [Errno 20] Not a directory: ")


def test_a_class_too_small_is_named_by_its_name_not_its_position(tmp_path):
    """"class 1 has 3 images": the position in the chosen list, which the user never wrote."""
    root = write_folder(tmp_path / "imnet", {"n01": 6, "n02": 3})
    cfg = dict(name="imf", source="imagefolder", root=str(root), resolution=16, channels=3, images_per_class=2,
               val_per_class=2)
    with pytest.raises(data_mod.DatasetUnavailable, match="dataset imf: class 'n02' has 3 images, fewer than "
                                                          "val_per_class \\+ images_per_class = 4"):
        load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)
    write_cifar10(tmp_path / "cifar", per_class=3)
    with pytest.raises(data_mod.DatasetUnavailable, match="class 'cat' has 3 images"):
        load_dataset(dict(name="c10", source="cifar10", root=str(tmp_path / "cifar"), classes=["cat", "ship"],
                          val_per_class=2, images_per_class=2), cache_dir=tmp_path / "c", progress=False)


def test_an_absurd_resolution_is_refused_by_the_config():
    """dataset.resolution=100000 was accepted: 10 GB per image (checked on the config alone: preparing it would
    take the machine's memory)."""
    assert DatasetConfig(resolution=1024).resolution == 1024
    for bad in (1025, 100000):
        with pytest.raises(ValueError, match=rf"dataset.resolution must be an integer in \[8, 1024\], got {bad}"):
            DatasetConfig(resolution=bad)


def test_arrays_the_disk_cannot_hold_are_refused_before_they_are_created(tmp_path, monkeypatch):
    """dataset.resolution=100000 created a 1.6 TB sparse file, then died in the allocator; the arrays' size is now
    compared with the free space of the cache's disk first, in one line naming both."""
    import collections

    root = write_folder(tmp_path / "imnet", {"n01": 6, "n02": 6})
    cfg = DatasetConfig.from_config(dict(name="imf", source="imagefolder", root=str(root), resolution=64, channels=3,
                                         images_per_class=4, val_per_class=2, seed=0))
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(data_mod.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 50_000, 50_000))
    need = 12 * 64 * 64 * 3 + 12 * 24  # images, labels and source positions: 147,744 bytes
    with pytest.raises(data_mod.DatasetUnavailable, match=r"^dataset imf: its prepared arrays need 144\.3 KiB more "
                                                          r"at 64 px but .* has 48\.8 KiB free; lower"):
        prepare(cfg, tmp_path / "c", progress=False)
    assert not list((cache_root(tmp_path / "c") / cfg.key()).glob("*_x.u8"))
    monkeypatch.setattr(data_mod.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - need, need))
    assert len(load_dataset(cfg, cache_dir=tmp_path / "c", progress=False).train) == 8  # just enough


def test_an_array_source_resized_in_pieces_equals_one_resize(tmp_path, monkeypatch):
    """2,048 images resized at once as floats: 8 GiB of Fashion-MNIST at 1,024 px, 25 GiB in colour."""
    write_cifar10(tmp_path / "cifar", per_class=8)
    cfg = dict(name="c10", source="cifar10", root=str(tmp_path / "cifar"), resolution=40, val_per_class=2)
    whole = load_dataset(cfg, cache_dir=tmp_path / "a", progress=False)
    monkeypatch.setattr(data_mod, "RESIZE_FLOATS", 3 * 40 * 40 * 3)  # three images a piece
    pieces = load_dataset(cfg, cache_dir=tmp_path / "b", progress=False)
    assert np.array_equal(whole.train.x, pieces.train.x) and np.array_equal(whole.val.x, pieces.val.x)
    # a split longer than one chunk, its pieces longer than the chunk: a piece was written into a slice `step` long
    # (to the split's end), and every Fashion-MNIST split of more than 2,048 images failed to prepare
    monkeypatch.setattr(data_mod, "RESIZE_FLOATS", 2**26)
    monkeypatch.setattr(data_mod, "ARRAY_CHUNK", 7)
    chunked = load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)
    assert np.array_equal(whole.train.x, chunked.train.x) and np.array_equal(whole.val.x, chunked.val.x)


def test_class_folders_added_to_an_image_folder_are_a_changed_source(tmp_path):
    """A prepared image folder whose class draw changed (folders added: classes=3 draws others) was reused with its
    old classes whenever the first drawn class changed: that was read as the source being read from another folder,
    as Fashion-MNIST is after its Debian package is installed."""
    from mnas_common.sources import image_folder
    from nas.data import check_dataset

    root = write_folder(tmp_path / "inet", {f"n{i:02d}": 3 for i in range(6, 12)})
    cfg = DatasetConfig(name="inet", source="imagefolder", root=str(root), resolution=16, classes=3,
                        images_per_class=2, val_per_class=1)
    load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)
    before = image_folder(root, 3, 0).files[0].parent.name
    write_folder(tmp_path / "more", {f"n{i:02d}": 3 for i in range(6)})
    for folder in (tmp_path / "more" / "train").iterdir():
        folder.rename(root / "train" / folder.name)
    assert image_folder(root, 3, 0).files[0].parent.name != before  # the case that went unnoticed
    assert "changed" in (check_dataset(cfg, tmp_path / "c") or "")
    with pytest.raises(data_mod.DatasetUnavailable, match="changed"):
        load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)


@pytest.mark.parametrize("damage", ["cut off", "cifar-100", "fashion-mnist gz cut off"])
def test_a_damaged_source_file_is_one_line_naming_it(tmp_path, damage):
    """A cut-off CIFAR batch (UnpicklingError), another dataset's batch (KeyError: b'labels') or a cut-off
    Fashion-MNIST .gz (EOFError) escaped preparation as tracebacks (python -m nas.train printed Hydra's)."""
    import gzip
    import pickle

    if damage == "fashion-mnist gz cut off":
        root = tmp_path / "fm"
        root.mkdir()
        for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
            whole = gzip.compress(b"\0\0\x08\x01" + b"\0" * 4000)
            (root / f"{stem}.gz").write_bytes(whole[: len(whole) // 2])
        cfg = DatasetConfig(name="fm", source="fashion_mnist", root=str(root), resolution=16, images_per_class=2,
                            val_per_class=1)
        damaged = root / "train-images-idx3-ubyte.gz"
    else:
        root = write_cifar10(tmp_path / "c10", per_class=3)
        damaged = root / "cifar-10-batches-py" / "data_batch_2"
        if damage == "cut off":
            damaged.write_bytes(damaged.read_bytes()[:100])
        else:
            damaged.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0]}))
        cfg = DatasetConfig(name="c10", source="cifar10", root=str(root), resolution=32, images_per_class=2,
                            val_per_class=1)
    with pytest.raises(data_mod.DatasetUnavailable) as err:
        load_dataset(cfg, cache_dir=tmp_path / "c", progress=False)
    assert str(damaged) in str(err.value) and "\n" not in str(err.value), err.value
