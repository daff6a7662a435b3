"""The search engine with an in-memory evaluator: resume, reuse, budgets, failures, steady state, loggers.

Milliseconds per search: the real controller, reward and run store, a fake evaluator (tests/nas/fakes.py).
"""

from __future__ import annotations

import json

import pytest

from controllers import build as build_controller
from nas.engine import Search
from nas.loggers import CsvLog, EventLog, Logger
from nas.record import Status
from nas.store import RunStore
from rewards import MnasNetReward
from search_spaces import SearchSpace
from tests.nas.fakes import FakeEvaluator

SPACE = SearchSpace.default()


class Recorder(Logger):
    def __init__(self):
        self.events = []

    def on_start(self, search):
        self.events.append(("start", search.committed))

    def on_submit(self, step, archs):
        self.events.append(("submit", step, len(archs)))

    def on_child(self, child, origin):
        self.events.append(("child", child.step, child.idx))

    def on_step(self, step, stats):
        self.events.append(("step", step, stats["reward/mean"]))

    def on_end(self, summary):
        self.events.append(("end", summary["children"]))


def search(run_dir, evaluator, *, controller="lstm_ppo", budget=12, batch_size=4, loggers=(), seed=0, **kwargs):
    store = RunStore(run_dir)
    ctrl = build_controller(controller, SPACE.num_choices, seed=seed)
    return Search(space=SPACE, controller=ctrl, reward=MnasNetReward(target_ms=5.0), evaluator=evaluator,
                  store=store, budget=budget, batch_size=batch_size, loggers=loggers, **kwargs)


def run(run_dir, evaluator, **kwargs) -> dict:
    s = search(run_dir, evaluator, **kwargs)
    try:
        return s.run()
    finally:
        s.store.close()


def committed(run_dir) -> list[tuple]:
    with RunStore(run_dir, readonly=True) as store:
        return [(c.step, c.idx, c.arch, c.reward, c.top1, c.reused) for c in store.children(committed_only=True)]


def states(run_dir):
    with RunStore(run_dir, readonly=True) as store:
        return [store.controller_state(s)["policy"] for s in range(store.last_step() + 1)]


def test_a_search_commits_exactly_the_budget_with_rewards_and_states(tmp_path):
    recorder = Recorder()
    summary = run(tmp_path, FakeEvaluator(), budget=10, batch_size=4, loggers=[recorder])
    rows = committed(tmp_path)
    assert summary["children"] == len(rows) == 10  # steps of 4, 4 and 2: the budget is the number of children
    assert [r[0] for r in rows] == [0] * 4 + [1] * 4 + [2] * 2 and summary["steps"] == 3
    assert all(r[3] is not None and r[3] > 0 for r in rows)
    assert summary["best_reward"] == max(r[3] for r in rows)
    assert len(states(tmp_path)) == 3
    kinds = [e[0] for e in recorder.events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("child") == 10 and kinds.count("step") == 3


@pytest.mark.parametrize("stop_after", [0, 1, 5, 9])
def test_resume_after_an_interruption_is_identical_to_an_uninterrupted_run(tmp_path, stop_after):
    reference = FakeEvaluator()
    run(tmp_path / "reference", reference)
    interrupted = FakeEvaluator(stop_after=stop_after)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", interrupted)
    resumed = FakeEvaluator()
    run(tmp_path / "run", resumed)
    assert committed(tmp_path / "run") == committed(tmp_path / "reference")
    for mine, theirs in zip(states(tmp_path / "run"), states(tmp_path / "reference")):
        assert all((mine[k] == theirs[k]).all() for k in theirs)  # bit-identical controller states
    # nothing that finished before the interruption is evaluated again
    assert len(interrupted.evaluations) + len(resumed.evaluations) == len(reference.evaluations)
    assert not set(interrupted.evaluations) & set(resumed.evaluations)
    # and each step's statistics count what was evaluated, also where that was before the interruption
    assert evaluated_per_step(tmp_path / "run") == evaluated_per_step(tmp_path / "reference")


def test_a_resumed_run_reads_each_stored_child_once(tmp_path, monkeypatch):
    """resume() read every row, the interrupted step's too (to find a damaged one before anything is written), and
    the step sampled again read its stored children a second time."""
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, FakeEvaluator(stop_after=6))
    with RunStore(tmp_path, readonly=True) as store:
        stored = [(c.step, c.idx) for c in store.children()]
        assert len(stored) > len(store.children(committed_only=True))  # the interrupted step holds stored children
    read = []
    children = RunStore.children

    def counted(self, **kwargs):
        rows = children(self, **kwargs)
        read.extend((c.step, c.idx) for c in rows)
        return rows

    monkeypatch.setattr(RunStore, "children", counted)
    run(tmp_path, FakeEvaluator())
    assert sorted(read) == sorted(stored)


