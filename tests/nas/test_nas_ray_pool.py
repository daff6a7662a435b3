"""The Ray evaluator's driver-side books without Ray (its calls faked): actors that cannot start stop the search in
one line, a dead phone's actor is replaced for that phone (or the phone marked unhealthy once its node is gone), a
lost result is one more attempt of its child, and a late answer of an earlier job never touches a newer job of the
same architecture."""

from __future__ import annotations

from collections import deque
from types import SimpleNamespace

import pytest
import ray
from ray.exceptions import ActorDiedError, ObjectLostError, OwnerDiedError, RayTaskError

from mnas_common.sources import FASHION_MNIST_ROOT
from nas.evaluator import EvaluatorStopped
from nas.ray_evaluator import CONVERT, TIME, TRAIN, RayEvaluator, _Job, _Pool
from nas.record import ChildResult
from nas.trainer import TrainerConfig
from tests.conftest import needs_fmnist

ARCH = "fake-arch"


class Ref:
    """What an actor call returns: its value, or the Ray error ``ray.get`` raises."""

    def __init__(self, value):
        self.value = value


class Actor:
    def __init__(self, fake, cls, args, opts):
        self.fake, self.cls, self.args, self.opts = fake, cls, args, opts
        self.broken = fake.broken.get(cls)  # its constructor failed: actors started before are not touched

    def __getattr__(self, method):  # actor.where.remote() and the like
        return SimpleNamespace(remote=lambda *args: Ref(self.broken or {"node": "n", "method": method}))


class FakeRay:
    def __init__(self):
        self.resources = {"CPU": 8.0}
        self.broken: dict[str, Exception] = {}  # actor class -> how its constructor failed
        self.killed: list[Actor] = []

    def remote(self, **opts):
        return lambda cls: SimpleNamespace(remote=lambda *args: Actor(self, cls.__name__, args, opts))

    def get(self, refs, timeout=None):
        if isinstance(refs, list):
            return [self.get(ref) for ref in refs]
        if isinstance(refs.value, Exception):
            raise refs.value
        return dict(refs.value)


@pytest.fixture
def fake_ray(monkeypatch):
    fake = FakeRay()
    monkeypatch.setattr(ray, "remote", fake.remote)
    monkeypatch.setattr(ray, "get", fake.get)
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart=True: fake.killed.append(actor))
    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(fake.resources))
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "NodeID": "n", "Resources": dict(fake.resources)}])
    monkeypatch.setattr(ray, "put", lambda value: ("put", value))
    monkeypatch.setattr("nas.ray_evaluator.nodes_without", lambda path, nodes: [])  # a node that sees the path
    return fake


def died_in_constructor() -> ActorDiedError:
    cause = ImportError("No module named 'ai_edge_litert'")
    return ActorDiedError(RayTaskError("ConverterActor.__init__", "Traceback (most recent call last):\n"
                                       "  File \"x.py\", line 1, in __init__\nImportError: No module named "
                                       "'ai_edge_litert'", cause))


def task_error() -> RayTaskError:
    return RayTaskError("train", "Traceback (most recent call last):\nValueError: boom", ValueError("boom"))


def lost(kind=ObjectLostError):
    return kind("ab" * 14, None, "")


NO_LITERT = "ImportError: No module named 'ai_edge_litert'"


@pytest.mark.parametrize("cls,error,what,why", [
    ("DeviceActor", died_in_constructor(), "timing", NO_LITERT),
    ("TrainerActor", died_in_constructor(), "trainer", NO_LITERT),
    ("ConverterActor", died_in_constructor(), "converter", NO_LITERT),  # converters were never awaited
    ("DeviceActor", RayTaskError("device_id", "Traceback", RuntimeError("adb: no device A")), "timing",
     "RuntimeError: adb: no device A"),  # the ping itself raised
])
def test_actors_that_cannot_start_stop_the_search_in_one_line(fake_ray, monkeypatch, tmp_path, cls, error, what, why):
    monkeypatch.setattr("nas.data.load_dataset", lambda *_, **__: SimpleNamespace(
        resolution=32, channels=1, num_classes=10, path=tmp_path, train=range(100)))
    fake_ray.broken[cls] = error
    evaluator = RayEvaluator(trainer=TrainerConfig(), dataset=None, deploy={}, latency={"runner": "host"})
    with pytest.raises(EvaluatorStopped) as stopped:
        evaluator.start(tmp_path)
    assert str(stopped.value) == f"the {what} actors cannot start: {why}"


