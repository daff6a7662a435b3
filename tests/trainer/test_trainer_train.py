"""Proxy trainer: real training on real Fashion-MNIST images, determinism, failures as values, configs, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from nas.components import build
from nas.data import DatasetConfig, load_dataset
from mnas_common.sources import FASHION_MNIST_ROOT
from nas.trainer import TrainerConfig, TrainResult, train_child
from tests.conftest import needs_fmnist

ROOT = Path(__file__).resolve().parents[2]
SMALL = "ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16"
pytestmark = [needs_fmnist, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = dict(name="fm10", source="fashion_mnist", root=FASHION_MNIST_ROOT, resolution=16, classes=None,
               images_per_class=60, val_per_class=20, seed=0)
    return load_dataset(cfg, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def quick(**kw) -> TrainerConfig:
    base = dict(epochs=3, batch_size=32, lr=0.1, warmup_steps=5, augment=False, eval_batch_size=100)
    base.update(kw)
    return TrainerConfig(**base)


def test_trains_above_chance_and_reports_every_field(data):
    r = train_child(SMALL, data, quick(), seed=0)
    assert r.status == "ok" and r.error is None
    assert r.top1 > 0.35, f"10 classes: chance is 0.10, got {r.top1}"  # Fashion-MNIST is easy even at 16 px
    assert r.top5 is not None and r.top5 >= r.top1
    assert r.epochs == 3 and r.steps == 3 * (600 // 32)
    assert r.num_train == 600 and r.num_val == 200
    assert r.params == sum(p.numel() for p in __import__("search_spaces").build_model(
        SMALL, num_classes=10, in_channels=1).parameters())
    assert r.train_seconds > 0 and r.eval_seconds > 0 and r.images_per_second > 0
    assert 0 <= r.data_wait_fraction < 1 and math.isfinite(r.final_loss)
    again = TrainResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r


def test_deterministic_under_a_seed_on_cpu(data):
    a = train_child(SMALL, data, quick(epochs=1, augment=True), seed=3)
    b = train_child(SMALL, data, quick(epochs=1, augment=True), seed=3)
    c = train_child(SMALL, data, quick(epochs=1, augment=True), seed=4)
    assert (a.top1, a.final_loss) == (b.top1, b.final_loss)
    assert a.final_loss != c.final_loss


def test_reference_name_rmsprop_and_max_steps(data):
    r = train_child("mnasnet_b1", data, quick(optimizer="rmsprop", lr=0.01, max_steps=3), seed=0)
    assert r.status == "ok", r.error
    assert r.steps == 3 and r.epochs == 1


def test_top5_is_none_with_five_classes_or_fewer(tmp_path):
    d = load_dataset(dict(name="fm4", source="fashion_mnist", root=FASHION_MNIST_ROOT, resolution=16, classes=4,
                          images_per_class=20, val_per_class=10), cache_dir=tmp_path, progress=False)
    r = train_child(SMALL, d, quick(epochs=1), seed=0)
    assert r.status == "ok" and r.top5 is None and 0 <= r.top1 <= 1


def test_non_finite_loss_is_a_failed_result(data):
    r = train_child(SMALL, data, quick(lr=1e30, warmup_steps=0, label_smoothing=0.0), seed=0)
    assert r.status == "failed" and "loss is" in r.error and r.top1 is None


def test_bad_architecture_is_a_failed_result(data):
    r = train_child("ir_r1_k4_s1_e6_c16", data, quick(), seed=0)
    assert r.status == "failed" and r.error.startswith("invalid architecture")
    r = train_child("no_such_net", data, quick(), seed=0)
    assert r.status == "failed"


def test_out_of_memory_and_build_errors_are_failed_results(data, monkeypatch):
    import search_spaces

    real = search_spaces.build_model

    def oom_model(*a, **kw):
        model = real(*a, **kw)

        def boom(*_a, **_kw):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

        model.forward = boom
        return model

    monkeypatch.setattr(search_spaces, "build_model", oom_model)
    r = train_child(SMALL, data, quick(), seed=0)
    assert r.status == "failed" and "out of memory" in r.error and r.transient

    def broken(*a, **kw):
        raise KeyError("stem")

    monkeypatch.setattr(search_spaces, "build_model", broken)
    r = train_child(SMALL, data, quick(), seed=0)
    assert r.status == "failed" and r.error.startswith("build failed: KeyError")


@pytest.mark.parametrize("allocate", [
    lambda: torch.empty(1 << 52, dtype=torch.uint8),  # RuntimeError: DefaultCPUAllocator: can't allocate memory
    lambda: np.empty(1 << 52, dtype=np.uint8),        # numpy's MemoryError: "Unable to allocate 4.00 PiB ..."
    lambda: bytearray(1 << 52),                       # a bare MemoryError, no message at all
], ids=["torch-cpu", "numpy", "python"])
def test_cpu_out_of_memory_is_a_transient_failed_result(data, monkeypatch, allocate):
    # a real allocation of 4 PiB, beyond any machine's memory and address space, inside the child's forward
    import search_spaces

    real = search_spaces.build_model

    def hungry_model(*a, **kw):
        model = real(*a, **kw)
        model.forward = lambda *_a, **_kw: allocate()
        return model

    monkeypatch.setattr(search_spaces, "build_model", hungry_model)
    r = train_child(SMALL, data, quick(), seed=0)
    assert r.status == "failed" and r.error.startswith("out of memory on cpu: ") and r.transient, r.error


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the loader's death, on purpose
def test_a_loader_thread_that_dies_raises_its_error_instead_of_hanging():
    # An image read fails and handing that error over to the consumer fails too (as it may when memory runs out):
    # the loader thread dies without a word. The consumer must raise the read's error, not wait for a batch forever.
    import queue
    import threading

    from nas.trainer import BatchLoader

    read_failed = threading.Event()

    class FailingImages:
        def __getitem__(self, idx):
            read_failed.set()
            raise OSError("read error on the cache volume")

    class Split:
        x, y = FailingImages(), np.zeros(8, dtype=np.int64)

        def __len__(self):
            return 8

    def tracer(frame, event, arg):  # after the failed read, the loader thread's next Queue.put runs out of memory
        if (event == "call" and frame.f_code is queue.Queue.put.__code__ and read_failed.is_set()
                and threading.current_thread().name == "batch-loader"):
            raise MemoryError("handing the error over")
        return None

    loader = BatchLoader(Split(), 4, mean=(0.5,), std=(0.5,), device=torch.device("cpu"), generator=None,
                         augment=False, prefetch=2, channels_last=False, drop_last=False)
    raised: list[BaseException] = []

    def consume():
        try:
            list(loader)
        except BaseException as exc:
            raised.append(exc)

    before = threading.gettrace()
    threading.settrace(tracer)  # traces the threads started from now on: the consumer and its loader thread
    try:
        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        consumer.join(timeout=20)
    finally:
        threading.settrace(before)
    assert not consumer.is_alive(), "the consumer still waits for a batch from a loader thread that died"
    assert len(raised) == 1 and isinstance(raised[0], OSError) and "read error" in str(raised[0]), raised


@pytest.mark.parametrize("error, start", [(OSError("[Errno 5] Input/output error"), "OSError: [Errno 5]"),
                                          (MemoryError("Unable to allocate 96.0 MiB"), "out of memory on cpu: ")])
def test_a_child_failed_by_the_batch_loader_says_so(data, monkeypatch, error, start):
    # the images could not be read: the child's error must not read as if the model had failed
    from nas.trainer import BatchLoader

    def unreadable(self):
        raise error
        yield  # a generator, as the real one

    monkeypatch.setattr(BatchLoader, "_batches", unreadable)
    r = train_child(SMALL, data, quick(), seed=0)
    assert r.status == "failed" and r.error.startswith(start), r.error
    assert r.error.endswith("(raised in the batch loader thread, reading the prepared images)"), r.error
    assert r.transient == isinstance(error, MemoryError)


@pytest.mark.parametrize("field, value", [("epochs", 0), ("batch_size", -1), ("optimizer", "adam"),
                                          ("schedule", "step"), ("lr", 0.0), ("label_smoothing", 1.0),
                                          ("amp", "maybe"), ("max_steps", 0), ("momentum", -0.1),
                                          ("momentum", 1.5), ("warmup_steps", -1), ("warmup_steps", 2.5)])
def test_trainer_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainerConfig(**{field: value})


def test_every_trainer_and_dataset_config_composes():
    with initialize_config_dir(version_base=None, config_dir=str(ROOT / "configs")):
        for trainer in sorted(p.stem for p in (ROOT / "configs" / "trainer").glob("*.yaml")):
            cfg = compose(config_name="train", overrides=[f"trainer={trainer}"])
            assert isinstance(build("trainer", cfg.trainer), TrainerConfig)
        for dataset in sorted(p.stem for p in (ROOT / "configs" / "dataset").glob("*.yaml")):
            overrides = [f"dataset={dataset}"]
            if dataset in ("cifar10", "imagenet_subset"):
                overrides.append("dataset.root=/some/where")
            cfg = compose(config_name="train", overrides=overrides)
            assert isinstance(build("dataset", cfg.dataset), DatasetConfig)
    proxy = compose_trainer("proxy")
    assert (proxy.epochs, proxy.optimizer) == (5, "rmsprop")


def compose_trainer(name: str) -> TrainerConfig:
    with initialize_config_dir(version_base=None, config_dir=str(ROOT / "configs")):
        return build("trainer", compose(config_name="train", overrides=[f"trainer={name}"]).trainer)


@pytest.mark.slow
def test_train_cli_prints_a_final_json_line(tmp_path):
    env = {"MNAS_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "nas.train", f"arch={SMALL}", "dataset=tiny_fashion_mnist",
                           "trainer.epochs=1", f"output={tmp_path / 'r.json'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("top1", "top5", "train_seconds", "images_per_second", "status"):
        assert key in out
    assert out["status"] == "ok" and out["dataset"]["name"] == "tiny_fashion_mnist"
    assert json.loads((tmp_path / "r.json").read_text())["top1"] == out["top1"]
    assert not (ROOT / "train.log").exists(), "Hydra job logging must not litter the working directory"

    # a child that breaks while training is a result (JSON line, exit 1), not a crash
    failed = subprocess.run([sys.executable, "-m", "nas.train", f"arch={SMALL}", "dataset=tiny_fashion_mnist",
                             "trainer.lr=1e30", "trainer.warmup_steps=0", "trainer.label_smoothing=0"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1, failed.stderr[-2000:]
    out = json.loads(failed.stdout.strip().splitlines()[-1])
    assert out["status"] == "failed" and "loss is" in out["error"]

    # bad input: one "error: ..." line naming the culprit, exit 2, nothing trained
    for args, culprit in ((["arch=no_such_net"], "no_such_net"), (["+trainer.foo=1"], "foo"),
                          (["trainer.foo=1"], "trainer.foo"), (["dataset=no_such_set"], "no_such_set"),
                          (["seed=abc"], "seed")):
        bad = subprocess.run([sys.executable, "-m", "nas.train", *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], \
            (args, bad.stderr[-2000:])
        assert bad.stdout == ""

    bad = subprocess.run([sys.executable, "-m", "nas.train", "arch=mobilenet_v2", "trainer.optimizer=adam"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "trainer.optimizer" in bad.stderr.strip().splitlines()[-1]

    info = subprocess.run([sys.executable, "-m", "nas.data", "info", "dataset=tiny_fashion_mnist", "dataset.seed=5"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert info.returncode == 2 and "not prepared" in info.stderr
    prep = subprocess.run([sys.executable, "-m", "nas.data", "prepare", "dataset=tiny_fashion_mnist"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0 and json.loads(prep.stdout.splitlines()[-1])["num_train"] == 160
    bad = subprocess.run([sys.executable, "-m", "nas.data", "prepare", "dataset=imagenet_subset",
                          f"dataset.root={tmp_path / 'nowhere'}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "nowhere" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "nas.data", "prepare", "dataset=tiny_fashion_mnist", "dataset.bogus=1"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "dataset.bogus" in lines[0], bad.stderr
    bad = subprocess.run([sys.executable, "-m", "nas.data", "info", "dataset=nope"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Could not find 'dataset/nope'" in bad.stderr
    assert "Config search path" not in bad.stderr  # Hydra's providers, appended to a missing config: noise


@pytest.mark.parametrize("args, culprit", [
    (["seed=-1"], "seed must be an integer in [0, 2**64), got -1"),
    ([f"seed={2**64}"], "seed must be an integer in [0, 2**64)"),
    (["output={tmp}"], "output={tmp} is a directory"),
    (["output={tmp}/file/r.json"], "output={tmp}/file/r.json cannot be written"),  # its parent is a regular file
    # a cache that cannot be written (its parent a regular file: tests may run as root, whom chmod does not stop)
    (["cache_dir={tmp}/file/cache"], "cannot prepare dataset tiny_fashion_mnist in {tmp}/file/cache: "),
])
def test_train_cli_bad_input_and_unwritable_paths_are_one_line_errors(tmp_path, args, culprit):
    (tmp_path / "file").write_text("")
    args, culprit = [a.format(tmp=tmp_path) for a in args], culprit.format(tmp=tmp_path)
    env = {**os.environ, "MNAS_CACHE_DIR": str(tmp_path / "cache")}
    bad = subprocess.run([sys.executable, "-m", "nas.train", f"arch={SMALL}", "dataset=tiny_fashion_mnist", *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], \
        (args, bad.stderr[-2000:])
    assert bad.stdout == "" and not (tmp_path / "cache").exists()  # nothing prepared or trained


def test_mixed_precision_and_compile_paths_train_on_cpu(data):
    # The GPU speed options run here on the CPU: bfloat16 autocast, torch.compile (inductor) and channels_last.
    plain = train_child(SMALL, data, quick(epochs=1, amp="off", channels_last=False), seed=0)
    amp = train_child(SMALL, data, quick(epochs=1, amp="on"), seed=0)
    compiled = train_child(SMALL, data, quick(epochs=1, compile=True, max_steps=6), seed=0)
    for r in (plain, amp, compiled):
        assert r.status == "ok", r.error
        assert math.isfinite(r.final_loss) and 0 <= r.top1 <= 1
    assert amp.final_loss != plain.final_loss  # autocast really changed the arithmetic
    assert compiled.steps == 6


def test_train_cli_refuses_an_architecture_too_large_for_memory(tmp_path):
    # 100,000 channels: ~15 GB to train; refused by its estimate (meta device) in seconds, nothing allocated
    env = {**os.environ, "MNAS_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "nas.train", "arch=ir_r1_k3_s1_e6_c100000", "max_memory_gb=4"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "too large" in lines[0] and "max_memory_gb" in lines[0]


def test_an_output_under_home_is_expanded(tmp_path, monkeypatch):
    """output='~/r.json' (quoted, as Hydra needs) was taken literally: a directory named ~ in the working directory."""
    from nas.train import check_output

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert check_output("~/results/r.json") == tmp_path / "home" / "results" / "r.json"
    assert (tmp_path / "home" / "results").is_dir() and not (tmp_path / "~").exists()


def test_the_readme_python_api_example_runs(tmp_path, monkeypatch):
    """The README's example built the trainer with TrainerConfig(**cfg.trainer): a TypeError on _target_."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("Python API (what `nas.search` calls):\n\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("MNAS_CACHE_DIR", str(tmp_path))
    with initialize_config_dir(version_base=None, config_dir=str(ROOT / "configs")):
        cfg = compose(config_name="train", overrides=["dataset=tiny_fashion_mnist", "trainer.epochs=1",
                                                      "+trainer.max_steps=2"])
    scope = {"cfg": cfg}
    exec(code.replace('"mnasnet_b1"', repr(SMALL)), scope)  # a small network: the API is under test, not its cost
    assert scope["result"].status == "ok", scope["result"].error