def evaluated_per_step(run_dir) -> list[float]:
    with RunStore(run_dir, readonly=True) as store:
        return [step["children/evaluated"] for step in store.steps()]


ONE_ARCH = SearchSpace(blocks=[{"channels": 16, "layers": 1, "stride": 1}], conv_ops=["ds"], kernel_sizes=[3],
                       se_ratios=[0.0], skip_ops=["identity"], filter_multipliers=[1.0], layer_deltas=[0])


def one_arch_search(run_dir, evaluator, **kwargs) -> Search:
    """Random search over a one-choice space: every child of a step is the same architecture."""
    return Search(space=ONE_ARCH, controller=build_controller("random", ONE_ARCH.num_choices),
                  reward=MnasNetReward(target_ms=5), evaluator=evaluator, store=RunStore(run_dir), **kwargs)


def test_an_interruption_between_the_rows_of_one_evaluation_does_not_evaluate_it_again(tmp_path):
    """reuse_evaluations=false: a step's copies of one architecture are still one evaluation, stored a row per
    index. Killed after the first row, the resumed run evaluated the architecture a second time."""
    reference = one_arch_search(tmp_path / "reference", FakeEvaluator(), budget=3, batch_size=3,
                                reuse_evaluations=False)
    reference.run()
    reference.store.close()

    interrupted = one_arch_search(tmp_path / "run", FakeEvaluator(), budget=3, batch_size=3, reuse_evaluations=False)
    add_child = interrupted.store.add_child

    def killed_after_one_row(child):
        add_child(child)
        raise KeyboardInterrupt  # as kill -9 right after the row's transaction

    interrupted.store.add_child = killed_after_one_row
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    interrupted.store.close()
    evaluator = FakeEvaluator()
    resumed = one_arch_search(tmp_path / "run", evaluator, budget=3, batch_size=3, reuse_evaluations=False)
    resumed.run()
    resumed.store.close()
    assert evaluator.evaluations == []
    assert committed(tmp_path / "run") == committed(tmp_path / "reference")
    assert [r[-1] for r in committed(tmp_path / "run")] == [False, True, True]


def test_a_damaged_pending_child_is_found_when_the_run_resumes(tmp_path):
    """It was found only when its step was sampled again, after nas.run had written the run's metadata, though the
    error says the store was not modified."""
    import sqlite3

    from nas.store import StoreError

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, FakeEvaluator(stop_after=2))
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:
        assert conn.execute("UPDATE children SET result = '{\"arch\": \"x\", \"top1\": ' "
                            "WHERE step = 0 AND idx = 1 AND committed_step IS NULL").rowcount == 1
    conn.close()
    s = search(tmp_path, FakeEvaluator())
    try:
        with pytest.raises(StoreError, match="child 0/1 is damaged"):
            s.resume()  # nas.run resumes before it writes anything
    finally:
        s.store.close()


def test_identical_architectures_are_evaluated_once_and_reused(tmp_path):
    # a collapsed controller: random search over a one-choice space samples one architecture again and again
    space = SearchSpace(blocks=[{"channels": 16, "layers": 1, "stride": 1}], conv_ops=["ds"], kernel_sizes=[3],
                        se_ratios=[0.0], skip_ops=["identity"], filter_multipliers=[1.0], layer_deltas=[0])
    evaluator = FakeEvaluator()
    store = RunStore(tmp_path)
    s = Search(space=space, controller=build_controller("random", space.num_choices), reward=MnasNetReward(target_ms=5),
               evaluator=evaluator, store=store, budget=7, batch_size=3)
    s.run()
    store.close()
    rows = committed(tmp_path)
    assert len(rows) == 7 and len(evaluator.evaluations) == 1
    assert [r[5] for r in rows] == [False] + [True] * 6  # the first is the evaluation, the rest reuse it
    assert len({(r[3], r[4]) for r in rows}) == 1