def _phone_evaluator(fake_ray) -> RayEvaluator:
    fake_ray.resources.update(phone_A=1.0, phone_B=1.0)
    evaluator = RayEvaluator(trainer=None, dataset=None, deploy={}, latency={"runner": "adb"})
    evaluator._pools[TIME] = evaluator._device_pool(evaluator.latency)
    return evaluator


def _serial(actor) -> str:
    return actor.args[0]["serial"]


def _run(evaluator, job: _Job, stage: str, actor, value):
    """``actor`` answers ``value`` for ``job``'s ``stage``."""
    evaluator._pools[stage].idle.remove(actor)
    ref = Ref(value)
    evaluator._inflight[ref] = (job, stage, actor)
    evaluator._complete(ref)


def _replacements_answer(evaluator) -> None:
    """Every replacement actor answers its ping (it was placed and started), and so does every idle actor pinged
    after another died."""
    for ref in list(evaluator._probing):
        evaluator._probed(ref)
    for ref in list(evaluator._starting):
        evaluator._started(ref)


class Mortal(Actor):
    """An actor that may have died (with its node) while it sat idle: every call then fails at once."""

    dead = False

    def __getattr__(self, method):
        if self.dead:
            return SimpleNamespace(remote=lambda *args: Ref(ActorDiedError()))
        return super().__getattr__(method)


def test_idle_actors_that_died_with_a_node_cost_a_child_no_attempts(fake_ray):
    """Nothing noticed idle actors that had died: each got the next attempt of a child and failed at once, so three
    dead ones failed a child ("gave up after 3 attempts") that never ran, while a live actor waited."""
    evaluator = RayEvaluator(trainer=None, dataset=None, deploy={}, latency=None)
    pool = evaluator._pools[TRAIN] = _Pool(TRAIN, lambda: Mortal(fake_ray, "TrainerActor", (), {}), 4)
    *dead, live = pool.idle
    for actor in dead:
        actor.dead = True
    job = _Job(ChildResult(arch=ARCH, seed=0))
    evaluator._jobs[ARCH] = job
    pool.queue.append(job)
    evaluator._dispatch()  # the first attempt reaches a dead actor: that one is charged
    ref, = evaluator._inflight
    evaluator._complete(ref)
    assert job.attempts[TRAIN] == 1 and list(pool.queue) == [job]
    evaluator._dispatch()
    assert not evaluator._inflight and not pool.idle  # the others answer a ping first
    for ref in list(evaluator._probing):
        evaluator._probed(ref)
    assert list(pool.idle) == [live] and set(fake_ray.killed) == set(dead)  # the dead ones are replaced
    evaluator._dispatch()
    (_, (running, stage, actor)), = evaluator._inflight.items()
    assert running is job and actor is live and job.attempts[TRAIN] == 1


