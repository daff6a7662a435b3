"""The local evaluator on its own: real training on real Fashion-MNIST, real conversion and LiteRT timing, the size
guard, the preflight checks and the release of its workers."""

from __future__ import annotations

import pytest

from mnas_common.sources import FASHION_MNIST_ROOT
from nas.data import DatasetConfig
from nas.evaluator import LocalEvaluator, child_seed
from nas.record import LatencySource, Status
from nas.trainer import TrainerConfig
from tests.conftest import needs_fmnist


SMALL = "ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16"
DEPLOY = {"resolution": 32, "channels": 1, "num_classes": 10}
DATASET = DatasetConfig(name="tiny", source="fashion_mnist", root=FASHION_MNIST_ROOT, resolution=16, classes=4,
                        images_per_class=20, val_per_class=10)
TRAINER = TrainerConfig(epochs=1, batch_size=16, warmup_steps=0, augment=False)


def evaluator(tmp_path, *, latency: bool = True, trainer=TRAINER, **kwargs) -> LocalEvaluator:
    latency_cfg = {"_target_": "latency.build_service", "runner": "host", "warmup_runs": 1, "num_runs": 3,
                   "workers": 1, "cache_path": str(tmp_path / "latency.sqlite")} if latency else None
    return LocalEvaluator(trainer=trainer, dataset=DATASET, latency=latency_cfg, deploy=DEPLOY, seed=3, threads=1,
                          **kwargs)


@needs_fmnist
@pytest.mark.slow
def test_children_are_trained_and_timed_for_real(tmp_path):
    ev = evaluator(tmp_path)
    try:
        assert ev.check() == []
        ev.start(tmp_path)
        results = list(ev.evaluate([SMALL, "ds_r1_k3_s1_c8-ir_r1_k5_s2_e3_c16"]))
    finally:
        ev.close()
    assert [r.arch for r in results] == [SMALL, "ds_r1_k3_s1_c8-ir_r1_k5_s2_e3_c16"]
    for r in results:
        assert r.status is Status.OK and 0 <= r.top1 <= 1 and r.train["steps"] >= 1
        assert r.latency_ms > 0 and r.latency_source is LatencySource.MEASURED and r.latency["runs"] == 3
        assert r.params > 0 and r.macs > 0 and r.seed == child_seed(3, r.arch)
    assert ev.service is None  # closed: its worker processes are gone


@needs_fmnist
def test_the_source_is_fingerprinted_once_from_check_to_start(tmp_path, monkeypatch):
    """check() compared the prepared cache with its source, then start() listed and fingerprinted the source again
    (about a second per 50,000 files of an ImageNet subset); start() without check() still compares."""
    import nas.data as data_mod

    data_mod.load_dataset(DATASET, progress=False)  # prepared: check and start both compare it with its source
    calls = []
    real = data_mod._source_fingerprint
    monkeypatch.setattr(data_mod, "_source_fingerprint", lambda cfg: calls.append(cfg) or real(cfg))
    for checked in (True, False):
        calls.clear()
        ev = evaluator(tmp_path, latency=False)
        try:
            assert not checked or ev.check() == []
            ev.start(tmp_path)
        finally:
            ev.close()
        assert len(calls) == 1, checked


@needs_fmnist
def test_a_child_that_fails_training_is_a_failed_result(tmp_path):
    ev = evaluator(tmp_path, latency=False, trainer=TrainerConfig(epochs=1, batch_size=16, lr=1e30, warmup_steps=0))
    ev.start(tmp_path)
    (child,) = ev.evaluate([SMALL])
    ev.close()
    assert child.status is Status.FAILED and child.error.startswith("train: loss is")
    assert not child.transient  # a diverging child diverges again: reused when resampled


@needs_fmnist
def test_an_oversized_child_fails_by_its_estimate_without_being_built(tmp_path):
    ev = evaluator(tmp_path, max_child_memory_gb=1.0)
    try:
        ev.start(tmp_path)
        (child,) = ev.evaluate(["ir_r1_k3_s1_e6_c100000"])  # ~15 GB to train: never allocated, never converted
    finally:
        ev.close()
    assert child.status is Status.FAILED and "too large" in child.error and child.params > 1e8  # counted exactly
    assert child.latency is None and child.train is None