def test_a_store_spelling_a_network_the_old_way_is_reused_on_resume_not_evaluated_again(tmp_path):
    """A store written before an inert skip was spelt as the default holds ``..._noskip`` where the space now decodes
    the same network without it: reuse looked evaluations up by the string, so each such network was evaluated once
    more after a resume."""
    import sqlite3

    space = SearchSpace(blocks=[{"channels": 16, "layers": 1, "stride": 1}], conv_ops=["ds"], kernel_sizes=[3],
                        se_ratios=[0.0], skip_ops=["none"], filter_multipliers=[1.0], layer_deltas=[0])
    arch = space.decode([0] * len(space.num_choices))
    old = arch + "_noskip"  # 32 -> 16 channels: no skip can apply, the one network spelt as it used to be

    def go(evaluator, budget):
        with RunStore(tmp_path) as store:
            Search(space=space, controller=build_controller("random", space.num_choices), reward=MnasNetReward(),
                   evaluator=evaluator, store=store, budget=budget, batch_size=2).run()

    first = FakeEvaluator()
    go(first, 2)
    assert first.evaluations == [arch]
    conn = sqlite3.connect(tmp_path / "run.sqlite")
    with conn:  # as the older version stored it
        conn.execute("DROP TRIGGER children_committed_are_final")
        for step, idx, result in conn.execute("SELECT step, idx, result FROM children").fetchall():
            conn.execute("UPDATE children SET arch = ?, result = ? WHERE step = ? AND idx = ?",
                         (old, json.dumps({**json.loads(result), "arch": old}), step, idx))
    conn.close()
    again = FakeEvaluator()
    go(again, 6)
    assert again.evaluations == []  # every new child reuses the stored evaluation
    rows = committed(tmp_path)
    assert [r[2] for r in rows] == [old] * 2 + [arch] * 4 and all(r[5] for r in rows[2:])
    assert len({(r[3], r[4]) for r in rows}) == 1


