"""The synthetic (dry-run) evaluator gives children of the shape of the run it stands in for."""

from __future__ import annotations

import pytest

from nas.record import LatencySource
from nas.synthetic import SyntheticEvaluator, synthetic_measurements

ARCH = "ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16"
SMALL_INPUT = {"resolution": 32, "channels": 1, "num_classes": 10}


def one_child(**kwargs):
    evaluator = SyntheticEvaluator(**kwargs)
    evaluator.submit(ARCH)
    return evaluator.next_result()


def test_the_deployment_input_and_classes_count_in_params_and_macs():
    """Only the resolution was read: the stem counted 3 input channels and the classifier 1,000 classes whatever
    the deploy config said (a 10-class smoke run's dry run had 4.6x the real parameters)."""
    rgb = synthetic_measurements(ARCH, 32, 3, 1000)
    gray = synthetic_measurements(ARCH, 32, 1, 10)
    assert rgb[2] - gray[2] == 9 * 2 * 32 + 1280 * 990  # the stem's two missing channels, 990 fewer classes
    assert rgb[3] - gray[3] == 16 * 16 * 9 * 2 * 32 + 1280 * 990
    assert one_child(deploy=SMALL_INPUT).params == gray[2]
    assert one_child().params == synthetic_measurements(ARCH)[2]  # 224 x 224 x 3, 1,000 classes by default


@pytest.mark.parametrize("latency, source", [(None, None), ({"runner": "host"}, LatencySource.MEASURED),
                                             ({"runner": "host", "mode": "hybrid"}, LatencySource.MEASURED),
                                             ({"runner": "host", "mode": "predict"}, LatencySource.PREDICTED)])
def test_a_child_has_a_latency_only_where_the_run_has_one_and_says_where_it_came_from(latency, source):
    """measure_latency=false children had a latency (a front, a best_latency_ms) and latency.mode=predict ones
    were labelled measured."""
    child = one_child(latency=latency)
    assert child.latency_source == source
    assert (child.latency_ms is None) == (latency is None)
    assert child.latency_predicted_ms == (child.latency_ms if source is LatencySource.PREDICTED else None)


def test_status_shows_at_most_capacity_in_flight():
    evaluator = SyntheticEvaluator(capacity=2)
    for i in range(8):
        evaluator.submit(f"{ARCH}{i}")
    assert evaluator.status() == "in flight 2/2 queued 6"  # was "in flight 8/2"


@pytest.mark.parametrize("capacity, total", [(1, 0.8), (2, 0.4), (4, 0.2), (8, 0.2)])
def test_capacity_children_take_seconds_together(monkeypatch, capacity, total):
    """Each child slept `seconds` one after another whatever the capacity: a steady-state dry run with capacity 4
    took 4x the wall time its config describes."""
    import nas.synthetic as synthetic

    clock = [100.0]
    monkeypatch.setattr(synthetic, "_now", lambda: clock[0])
    monkeypatch.setattr(synthetic, "_sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    evaluator = SyntheticEvaluator(capacity=capacity, seconds=0.2)
    for i in range(4):
        evaluator.submit(f"{ARCH}{i}")
    assert [evaluator.next_result().arch for _ in range(4)] == [f"{ARCH}{i}" for i in range(4)]
    assert clock[0] - 100.0 == pytest.approx(total)