def test_check_names_what_is_missing_without_starting_anything(tmp_path):
    import torch

    missing = DatasetConfig(name="inet", source="imagefolder", root=str(tmp_path / "none"))
    ev = LocalEvaluator(trainer=TrainerConfig(device="cuda:0"), dataset=missing, deploy=DEPLOY, latency={
        "_target_": "latency.build_service", "runner": "adb", "adb": str(tmp_path / "no-adb"),
        "benchmark_binary": None, "cache_path": str(tmp_path / "l.sqlite")})
    problems = ev.check()
    ev.close()
    assert any("image folder not found" in p for p in problems)
    assert any(p.startswith("latency: adb not found") for p in problems)
    assert torch.cuda.is_available() or any("no CUDA GPU" in p for p in problems)


@needs_fmnist
def test_training_free_scores_are_stored_with_each_child(tmp_path):
    from nas.data import load_dataset
    from nas.zero_cost import compute_scores

    ev = evaluator(tmp_path, latency=False, scores=["synflow", "naswot"], score_batch_size=8)
    try:
        ev.start(tmp_path)
        small, other = ev.evaluate([SMALL, "ds_r1_k3_s1_c8-ir_r1_k5_s2_e6_c24"])
    finally:
        ev.close()
    assert small.status is Status.OK and set(small.scores) == {"synflow", "naswot"}
    # the child's own seed draws the weights and the minibatch: the stored values are exactly the scores of that seed
    expected = compute_scores(SMALL, load_dataset(DATASET), ("synflow", "naswot"), seed=small.seed, batch_size=8)
    assert small.scores == {"synflow": expected["synflow"], "naswot": expected["naswot"]}
    assert other.scores["synflow"] != small.scores["synflow"] and small.extra["scores_seconds"] > 0
    assert evaluator(tmp_path, latency=False).scores == ()  # off by default: nothing computed


def test_the_conversion_estimate_counts_only_where_a_child_may_be_converted(tmp_path):
    """Without latency (or with latency.mode=predict) no child is converted; a child that trains within the limit
    was failed, for good, as too large to convert at the deployment resolution."""
    from types import SimpleNamespace

    from nas.evaluator import size_guard
    from search_spaces import profile_arch, resolve_arch

    deploy = {"resolution": 224, "channels": 3, "num_classes": 1000}
    arch = resolve_arch("mnasnet_a1")
    convert = profile_arch(arch, resolution=224, in_channels=3, num_classes=1000).inference_bytes() / 2**30
    train = profile_arch(arch, resolution=16, in_channels=1, num_classes=4).training_bytes(16, 1) / 2**30
    limit = (convert + train) / 2
    assert train < limit < convert
    guard = dict(deploy=deploy, data_shape=(16, 1, 4), batch_size=16, optimizer_slots=1, limit_gb=limit)
    assert "to convert at 224 px" in size_guard(arch, **guard)[1]
    assert size_guard(arch, **guard, converts=False)[1] is None

    ev = LocalEvaluator(trainer=TRAINER, dataset=DATASET, latency=None, deploy=deploy, max_child_memory_gb=limit)
    ev.data = SimpleNamespace(resolution=16, channels=1, num_classes=4)  # what start() prepares
    ev.submit(arch)
    (child, *_), = ev._queue
    assert child.ok, child.error


@pytest.mark.parametrize("kwargs, culprit", [({"scores": ["synflow", "nope"]}, "evaluator.scores"),
                                             ({"scores": "synflow"}, "evaluator.scores must be a list of training-"
                                                                     "free scores, got 'synflow' (one score: "
                                                                     "evaluator.scores=[synflow])"),
                                             ({"scores": ["naswot", "naswot"]}, "evaluator.scores"),
                                             ({"score_batch_size": 0}, "evaluator.score_batch_size")])
def test_bad_score_settings_are_one_line_naming_the_field(kwargs, culprit, tmp_path):
    from nas.components import ConfigError, build

    with pytest.raises(ConfigError) as err:
        build("evaluator", {"_target_": "nas.evaluator.LocalEvaluator", **kwargs}, trainer=TRAINER, dataset=DATASET,
              latency=None, deploy=DEPLOY)
    assert culprit in str(err.value) and "\n" not in str(err.value)