def test_a_transient_failure_is_evaluated_again_when_resampled_and_a_real_one_is_reused(tmp_path):
    space = SearchSpace(blocks=[{"channels": 16, "layers": 1, "stride": 1}], conv_ops=["ds"], kernel_sizes=[3],
                        se_ratios=[0.0], skip_ops=["identity"], filter_multipliers=[1.0], layer_deltas=[0])
    arch = space.decode([0] * len(space.num_choices))

    def go(run_dir, evaluator, budget):
        with RunStore(run_dir) as store:
            Search(space=space, controller=build_controller("random", space.num_choices), reward=MnasNetReward(),
                   evaluator=evaluator, store=store, budget=budget, batch_size=2).run()

    flaky = FakeEvaluator(flaky={arch})
    go(tmp_path / "flaky", flaky, 6)
    rows = committed(tmp_path / "flaky")
    assert flaky.evaluations == [arch, arch]  # step 0 failed for the infrastructure's reason; step 1 tried again
    assert [r[4] is None for r in rows] == [True, True, False, False, False, False]
    assert [r[5] for r in rows] == [False, True, False, True, True, True]  # then the good evaluation is reused

    doomed = FakeEvaluator(fail={arch})
    go(tmp_path / "doomed", doomed, 6)
    assert doomed.evaluations == [arch]  # NaN loss is the architecture's: evaluated once, reused

    # on resume, a stored transient failure is not taken for the architecture's result either
    stopped = FakeEvaluator(flaky={arch}, stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        go(tmp_path / "resumed", stopped, 6)
    assert committed(tmp_path / "resumed")[0][4] is None
    again = FakeEvaluator()
    go(tmp_path / "resumed", again, 6)
    assert again.evaluations == [arch]


def test_reuse_can_be_turned_off(tmp_path):
    space = SearchSpace(blocks=[{"channels": 16, "layers": 1, "stride": 1}], conv_ops=["ds"], kernel_sizes=[3],
                        se_ratios=[0.0], skip_ops=["identity"], filter_multipliers=[1.0], layer_deltas=[0])
    evaluator = FakeEvaluator()
    with RunStore(tmp_path) as store:
        Search(space=space, controller=build_controller("random", space.num_choices), reward=MnasNetReward(),
               evaluator=evaluator, store=store, budget=4, batch_size=2, reuse_evaluations=False).run()
    assert len(evaluator.evaluations) == 2  # once per step: within a step identical children still share one


def test_failed_children_get_the_invalid_reward_and_the_search_goes_on(tmp_path):
    probe = FakeEvaluator()
    run(tmp_path / "probe", probe, budget=4, batch_size=4)
    doomed = set(probe.evaluations[:2])
    run(tmp_path / "run", FakeEvaluator(fail=doomed), budget=8, batch_size=4)
    with RunStore(tmp_path / "run", readonly=True) as store:
        kids = store.children(committed_only=True)
    failed = [c for c in kids if c.arch in doomed]
    assert len(kids) == 8 and failed
    assert all(c.status is Status.FAILED and "loss is nan" in c.error and c.reward == 0.0 for c in failed)


def test_children_finishing_out_of_order_land_in_their_own_places(tmp_path):
    run(tmp_path / "fifo", FakeEvaluator())
    run(tmp_path / "lifo", FakeEvaluator(lifo=True))
    assert committed(tmp_path / "fifo") == committed(tmp_path / "lifo")


def test_steady_state_keeps_the_evaluator_full_and_commits_each_child(tmp_path):
    evaluator = FakeEvaluator(capacity=4, lifo=True)
    summary = run(tmp_path, evaluator, controller="evolution", budget=9, steady_state=True)
    rows = committed(tmp_path)
    assert summary["children"] == len(rows) == 9
    assert [r[0] for r in rows] == list(range(9)) and all(r[1] == 0 for r in rows)  # one child per step
    with pytest.raises(ValueError, match="needs an asynchronous one"):
        search(tmp_path / "ppo", FakeEvaluator(), controller="lstm_ppo", steady_state=True)


def test_steady_state_resumes_without_repeating_a_child(tmp_path):
    first = FakeEvaluator(capacity=3, stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, first, controller="evolution", budget=10, steady_state=True)
    assert len(committed(tmp_path)) == 4
    second = FakeEvaluator(capacity=3)
    run(tmp_path, second, controller="evolution", budget=10, steady_state=True)
    rows = committed(tmp_path)
    assert len(rows) == 10 and [r[0] for r in rows] == list(range(10))
    assert len({(r[0], r[1]) for r in rows}) == 10  # recorded once each


def test_steady_state_ends_when_reused_children_alone_reach_the_budget(tmp_path):
    """The fill loop could reach the budget with reused children alone and then wait for a result with nothing in
    flight: IndexError, or 'next_result() with nothing submitted', after the children were committed."""
    space = SearchSpace(blocks=[{"channels": 16, "layers": 1, "stride": 1}], conv_ops=["ds"], kernel_sizes=[3],
                        se_ratios=[0.0], skip_ops=["identity"], filter_multipliers=[1.0], layer_deltas=[0])
    evaluator = FakeEvaluator()
    store = RunStore(tmp_path)
    s = Search(space=space, controller=build_controller("random", space.num_choices), reward=MnasNetReward(target_ms=5),
               evaluator=evaluator, store=store, budget=3, batch_size=1, steady_state=True)
    summary = s.run()
    store.close()
    assert summary["children"] == 3 and len(evaluator.evaluations) == 1
    assert [r[5] for r in committed(tmp_path)] == [False, True, True]


def test_a_step_interrupted_before_a_budget_change_keeps_its_stored_children(tmp_path):
    """The interrupted step was sampled again at the new budget's size; a controller's first samples depend on how
    many it draws, so every stored child of that step 'differed' and was trained again."""
    first = FakeEvaluator(stop_after=5)  # steps of 4 and 2 (budget 6): stopped inside the second step
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, first, controller="random", budget=6)
    with RunStore(tmp_path, readonly=True) as store:
        stored = store.pending_children(1)
    assert len(stored) == 1
    resumed = FakeEvaluator()
    run(tmp_path, resumed, controller="random", budget=12)  # the step of 2 stays a step of 2
    rows = committed(tmp_path)
    assert len(rows) == 12 and [r[0] for r in rows] == [0] * 4 + [1] * 2 + [2] * 4 + [3] * 2
    (idx, child), = stored.items()
    assert rows[4 + idx][2] == child.arch and child.arch not in resumed.evaluations[:1]
    assert len(first.evaluations) + len(resumed.evaluations) == len(set(r[2] for r in rows))