def test_a_dead_phone_actor_is_replaced_for_its_phone_and_a_phone_gone_with_its_node_is_dropped(fake_ray):
    evaluator = _phone_evaluator(fake_ray)
    pool = evaluator._pools[TIME]
    job = _Job(ChildResult(arch=ARCH, seed=0), conversion={"status": "ok"})
    evaluator._jobs[ARCH] = job
    first = {_serial(a): a for a in pool.actors}
    _run(evaluator, job, TIME, first["A"], ActorDiedError())  # the actor died, phone A is still on the cluster
    fresh = [a for a in pool.actors if a not in first.values()]
    assert [_serial(a) for a in fresh] == ["A"] and fresh[0].opts["resources"] == {"phone_A": 1}
    assert fresh[0] not in pool.idle  # it takes work once it has answered
    _replacements_answer(evaluator)
    assert fake_ray.killed == [first["A"]] and sorted(map(_serial, pool.actors)) == ["A", "B"]
    assert list(pool.queue) == [job] and job.attempts[TIME] == 1
    pool.queue.clear()

    del fake_ray.resources["phone_A"]  # then its node goes: no replacement would ever start
    _run(evaluator, job, TIME, fresh[0], ActorDiedError())
    assert len(pool.actors) == 2 and list(pool.unhealthy) == fresh
    assert pool.unhealthy[fresh[0]].startswith("phone A left the cluster: time actor died (ActorDiedError: ")
    assert list(pool.queue) == [job] and job.attempts[TIME] == 1  # its timing moves to phone B
    del fake_ray.resources["phone_B"]
    with pytest.raises(EvaluatorStopped, match="^every timing device dropped"):
        _run(evaluator, job, TIME, first["B"], ActorDiedError())


@pytest.mark.parametrize("error", [ObjectLostError, OwnerDiedError])
def test_a_lost_result_is_one_more_attempt_of_its_child(fake_ray, error):
    evaluator = RayEvaluator(trainer=None, dataset=None, deploy={}, latency=None)
    pool = evaluator._pools[TRAIN] = _Pool(TRAIN, lambda: Actor(fake_ray, "TrainerActor", (), {}), 1)
    job = _Job(ChildResult(arch=ARCH, seed=0))
    evaluator._jobs[ARCH] = job
    for attempt in range(1, evaluator.max_attempts + 1):
        actor = pool.actors[0]
        _run(evaluator, job, TRAIN, actor, lost(error))
        assert actor in fake_ray.killed and actor not in pool.actors and not pool.idle  # replaced, not yet started
        _replacements_answer(evaluator)
        assert len(pool.idle) == 1 and not evaluator._starting
        assert job.attempts[TRAIN] == attempt and list(pool.queue) == ([job] if attempt < 3 else [])
        pool.queue.clear()
    assert list(evaluator._done) == [job.child]
    assert job.child.error.startswith(f"train: gave up after 3 attempts: train result lost ({error.__name__}: ")
    assert job.child.transient  # the cluster's failure, not the architecture's: evaluated again if resampled


@pytest.mark.parametrize("failed,late,answer", [
    (CONVERT, TRAIN, task_error()),     # would record the earlier child again, in place of the newer job
    (CONVERT, TRAIN, ActorDiedError()),  # would train the earlier job again
    (TRAIN, CONVERT, {"status": "ok", "node": "n"}),  # would time the earlier job
])
def test_a_late_answer_of_an_earlier_job_never_touches_a_newer_job_of_the_same_arch(fake_ray, failed, late, answer):
    evaluator = RayEvaluator(trainer=None, dataset=None, deploy={}, latency={"runner": "host"})
    for stage in (TRAIN, CONVERT, TIME):
        evaluator._pools[stage] = _Pool(stage, lambda: Actor(fake_ray, "Actor", (), {}), 1)
    earlier = _Job(ChildResult(arch=ARCH, seed=0), trained=failed != TRAIN)  # a failed measurement waits for training
    evaluator._jobs[ARCH] = earlier
    _run(evaluator, earlier, failed, evaluator._pools[failed].actors[0], task_error())
    assert evaluator._done.popleft() is earlier.child and not evaluator._jobs  # recorded as failed
    newer = _Job(ChildResult(arch=ARCH, seed=0))  # the same arch again (reuse_evaluations=false, a reference)
    evaluator._jobs[ARCH] = newer
    _run(evaluator, earlier, late, evaluator._pools[late].actors[0], answer)
    assert evaluator._jobs == {ARCH: newer} and not evaluator._done
    assert all(earlier not in pool.queue for pool in evaluator._pools.values())


def _stages(fake_ray, mode: str) -> RayEvaluator:
    evaluator = RayEvaluator(trainer=None, dataset=None, deploy={}, latency={"runner": "host", "mode": mode})
    for stage in (TRAIN, CONVERT, TIME):
        evaluator._pools[stage] = _Pool(stage, lambda: Actor(fake_ray, "Actor", (), {}), 1)
    return evaluator