def test_a_training_device_torch_cannot_use_is_refused(monkeypatch):
    """device=mps passed the check on a machine without MPS, and then every child failed."""
    from nas.trainer import check_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert check_device("mps") == "trainer.device=mps but torch cannot use an Apple GPU (MPS) on this machine"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert check_device("mps") is None
    assert check_device("xpu") == "trainer.device=xpu: only cpu, cuda and mps are supported"


def test_a_warmup_longer_than_the_training_is_named(data, caplog):
    """trainer=proxy (warmup 100) on a small subset trained every child inside the warmup, the learning rate
    never at its configured peak, without a word."""
    config = quick(epochs=2, warmup_steps=40, max_steps=None)
    result = train_child(SMALL, data, config, seed=0)
    assert result.steps == config.total_steps(len(data.train)) == 2 * (len(data.train) // 32)  # the schedule's span
    assert config.schedule_note(len(data.train)) == (
        f"trainer.warmup_steps 40 >= the {result.steps} steps a child trains on {len(data.train)} images: the "
        "whole training is warm-up (the learning rate reaches trainer.lr 0.1 at the last step at best, and the cosine "
        "decay never starts); lower warmup_steps")  # equal: the peak at the last step alone ("never reaches" was not so)
    assert quick(warmup_steps=5).schedule_note(len(data.train)) is None
    assert quick(warmup_steps=5, max_steps=5).schedule_note(len(data.train)) is not None  # max_steps caps the span
    assert TrainerConfig(batch_size=128, epochs=1, warmup_steps=1).total_steps(20) == 1  # one partial batch

    from nas.evaluator import LocalEvaluator

    ev = LocalEvaluator(trainer=config, dataset=DatasetConfig(name="fm10", source="fashion_mnist",
                                                              root=FASHION_MNIST_ROOT, resolution=16,
                                                              images_per_class=60, val_per_class=20),
                        latency=None, deploy={"resolution": 32, "channels": 1, "num_classes": 10}, seed=0)
    with caplog.at_level("WARNING", logger="nas.evaluator"):
        try:
            ev.start(Path(data.path).parent)
        finally:
            ev.close()
    assert "trainer.warmup_steps 40 >= the" in caplog.text