def test_a_larger_budget_extends_a_finished_run(tmp_path):
    run(tmp_path, FakeEvaluator(), budget=4)
    evaluator = FakeEvaluator()
    summary = run(tmp_path, evaluator, budget=10)
    assert summary["children"] == 10 and len(committed(tmp_path)) == 10
    assert len(evaluator.evaluations) <= 6


def test_event_log_and_csv_follow_the_run_across_a_resume(tmp_path):
    events, table = EventLog(), CsvLog()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, FakeEvaluator(stop_after=6), loggers=[events, table])
    events.close(), table.close()
    run(tmp_path, FakeEvaluator(), loggers=[EventLog(), CsvLog()])
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in lines].count("start") == 2 and lines[-1]["event"] == "end"
    submitted = [e["arch"] for e in lines if e["event"] == "submit"]
    assert len(submitted) == len(set(submitted)) + 2  # the two in flight when stopped are handed out again
    rows = (tmp_path / "children.csv").read_text().splitlines()
    assert len(rows) == 1 + 12 and rows[0].startswith("arch,status,error,top1")


def test_a_step_line_lost_to_an_interrupt_is_written_when_the_run_resumes(tmp_path):
    """Ctrl-C while a logger before the event log handled a step (TensorBoard drawing its scatter) left that
    committed step without its line in events.jsonl for good."""

    class InterruptedAtStep(Logger):
        def on_step(self, step, stats):
            if step == 1:
                raise KeyboardInterrupt

    events = EventLog(path="logs/events.jsonl")  # a directory that does not exist yet
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, FakeEvaluator(), loggers=[InterruptedAtStep(), events])
    events.close()
    log = tmp_path / "logs" / "events.jsonl"
    assert [e["step"] for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "step"] == [0]
    run(tmp_path, FakeEvaluator(), loggers=[EventLog(path="logs/events.jsonl")])
    steps = [e for e in map(json.loads, log.read_text().splitlines()) if e["event"] == "step"]
    assert [e["step"] for e in steps] == [0, 1, 2] and [e.get("recovered") for e in steps] == [None, True, None]
    assert steps[1]["stats"]["reward/mean"] == pytest.approx(states_reward_mean(tmp_path, 1))


def states_reward_mean(run_dir, step: int) -> float:
    with RunStore(run_dir, readonly=True) as store:
        return next(s["reward/mean"] for s in store.steps() if s["step"] == step)


def test_running_statistics_and_front_match_the_store(tmp_path):
    from nas.front import front_mask

    s = search(tmp_path, FakeEvaluator(), budget=20, batch_size=5)
    s.run()
    kids = s.store.children(committed_only=True)
    s.store.close()
    mask = front_mask([c.top1 for c in kids], [c.latency_ms for c in kids])
    assert len(s.front) == int(mask.sum())
    assert {p[2].arch for p in s.front.points()} == {c.arch for c, m in zip(kids, mask) if m}
    assert s.stats.best_reward == max(c.reward for c in kids)


@pytest.mark.parametrize("fold,result,transient", [
    ("training", {"status": "failed", "error": "out of memory on cuda:0", "transient": True}, True),
    ("training", {"status": "failed", "error": "loss is nan at epoch 1"}, False),
    ("latency", {"status": "failed", "error": "timing failed: device offline", "extra": {"transient": True}}, True),
    ("latency", {"status": "failed", "error": "conversion mismatch: 0.3 > 0.01", "extra": {}}, False),
])
def test_evaluators_carry_whether_a_failure_is_transient_into_the_child(fold, result, transient):
    from nas.evaluator import apply_latency, apply_training
    from nas.record import ChildResult

    child = (apply_training if fold == "training" else apply_latency)(ChildResult(arch="a"), result)
    assert child.status is Status.FAILED and child.transient is transient
    assert ChildResult.from_dict(json.loads(json.dumps(child.to_dict()))).transient is transient  # survives the store