PREDICTED = {"status": "ok", "latency_ms": 12.0, "extra": {"source": "predicted"}}


def test_a_stage_that_raises_or_gives_up_is_the_clusters_failure_and_hybrid_keeps_its_prediction(fake_ray):
    raised = RayTaskError("convert", "Traceback", RuntimeError("latency worker process died twice (out of memory?)"))
    # measure mode: the child fails once trained, transiently (evaluated again if resampled)
    evaluator = _stages(fake_ray, "measure")
    job = evaluator._jobs[ARCH] = _Job(ChildResult(arch=ARCH, seed=0))
    _run(evaluator, job, CONVERT, evaluator._pools[CONVERT].actors[0], raised)
    assert not evaluator._done  # still training: its accuracy is kept
    _run(evaluator, job, TRAIN, evaluator._pools[TRAIN].actors[0], {"status": "ok", "top1": 0.7, "node": "n"})
    child = evaluator._done.popleft()
    assert child.top1 == 0.7 and not child.ok and child.transient
    assert child.error == "latency: convert: RuntimeError: latency worker process died twice (out of memory?)"

    # hybrid: a conversion that gave up, or a timing that raised, leaves the trained child its predicted latency
    for stage, answers in ((CONVERT, [lost()] * 3), (TIME, [RayTaskError("time", "Traceback", RuntimeError("hung"))])):
        evaluator = _stages(fake_ray, "hybrid")
        child = ChildResult(arch=ARCH, seed=0, top1=0.7)
        job = evaluator._jobs[ARCH] = _Job(child, trained=True, predicted=dict(PREDICTED), reason="front",
                                           conversion={"status": "ok"} if stage == TIME else None)
        for answer in answers:
            _run(evaluator, job, stage, evaluator._pools[stage].actors[0], answer)
            evaluator._pools[stage].queue.clear()
            _replacements_answer(evaluator)
        child = evaluator._done.popleft()
        assert child.ok and child.latency_ms == 12.0 and str(child.latency_source) == "predicted", stage
        assert child.extra["latency_measurement_failed"].startswith(f"{stage}: "), stage


@pytest.mark.parametrize("section, value, message", [
    ("trainers", {"num_cpus": 0.00001}, "evaluator.trainers.num_cpus must be at least 0.0001"),  # Ray's traceback
    ("trainers", {"num_gpus": 0.00001}, "evaluator.trainers.num_gpus must be 0 or at least 0.0001"),
    ("converters", {"num_cpus": 0.00005}, "evaluator.converters.num_cpus must be at least 0.0001"),
    ("trainers", {"num_gpu": 1}, "unknown evaluator.trainers field(s) num_gpu (did you mean num_gpus?)"),
    ("converters", {"actor": 2}, "unknown evaluator.converters field(s) actor (did you mean actors?)"),
    ("devices", {"serials": "FAKEA"}, "evaluator.devices.serials must be null or a list of adb serials, got 'FAKEA' "
                                      "(one phone: evaluator.devices.serials=[FAKEA])"),
    ("devices", {"serials": ["A", ""]}, "evaluator.devices.serials must be null or a list of adb serials"),
])
def test_actor_settings_are_checked_when_the_evaluator_is_built(section, value, message):
    """A resource finer than Ray's unit was a traceback once Ray had started; a misspelt key was ignored; a single
    serial was split into its characters (F, A, K, E, A)."""
    with pytest.raises(ValueError) as refused:
        RayEvaluator(trainer=None, dataset=None, deploy={}, latency=None, **{section: value})
    assert str(refused.value).startswith(message)


def test_the_phones_a_search_times_on_count_in_the_cpus_it_needs(fake_ray):
    """devices.serials null (every advertised phone) counted one device actor: with two phones the check passed
    and an actor waited for a CPU for ten minutes instead of the search being refused at once."""
    fake_ray.resources.update(CPU=4.0, phone_A=1.0, phone_B=1.0)  # 2 trainers + 1 converter + 2 devices = 5
    evaluator = RayEvaluator(trainer=None, dataset=None, deploy={}, latency={"runner": "adb"})
    with pytest.raises(EvaluatorStopped, match=r"^the Ray actors need 5 CPU \(the cluster has 4\)"):
        evaluator._check_resources()
    chosen = RayEvaluator(trainer=None, dataset=None, deploy={}, latency={"runner": "adb"},
                          devices={"serials": ["A"]})
    chosen._check_resources()  # one phone chosen: 4 CPUs are enough


def _trainers(fake_ray, actors: int, **kwargs) -> RayEvaluator:
    evaluator = RayEvaluator(trainer=None, dataset=None, deploy={}, latency=None, **kwargs)
    evaluator._pools[TRAIN] = _Pool(TRAIN, lambda: Actor(fake_ray, "TrainerActor", (), {}), actors)
    return evaluator


def test_a_replacement_that_cannot_be_placed_is_given_up_and_with_none_left_the_search_stops(fake_ray):
    """A dead actor's replacement that no node could place (the node with the GPUs died, the cluster sized exactly)
    was made idle at once: every child sent to it waited for ever, and so did the search."""
    evaluator = _trainers(fake_ray, 2, actor_start_s=1e-9)
    pool = evaluator._pools[TRAIN]
    job = evaluator._jobs[ARCH] = _Job(ChildResult(arch=ARCH, seed=0))
    dead, other = pool.actors
    _run(evaluator, job, TRAIN, dead, ActorDiedError())
    for ref in list(evaluator._probing):  # the other answers its ping: it did not die with the first
        evaluator._probed(ref)
    assert list(pool.queue) == [job] and len(evaluator._starting) == 1 and pool.idle == deque([other])
    evaluator._overdue()  # no answer within actor_start_s: given up, its slot with it; the other actor goes on
    assert pool.actors == [other] and not evaluator._starting and len(fake_ray.killed) == 2
    pool.queue.clear()
    _run(evaluator, job, TRAIN, other, ActorDiedError())
    with pytest.raises(EvaluatorStopped) as stopped:
        evaluator._overdue()
    assert str(stopped.value).startswith("no train actor left: a trainer actor died and its replacement was not "
                                         "placed within 1e-09 s (no node has its resources free: see ray status); "
                                         "run the same command to resume")


def test_a_replacement_that_dies_starting_is_given_up(fake_ray):
    evaluator = _trainers(fake_ray, 2)
    pool = evaluator._pools[TRAIN]
    job = evaluator._jobs[ARCH] = _Job(ChildResult(arch=ARCH, seed=0))
    dead = pool.actors[0]
    fake_ray.broken["TrainerActor"] = died_in_constructor()  # from now on, as a node without the converter
    _run(evaluator, job, TRAIN, dead, ActorDiedError())
    _replacements_answer(evaluator)
    assert len(pool.actors) == 1 and list(pool.queue) == [job]


def test_each_kind_of_actor_must_fit_on_one_node(fake_ray, monkeypatch):
    """The cluster's totals were checked, never one node: a trainer asking for more CPUs than any node has passed
    the check and waited ten minutes before its error."""
    nodes = [{"Alive": True, "NodeID": "a", "Resources": {"CPU": 4.0}},
             {"Alive": True, "NodeID": "b", "Resources": {"CPU": 3.0, "GPU": 1.0, "phone_A": 1.0}},
             {"Alive": False, "NodeID": "c", "Resources": {"CPU": 64.0}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    fake_ray.resources = {"CPU": 7.0, "GPU": 1.0, "phone_A": 1.0}
    with pytest.raises(EvaluatorStopped) as stopped:
        RayEvaluator(trainer=None, dataset=None, deploy={}, latency=None,
                     trainers={"actors": 1, "num_cpus": 5})._check_resources()
    assert str(stopped.value) == ("one trainer actor needs 5 CPU, more than any node has (at most 4 CPU): lower "
                                  "evaluator.trainers.num_cpus or add a larger node")
    with pytest.raises(EvaluatorStopped, match=r"^one trainer actor needs 4 CPU and 1 GPU.* \(at most 4 CPU, 1 GPU\)"):
        RayEvaluator(trainer=None, dataset=None, deploy={}, latency=None,  # the GPU node has 3 CPUs
                     trainers={"actors": 1, "num_cpus": 4, "num_gpus": 1})._check_resources()
    with pytest.raises(EvaluatorStopped, match=r"^one device actor needs 4 CPU, more than the node of phone A has "
                                               r"\(at most 3 CPU\): lower evaluator.devices.num_cpus"):
        RayEvaluator(trainer=None, dataset=None, deploy={}, latency={"runner": "adb"}, trainers={"actors": 1},
                     devices={"num_cpus": 4})._check_resources()
    RayEvaluator(trainer=None, dataset=None, deploy={}, latency=None,
                 trainers={"actors": 1, "num_cpus": 3, "num_gpus": 1})._check_resources()  # fits on node b


@pytest.mark.parametrize("blind, put", [([], False), (["b"], True)])
def test_dataset_transfer_path_puts_the_dataset_only_for_a_node_that_does_not_see_it(fake_ray, monkeypatch, tmp_path,
                                                                                   blind, put):
    """dataset_transfer=path put the arrays in the object store whenever the cluster had two nodes (a shared disk
    or not), and a single-node cluster joined with ray:// from another machine got no object (KeyError: 'ref')."""
    class Split(SimpleNamespace):
        def __len__(self):
            return 100

    split = Split(x=[], y=[])
    monkeypatch.setattr("nas.data.load_dataset", lambda *_, **__: SimpleNamespace(
        name="d", num_classes=10, channels=1, resolution=8, class_names=[], mean=[0], std=[1], path=tmp_path,
        train=split, val=split))
    monkeypatch.setattr("nas.ray_evaluator.nodes_without", lambda path, nodes: blind)
    evaluator = RayEvaluator(trainer=TrainerConfig(), dataset=None, deploy={}, latency=None)
    evaluator.start(tmp_path)
    dataset = evaluator._pools[TRAIN].actors[0].args[1]
    assert dataset["path"] == str(tmp_path) and ("ref" in dataset) == put


def test_a_node_that_sees_no_dataset_and_got_no_object_says_so(tmp_path, monkeypatch):
    from nas.ray_evaluator import _open_dataset

    monkeypatch.setattr("nas.ray_evaluator._node", lambda: "node-7")
    with pytest.raises(FileNotFoundError, match=r"^the prepared dataset .* is not on node node-7, which joined after "
                                                r"the search started: use evaluator.dataset_transfer=object_store"):
        _open_dataset({"path": str(tmp_path / "elsewhere")})


@pytest.mark.parametrize("section", ["trainers", "converters", "devices"])
def test_a_section_given_a_value_is_one_line_naming_it(section):
    with pytest.raises(ValueError) as refused:
        RayEvaluator(trainer=None, dataset=None, deploy={}, latency=None, **{section: 4})
    assert str(refused.value).startswith(f"evaluator.{section} is a section, not a value: set its fields "
                                         f"(evaluator.{section}.")


def test_phones_named_for_the_host_runner_are_refused():
    """devices.serials was ignored in silence with the host runner: the user believed the search timed on phones."""
    with pytest.raises(ValueError, match=r"^evaluator.devices.serials names phones, but latency.runner is host"):
        RayEvaluator(trainer=None, dataset=None, deploy={}, latency={"runner": "host"}, devices={"serials": ["A"]})
    RayEvaluator(trainer=None, dataset=None, deploy={}, latency=None, devices={"serials": ["A"]})  # nothing timed


# ------------------------------------------------------------------ GPUs Ray did not give
# Ray 2.60 no longer hides a node's GPUs from an actor given none (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO now defaults to
# off): torch in such an actor sees them, as it does here once torch.cuda.is_available says True.
@pytest.fixture
def visible_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.mark.parametrize("driver", ["with a GPU", "without one"])
def test_trainer_device_cuda_without_trainer_gpus_is_refused(driver, request, tmp_path):
    from nas.data import DatasetConfig

    if driver == "with a GPU":
        request.getfixturevalue("visible_gpu")
    dataset = DatasetConfig(name="inet", source="imagefolder", root=str(tmp_path))
    problems = RayEvaluator(trainer=TrainerConfig(device="cuda"), dataset=dataset, deploy={}, latency=None).check()
    # the same reason either way: the driver's own GPUs are not what the trainer actors get
    assert problems == ["trainer.device=cuda but evaluator.trainers.num_gpus=0: a trainer actor trains on a GPU only "
                        "when Ray gives it one (evaluator.trainers.num_gpus=1, or 0.5 to share one GPU between two "
                        "actors)"]
    if driver == "with a GPU":
        assert RayEvaluator(trainer=TrainerConfig(device="cuda"), dataset=dataset, deploy={}, latency=None,
                            trainers={"num_gpus": 1}).check() == []  # the actors' nodes have the GPUs


@pytest.mark.parametrize("device, num_gpus, refused", [
    ("cuda:1", 1, True), ("cuda:1", 0.5, True), ("cuda:x", 1, True), ("cuda:1", 2, False), ("cuda:0", 0.5, False),
    ("cuda", 1, False)])
def test_a_trainer_device_index_beyond_the_gpus_ray_gives_an_actor_is_refused(tmp_path, device, num_gpus, refused):
    """Ray numbers an actor's GPUs from cuda:0 (CUDA_VISIBLE_DEVICES): trainer.device=cuda:1 on one GPU per actor was
    accepted, and then every child failed as if by its own fault (invalid device ordinal), each reused when sampled
    again."""
    from nas.data import DatasetConfig

    dataset = DatasetConfig(name="inet", source="imagefolder", root=str(tmp_path))
    problems = RayEvaluator(trainer=TrainerConfig(device=device), dataset=dataset, deploy={}, latency=None,
                            trainers={"num_gpus": num_gpus}).check()
    expected = [f"trainer.device={device} but a trainer actor sees the {max(1, -(-num_gpus // 1)):g} GPU(s) Ray gives "
                "it as cuda:0 (evaluator.trainers.num_gpus); use trainer.device=cuda"]
    assert problems == (expected if refused else [])


def test_an_adb_that_is_missing_stops_a_ray_search_in_one_line(tmp_path, monkeypatch):
    """Phones are listed with adb before Ray starts (address null): a missing or hung adb was a traceback from the
    evaluator's start."""
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray was started"))
    latency = {"_target_": "latency.build_service", "runner": "adb", "adb": str(tmp_path / "adb")}
    evaluator = RayEvaluator(trainer=None, dataset=None, deploy={}, latency=latency)
    with pytest.raises(EvaluatorStopped, match=r"^evaluator=ray: cannot list this machine's phones: adb not found"):
        evaluator._init_ray()


@needs_fmnist
def test_a_trainer_actor_given_no_gpu_trains_on_the_cpu(visible_gpu, monkeypatch, tmp_path, one_thread):
    from nas.data import DatasetConfig, prepare
    from nas.ray_evaluator import TrainerActor

    dataset = DatasetConfig(name="tiny", source="fashion_mnist", root=FASHION_MNIST_ROOT,
                            resolution=16, classes=2, images_per_class=8, val_per_class=4)
    path = prepare(dataset, tmp_path)
    trainer = TrainerConfig(epochs=1, batch_size=8, warmup_steps=0, augment=False)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])  # as Ray answers in an actor with num_gpus=0
    monkeypatch.setattr("nas.ray_evaluator._node", lambda: "n")  # Ray's runtime context would start Ray in pytest
    result = TrainerActor(trainer, {"path": str(path)}, 1, None).train("ds_r1_k3_s1_c8", seed=0)
    assert result["status"] == "ok" and result["device"] == "cpu", result.get("error")  # was cuda: no such GPU here
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])  # one Ray gave it: torch's default, the visible GPU
    assert TrainerActor(trainer, {"path": str(path)}, 1, None).device is None
