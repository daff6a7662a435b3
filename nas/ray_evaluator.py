"""Children on a Ray cluster: trainers, converters and devices as actors that own their resources.

``evaluator=ray`` (``configs/evaluator/ray.yaml``). The search driver stays the only writer of the run store; the
actors return plain results to it:

- **trainer actors** (``trainers.actors`` of them, each ``trainers.num_cpus`` / ``trainers.num_gpus``, fractional
  GPUs allowed) proxy-train children. Each opens the prepared dataset once: from the driver's cache path when its node
  sees it, otherwise from the object store (``dataset_transfer: object_store``: put once by the driver, fetched
  once per node); never per child;
- **converter actors** keep TensorFlow and onnx2tf imported (in their latency service's warm worker) and convert
  children to TFLite while the trainers train;
- **device actors** time the converted models: one per phone, owning its adb serial (phones are Ray custom resources
  ``phone_<serial>`` of the node they hang on, so their actor lands there), or one host-timing actor with its own CPU.

A child's pipeline is train || (convert -> time); results reach the driver as they complete. Actors and nodes may
die: the driver keeps its own books (which stage of which child runs where) and hands a stage whose actor died to
another actor, at most ``max_attempts`` times in all, then records the child as failed with the reason. Ray's own
at-most-once semantics are not trusted for "recorded once": a late answer for a job that is no longer pending is
dropped, even when its architecture was submitted again since. A dead device actor is replaced on its own phone; a
phone that drops (off USB, or with its node) is marked unhealthy and its timings move to the other phones; with none
left the search stops with one clear error and resumes later like any interrupted run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnas_common.checks import known_fields, non_negative_number, positive_int, positive_number
from mnas_common.errors import first_line

from latency.result import transient
from latency.runners import DeviceError
from latency.service import absolute_paths
from nas.components import build
from nas.evaluator import (Evaluator, EvaluatorStopped, LatencyModes, apply_scores, apply_training, check_scores,
                           child_seed, score_child, size_guard)
from nas.record import ChildResult

log = logging.getLogger("nas.ray")

TRAIN, CONVERT, TIME = "train", "convert", "time"
CLUSTER_PROBE_S = 5.0  # how long the check waits for a cluster's head to answer
RAY_CLIENT_PORT = 10001  # a ray:// address without a port
RAY_RESOURCE_UNIT = 1e-4  # Ray refuses a fractional resource finer than this (at ray.remote, once Ray has started)


def _resource(name: str, value, *, zero: bool = False) -> float:
    """A CPU or GPU amount for one actor: a number > 0 (``zero``: >= 0), in Ray's units of 0.0001."""
    amount = (non_negative_number if zero else positive_number)(name, value)
    if 0 < amount < RAY_RESOURCE_UNIT:
        raise ValueError(f"{name} must be {'0 or ' if zero else ''}at least {RAY_RESOURCE_UNIT:g} (Ray's finest "
                         f"fraction of a resource), got {value!r}")
    return amount


def _serials(value) -> list[str] | None:
    """``evaluator.devices.serials``: null (every advertised phone) or a list of adb serials."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(s, str) and s.strip() for s in value):
        example = f" (one phone: evaluator.devices.serials=[{value}])" if isinstance(value, str) else ""
        raise ValueError(f"evaluator.devices.serials must be null or a list of adb serials, got {value!r}{example}")
    return list(value)


def cluster_problem(address: str | None, timeout_s: float = CLUSTER_PROBE_S) -> str | None:
    """Why the cluster at ``evaluator.address`` cannot be joined, found within seconds, or None (``null``: Ray starts
    on this machine; or the head answers). ``ray.init`` would retry an address nothing answers at for minutes, with
    Ray's warnings for output: ``auto`` after the cluster of the last ``ray start`` here stopped without ``ray stop``
    (killed, a reboot) still names its address. ``auto`` resolves as Ray resolves it (``RAY_ADDRESS``, the last
    ``ray start``, a running head); the head's port is then tried with a plain TCP connection."""
    import socket

    if address is None:
        return None
    hint = "start it (ray start --head ...) or use evaluator.address=null to start Ray for this search"
    if not isinstance(address, str) or not address.strip():
        return f"evaluator.address must be null, auto, host:port or ray://host:port, got {address!r}"
    if address.strip() == "local":  # Ray's own word for a new instance, which this search would then not stop
        return ("evaluator.address=local is not one of null, auto, host:port or ray://host:port; use "
                "evaluator.address=null to start Ray for this search (stopped with it)")
    probe = address
    if address.strip() == "auto" and "://" in os.environ.get("RAY_ADDRESS", ""):
        probe = os.environ["RAY_ADDRESS"].strip()  # ray.init(address="auto") joins it through Ray Client
        if not probe.startswith("ray://"):
            return None  # another client scheme: Ray's own error, later
    if probe.startswith("ray://"):
        target = probe[len("ray://"):].rstrip("/")
        if ":" not in target.rsplit("]", 1)[-1]:  # no port (after an IPv6 literal's brackets)
            target = f"{target}:{RAY_CLIENT_PORT}"
    else:
        try:
            from ray._private.services import canonicalize_bootstrap_address
        except ImportError:  # another Ray: its own error, later
            return None
        try:
            target = canonicalize_bootstrap_address(address)
        except ConnectionError:
            return f"evaluator.address={address}: no running Ray cluster found on this machine; {hint}"
        except ValueError as exc:
            return f"evaluator.address={address}: {first_line(exc)}"
        if target is None:
            return None
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return f"evaluator.address={address}: expected host:port, got {target!r}"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock:
            if _speaks_grpc(sock, timeout_s):
                return None
    except OSError as exc:
        stale = "; the address of the last ray start here: has that cluster stopped?" if address == "auto" else ""
        return (f"evaluator.address={address}: no Ray cluster answers at {target} "
                f"({exc.strerror or first_line(exc)}{stale}); {hint}")
    return (f"evaluator.address={address}: {target} answers, but not as a Ray head (Ray speaks gRPC there: the "
            f"dashboard's port or another server? the head's port is 6379 unless ray start --port said otherwise, "
            f"ray:// uses {RAY_CLIENT_PORT}); {hint}")


# The client's half of an HTTP/2 handshake: the connection preface and an empty SETTINGS frame (RFC 9113, 3.4)
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _speaks_grpc(sock, timeout_s: float) -> bool:
    """Whether the server on ``sock`` answers an HTTP/2 preface with a SETTINGS frame, as a gRPC server (a Ray head's
    GCS, the Ray client server) does at once; an HTTP/1 server, or one that says nothing, does not. Without this an
    open port of anything else passed, and ``ray.init`` retried it for minutes. With TLS (``RAY_USE_TLS``) the
    server expects a TLS handshake first: the open port is all that is checked."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return True
    sock.settimeout(timeout_s)
    try:
        sock.sendall(_HTTP2_PREFACE)
        head = b""
        while len(head) < 9:  # the server's first frame header: length (3), type (1), flags (1), stream (4)
            chunk = sock.recv(9 - len(head))
            if not chunk:
                return False
            head += chunk
    except OSError:  # reset, or no answer within the probe's time
        return False
    return head[3] == 4 and head[5:9] == bytes(4)


# ---------------------------------------------------------------------------------------------------- actors
def _node() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


class TrainerActor:
    """Proxy-trains children on its node; the prepared dataset is opened once, in the constructor."""

    def __init__(self, trainer, dataset: dict, threads: int, latency: dict | None):
        import ray
        import torch

        torch.set_num_threads(threads)
        self.trainer = trainer
        # Ray (2.60) no longer hides a node's GPUs from an actor given none (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO): with
        # trainer.device null, torch would pick a GPU that Ray did not give this actor. It trains on the CPU then.
        self.device = None if trainer.device or ray.get_gpu_ids() else "cpu"
        self.data = _open_dataset(dataset)
        self.gate = _gate(latency)

    def train(self, arch: str, seed: int, scores: tuple = (), score_batch_size: int = 64) -> dict:
        """The child's training result; with ``scores``, its training-free scores first (``"scored"``)."""
        from nas.trainer import train_child

        scored = score_child(arch, self.data, scores, seed=seed, batch_size=score_batch_size) if scores else None
        result = train_child(arch, self.data, self.trainer, seed=seed, device=self.device,
                             step_guard=self.gate.busy).to_dict()
        return {**result, "scored": scored, "node": _node(), "pid": os.getpid()}

    def where(self) -> dict:
        return {"node": _node(), "pid": os.getpid()}


def _sees(path: str) -> bool:
    return Path(path, "meta.json").exists()


def _open_dataset(dataset: dict):
    """The prepared dataset from the driver's cache path when this node sees it, else from the object store."""
    from nas.data import PreparedDataset, Split, open_prepared

    path = dataset.get("path")
    if path and _sees(path):
        return open_prepared(path)
    import ray

    if "ref" not in dataset:  # a node that joined after the search looked (nodes_without)
        raise FileNotFoundError(f"the prepared dataset {path} is not on node {_node()}, which joined after the search "
                                "started: use evaluator.dataset_transfer=object_store on clusters without a shared disk")

    arrays = ray.get(dataset["ref"][0])  # zero-copy, read-only arrays shared by the actors of this node
    meta = arrays["meta"]
    return PreparedDataset(name=meta["name"], num_classes=meta["num_classes"], channels=meta["channels"],
                           resolution=meta["resolution"], train=Split(arrays["train_x"], arrays["train_y"]),
                           val=Split(arrays["val_x"], arrays["val_y"]), class_names=meta["class_names"],
                           mean=tuple(meta["mean"]), std=tuple(meta["std"]), path=Path(meta["path"]), info={})


def nodes_without(path: str | Path, nodes: list[dict], timeout_s: float = 60.0) -> list[str]:
    """The IDs of the alive ``nodes`` (``ray.nodes()`` entries) that do not see the driver's prepared dataset at
    ``path``: one zero-CPU task pinned to each node looks. A node that does not answer in ``timeout_s`` counts as
    not seeing it (the object store then serves it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    look = ray.remote(num_cpus=0, max_retries=0)(_sees)
    refs = {look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(
        str(path)): node["NodeID"] for node in nodes}
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    blind = [node for ref, node in refs.items() if ref not in ready]
    for ref in ready:
        try:
            if not ray.get(ref):
                blind.append(refs[ref])
        except ray.exceptions.RayError:  # the node went away meanwhile
            blind.append(refs[ref])
    return blind


def _gate(latency: dict | None):
    """The host gate of the latency config on this node: training steps wait while the host times a model."""
    from latency.quiet import NullGate

    if latency is None:
        return NullGate()
    service = build("latency", latency)
    try:
        return service.gate
    finally:
        service.close()


class ConverterActor:
    """PyTorch -> ONNX -> TFLite, checked against PyTorch; TensorFlow and onnx2tf stay imported in its worker."""

    def __init__(self, latency: dict):
        self.service = build("latency", {**latency, "workers": 1})

    def convert(self, arch: str, deploy: dict, ship: bool) -> dict:
        record = self.service.convert(arch, resolution=deploy["resolution"], channels=deploy["channels"],
                                      num_classes=deploy["num_classes"])
        if ship and record.get("status") == "ok":  # the device may be on another node: the bytes travel along
            record["files"] = {name: Path(record[name]).read_bytes() for name in ("onnx_path", "tflite_path")}
        return {**record, "node": _node()}

    def where(self) -> dict:
        return {"node": _node(), "pid": os.getpid()}


class DeviceActor:
    """Owns one device: a phone (its adb serial, exclusively) or the host CPU, and times models on it."""

    def __init__(self, latency: dict):
        self.service = build("latency", {**latency, "workers": 1})

    def time(self, record: dict) -> dict:
        files = record.pop("files", None)
        if files and not Path(record["tflite_path"]).exists():
            target = self.service.models_dir / record["key"]
            target.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                path = target / Path(record[name]).name
                path.write_bytes(data)
                record[name] = str(path)
            self.service.trim_models()  # this node's cache keeps its size cap too
        started = time.perf_counter()
        result = self.service.time(record).to_dict()
        return {**result, "wall_seconds": time.perf_counter() - started, "node": _node()}

    def healthy(self) -> str | None:
        """None when the device answers, else why not (a phone that dropped off USB)."""
        try:
            self.service.runner.healthy()
        except Exception as exc:
            return first_line(exc)
        return None

    def device_id(self) -> str:
        return self.service.device_id

    def where(self) -> dict:
        return {"node": _node(), "pid": os.getpid()}


# ---------------------------------------------------------------------------------------------------- the driver
@dataclass
class _Job:
    child: ChildResult
    trained: bool = False
    timed: bool = False
    conversion: dict | None = None
    predicted: dict | None = None  # latency.mode predict / hybrid: the predictor's result
    measured: dict | None = None   # the conversion's failure or the timing
    reason: str | None = None      # why it was measured (hybrid)
    attempts: dict = field(default_factory=lambda: {TRAIN: 0, CONVERT: 0, TIME: 0})
    nodes: dict = field(default_factory=dict)


class _Pool:
    """Actors of one kind, the stages waiting for them, and which actor runs what.

    ``slots``: how many interchangeable actors ``make()`` starts, or what each actor owns (a phone's serial), one
    ``make(slot)`` each. A dead actor's replacement takes its slot: a phone's new actor owns that phone again."""

    def __init__(self, kind: str, make, slots: int | Sequence):
        anonymous = isinstance(slots, int)
        self.kind, self.make = kind, (lambda _: make()) if anonymous else make
        self.slot = {self.make(slot): slot for slot in ([None] * slots if anonymous else slots)}  # actor -> slot
        self.idle = deque(self.actors)
        self.queue: deque[_Job] = deque()
        self.unhealthy: dict[Any, str] = {}

    @property
    def actors(self) -> list:
        return list(self.slot)

    @property
    def busy(self) -> int:
        return len(self.slot) - len(self.idle) - len(self.unhealthy)

    def replace(self, actor):
        """A dead actor is replaced by a fresh one for its slot (placed by Ray wherever its resources are free); the
        fresh actor, not idle until it has answered (see ``RayEvaluator._replace``), or None if ``actor`` was not
        in the pool."""
        if actor not in self.slot:
            return None
        slot = self.drop(actor)
        fresh = self.make(slot)
        self.slot[fresh] = slot
        return fresh

    def drop(self, actor):
        """Kill ``actor`` and take it out of the pool; its slot."""
        import ray

        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already gone with its node
            pass
        if actor in self.idle:
            self.idle.remove(actor)
        return self.slot.pop(actor, None)


class RayEvaluator(Evaluator):
    """See the module docstring. Built from ``configs/evaluator/ray.yaml``."""

    @classmethod
    def training_threads(cls, settings: dict, threads: int | None) -> int | None:
        """The trainer actors' ``trainers.threads`` (as ``__init__`` resolves it), not the driver's ``threads``."""
        trainers = settings.get("trainers")
        given = trainers.get("threads") if isinstance(trainers, Mapping) else None
        return given or threads or 1

    def __init__(self, *, trainer, dataset, latency: dict | None, deploy: dict, seed: int = 0,
                 threads: int | None = None, address: str | None = None, trainers: dict | None = None,
                 converters: dict | None = None, devices: dict | None = None, max_attempts: int = 3,
                 max_child_memory_gb: float = 8.0, dataset_transfer: str = "path", poll_s: float = 0.5,
                 namespace: str = "mnasnet-search", scores: Sequence[str] = (), score_batch_size: int = 64,
                 actor_start_s: float = 600.0):
        self.trainer, self.dataset = trainer, dataset
        # latency.mode (measure | predict | hybrid) is decided here, on the driver; the rest builds the actors' services
        self.modes, self.latency = LatencyModes.split(latency)
        if self.latency is not None:  # the actors' working directories are not the driver's
            self.latency = absolute_paths(self.latency)
        self.deploy, self.seed = dict(deploy), seed
        self.address = address
        self.trainers = {"actors": 2, "num_cpus": 1, "num_gpus": 0, "threads": threads or 1}
        self.converters = {"actors": 1, "num_cpus": 1}
        self.devices = {"serials": None, "num_cpus": 1}
        for section, fields, given in (("trainers", self.trainers, trainers), ("converters", self.converters, converters),
                                       ("devices", self.devices, devices)):
            if given is not None and not isinstance(given, Mapping):  # evaluator.trainers=4: set() of an int
                example = next(iter(fields))
                raise ValueError(f"evaluator.{section} is a section, not a value: set its fields "
                                 f"(evaluator.{section}.{example}=...), got {given!r}")
            known_fields(f"evaluator.{section}", given or {}, fields)  # a misspelt num_gpu was ignored in silence
            fields.update(given or {})
        positive_int("evaluator.trainers.actors", self.trainers["actors"])
        _resource("evaluator.trainers.num_cpus", self.trainers["num_cpus"])
        _resource("evaluator.trainers.num_gpus", self.trainers["num_gpus"], zero=True)
        positive_int("evaluator.trainers.threads", self.trainers["threads"])
        positive_int("evaluator.converters.actors", self.converters["actors"])
        _resource("evaluator.converters.num_cpus", self.converters["num_cpus"])
        _resource("evaluator.devices.num_cpus", self.devices["num_cpus"], zero=True)
        self.devices["serials"] = _serials(self.devices["serials"])
        if self.devices["serials"] and self.latency is not None and self.latency.get("runner", "host") != "adb":
            raise ValueError(f"evaluator.devices.serials names phones, but latency.runner is "
                             f"{self.latency.get('runner', 'host')}: use latency=adb to time on them, or "
                             "evaluator.devices.serials=null")
        self.max_attempts = positive_int("evaluator.max_attempts", max_attempts)
        self.max_child_memory_gb = positive_number("evaluator.max_child_memory_gb", max_child_memory_gb)
        if dataset_transfer not in ("path", "object_store"):
            raise ValueError(f"evaluator.dataset_transfer must be path or object_store, got {dataset_transfer!r}")
        self.dataset_transfer = dataset_transfer
        self.poll_s = positive_number("evaluator.poll_s", poll_s)
        self.actor_start_s = positive_number("evaluator.actor_start_s", actor_start_s)
        self.namespace = namespace
        # computed by the trainer actors, as the local evaluator does
        self.scores, self.score_batch_size = check_scores(scores, score_batch_size)
        self.capacity = self.trainers["actors"]
        self._started_ray = False
        self._reaper = None
        self._pools: dict[str, _Pool] = {}
        self._inflight: dict[Any, tuple[_Job, str, Any]] = {}
        self._starting: dict[Any, tuple[_Pool, Any, float]] = {}  # a replacement's ping -> (pool, actor, deadline)
        self._probing: dict[Any, tuple[_Pool, Any]] = {}  # an idle actor's ping after another died -> (pool, actor)
        self._jobs: dict[str, _Job] = {}
        self._done: deque[ChildResult] = deque()
        self._ship = False
        self._data_shape = None
        self._source_checked = False

    # ------------------------------------------------------------------ life cycle
    def check(self) -> list[str]:
        from nas.data import check_dataset
        from nas.trainer import check_device

        dataset_problem = check_dataset(self.dataset)
        self._source_checked = dataset_problem is None  # start() need not fingerprint the source again
        problems = [p for p in (dataset_problem, cluster_problem(self.address)) if p]
        if self.trainers["num_gpus"] == 0:  # with GPUs the trainer actors find them on their nodes
            device = self.trainer.device
            problem = (f"trainer.device={device} but evaluator.trainers.num_gpus=0: a trainer actor trains on a GPU "
                       "only when Ray gives it one (evaluator.trainers.num_gpus=1, or 0.5 to share one GPU between two "
                       "actors)") if device and device.startswith("cuda") else check_device(device)
            problems += [problem] if problem else []
        else:  # Ray gives an actor its GPUs as cuda:0, cuda:1, ... (CUDA_VISIBLE_DEVICES): a higher index fails each child
            device, visible = self.trainer.device, max(1, math.ceil(self.trainers["num_gpus"]))
            index = device.split(":", 1)[1] if device and device.startswith("cuda:") else None
            if index is not None and (not index.isdigit() or int(index) >= visible):
                problems.append(f"trainer.device={device} but a trainer actor sees the {visible} GPU(s) Ray gives it "
                                f"as cuda:0{f'..cuda:{visible - 1}' if visible > 1 else ''} "
                                "(evaluator.trainers.num_gpus); use trainer.device=cuda")
        if self.latency is not None:  # the fields now; the devices on their nodes once the cluster is up
            try:
                service = build("latency", {**self.latency, "workers": 1})
            except Exception as exc:
                problems.append(first_line(exc))
            else:
                try:  # predict / hybrid: the table of the configured device, loaded once, on the driver
                    problems += self.modes.load(service, self.deploy)
                finally:
                    service.close()
        return problems

    def start(self, run_dir: Path) -> None:
        import ray

        from nas.data import load_dataset

        data = load_dataset(self.dataset, source_checked=self._source_checked)  # prepared once, here; the actors open it (see _open_dataset)
        if note := self.trainer.schedule_note(len(data.train)):
            log.warning(note)
        self._data_shape = (data.resolution, data.channels, data.num_classes)
        if not ray.is_initialized():
            self._init_ray()
        self._check_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self._ship = len(nodes) > 1
        dataset = {"path": str(data.path)}
        # path: put in the object store only if a node cannot see the driver's prepared cache (no shared disk, or a
        # cluster joined through Ray Client from another machine); Ray started here is this machine's one node
        blind = [] if self.dataset_transfer == "object_store" or self._started_ray else nodes_without(data.path, nodes)
        if blind:
            log.info("ray: %d of %d node(s) do not see %s: the dataset goes through the object store", len(blind),
                     len(nodes), data.path)
        if self.dataset_transfer == "object_store" or blind:
            import numpy as np

            info = {"name": data.name, "num_classes": data.num_classes, "channels": data.channels,
                    "resolution": data.resolution, "class_names": list(data.class_names), "mean": list(data.mean),
                    "std": list(data.std), "path": str(data.path)}
            arrays = {"meta": info, "train_x": np.asarray(data.train.x), "train_y": np.asarray(data.train.y),
                      "val_x": np.asarray(data.val.x), "val_y": np.asarray(data.val.y)}
            # wrapped in a list so that Ray passes the reference itself, not the arrays, to every actor
            dataset = {"path": None if self.dataset_transfer == "object_store" else str(data.path),
                       "ref": [ray.put(arrays)]}
        latency = None if self.latency is None else {**self.latency, "work_dir": None}
        measuring = latency is not None and self.modes.measures  # predict: no converter, no device
        if measuring:
            # the actors pinned to a phone first, and placed before any other: the CPUs of a phone's node must not
            # all go to trainers and converters, which may run anywhere
            self._pools[TIME] = self._device_pool(latency)
            self._await(TIME, lambda a: a.device_id.remote(), "timing")
        t = self.trainers
        # SPREAD: trainers go to different nodes first (each node's GPUs and memory bandwidth count)
        trainer_cls = ray.remote(num_cpus=t["num_cpus"], num_gpus=t["num_gpus"], max_restarts=0,
                                 scheduling_strategy="SPREAD")(TrainerActor)
        self._pools[TRAIN] = _Pool(TRAIN, lambda: trainer_cls.remote(self.trainer, dataset, t["threads"], latency),
                                   t["actors"])
        if measuring:
            c = self.converters
            converter_cls = ray.remote(num_cpus=c["num_cpus"], max_restarts=0)(ConverterActor)
            self._pools[CONVERT] = _Pool(CONVERT, lambda: converter_cls.remote(latency), c["actors"])
        # fail now, with the reason, if an actor cannot start (a dataset missing on a node, a bad latency setting, no
        # TFLite converter on a node): not once per child, each failing its attempts
        self._await(TRAIN, lambda a: a.where.remote(), "trainer")
        if measuring:
            self._await(CONVERT, lambda a: a.where.remote(), "converter")
        log.info("ray: %d trainer(s), %d node(s)", len(self._pools[TRAIN].actors), len(nodes))

    def _await(self, kind: str, ping, what: str, timeout_s: float | None = None) -> None:
        """Wait until every actor of a pool has started; one line naming them if they cannot (an actor whose
        resources no node has free waits for ever)."""
        import ray

        timeout_s = self.actor_start_s if timeout_s is None else timeout_s
        try:
            ray.get([ping(actor) for actor in self._pools[kind].actors], timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise EvaluatorStopped(f"the {what} actors did not start within {timeout_s / 60:g} minutes: no node has "
                                   "their resources free (see ray status)") from None
        except ray.exceptions.RayError as exc:  # one died in its constructor, or with its node
            raise EvaluatorStopped(f"the {what} actors cannot start: {_why(exc)}") from None

    def _actor_shapes(self, phones: list[str]) -> list[tuple[str, str, int, dict[str, float]]]:
        """(what, config section, how many, resources of one) for each kind of actor this search starts, with
        ``phones`` (the advertised phones, of which :meth:`_timing_serials` picks those timed on: one device actor
        each, owning its phone; host timing, or no phone yet, has one)."""
        t, c, d = self.trainers, self.converters, self.devices
        shapes = [("trainer", "trainers", t["actors"], {"CPU": t["num_cpus"], "GPU": t["num_gpus"]})]
        if self.latency is not None and self.modes.measures:
            shapes.append(("converter", "converters", c["actors"], {"CPU": c["num_cpus"]}))
            serials = self._timing_serials(phones) if self.latency.get("runner") == "adb" else []
            shapes += [("device", "devices", 1, {"CPU": d["num_cpus"], f"phone_{serial}": 1}) for serial in serials
                       ] or [("device", "devices", 1, {"CPU": d["num_cpus"]})]
        return shapes

    def _demand(self, phones: list[str]) -> dict[str, float]:
        """Logical CPUs and GPUs the actors ask for in all (see :meth:`_actor_shapes`)."""
        shapes = self._actor_shapes(phones)
        return {kind: sum(count * need.get(kind, 0) for _, _, count, need in shapes) for kind in ("CPU", "GPU")}

    def _timing_serials(self, advertised: list[str]) -> list[str]:
        """The phones to time on: ``devices.serials``, else the latency config's serial, else every advertised one."""
        return list(self.devices["serials"] or self.latency.get("serial") and [self.latency["serial"]] or advertised)

    @staticmethod
    def _advertised_phones() -> list[str]:
        import ray

        return sorted(k[len("phone_"):] for k in ray.cluster_resources() if k.startswith("phone_"))

    def _init_ray(self) -> None:
        import signal

        import ray

        resources = {}
        if self.address is None and self.latency is not None and self.latency.get("runner") == "adb":
            resources = {f"phone_{serial}": 1 for serial in _local_phones(self.latency)}
        phones = sorted(serial[len("phone_"):] for serial in resources)
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        kwargs = {}
        if self.address is None:
            # Ray's CPUs are logical (admission, not isolation): on a small machine the actors may ask for more
            # than its cores, as the local evaluator's trainer and latency workers already share them
            kwargs["num_cpus"] = max(os.cpu_count() or 1, int(-(-self._demand(phones)["CPU"] // 1)))
        # Ray's own console output is kept to errors (its logs stay under /tmp/ray/session_*/logs): the search's
        # progress bar and one-line errors are what a user reads
        try:
            ray.init(address=self.address or "local", namespace=self.namespace, resources=resources or None,
                     include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, **kwargs)
        except (ConnectionError, RuntimeError) as exc:  # a cluster that went away since the check, another Ray version
            where = f"the Ray cluster at {self.address}" if self.address else "Ray on this machine"
            raise EvaluatorStopped(f"evaluator=ray: cannot start or join {where}: {first_line(exc)}") from None
        finally:
            for signum, handler in handlers.items():  # Ray installs its own: Ctrl-C and SIGTERM stay the search's
                signal.signal(signum, handler)
        self._started_ray = self.address is None
        if self._started_ray:
            from nas.ray_reaper import watch

            self._reaper = watch(os.getpid())

    def _check_resources(self) -> None:
        """Refuse, in one line, actors the cluster cannot place (they would wait for ever)."""
        import ray

        have, phones = ray.cluster_resources(), self._advertised_phones()
        short = [f"{need:g} {kind} (the cluster has {have.get(kind, 0):g})"
                 for kind, need in self._demand(phones).items() if need > have.get(kind, 0) + 1e-9]
        if short:
            raise EvaluatorStopped(f"the Ray actors need {' and '.join(short)}: lower evaluator.trainers.actors or "
                                   "their num_cpus/num_gpus, or add nodes")
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        for what, section, _, need in self._actor_shapes(phones):  # enough in all, but each actor on one node
            phone = next((k for k in need if k.startswith("phone_")), None)
            hosts = [node for node in nodes if phone is None or node.get(phone, 0) >= 1]
            amounts = {k: v for k, v in need.items() if v and k != phone}
            if phone and not hosts:
                continue  # not advertised: the device pool names the phones the cluster has
            if not any(all(node.get(k, 0) + 1e-9 >= v for k, v in amounts.items()) for node in hosts):
                where = f"the node of phone {phone[len('phone_'):]}" if phone else "any node"
                has = ", ".join(f"{max(node.get(k, 0) for node in hosts):g} {k}" for k in amounts)
                raise EvaluatorStopped(
                    f"one {what} actor needs {' and '.join(f'{v:g} {k}' for k, v in amounts.items())}, more than "
                    f"{where} has (at most {has}): lower evaluator.{section}."
                    f"{'/'.join(f'num_{k.lower()}s' for k in amounts)} or add a larger node")

    def _device_pool(self, latency: dict) -> _Pool:
        import ray

        num_cpus = self.devices["num_cpus"]
        if latency.get("runner") != "adb":
            cls = ray.remote(num_cpus=num_cpus, max_restarts=0)(DeviceActor)
            return _Pool(TIME, lambda: cls.remote(latency), 1)
        advertised = self._advertised_phones()
        serials = self._timing_serials(advertised)
        missing = [s for s in serials if s not in advertised]
        if not serials or missing:
            raise EvaluatorStopped(
                f"no phone for timing: the cluster advertises {', '.join(advertised) or 'none'}"
                + (f", not {', '.join(missing)}" if missing else "")
                + "; start the node a phone hangs on with --resources='{\"phone_<serial>\": 1}' "
                  "(python -m latency devices --ray-resources prints it)")

        def make(serial: str):
            cls = ray.remote(num_cpus=num_cpus, resources={f"phone_{serial}": 1}, max_restarts=0)(DeviceActor)
            return cls.remote({**latency, "serial": serial})

        return _Pool(TIME, make, serials)

    def close(self) -> None:
        import ray

        for pool in self._pools.values():
            for actor in pool.actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:
                    pass
        self._pools.clear()
        self._inflight.clear()
        self._starting.clear()
        self._probing.clear()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False
        if self._reaper is not None:  # Ray was shut down cleanly: nothing left to reap
            self._reaper.terminate()
            self._reaper.wait()
            self._reaper = None

    # ------------------------------------------------------------------ evaluation
    def submit(self, arch: str) -> None:
        child = ChildResult(arch=arch, seed=child_seed(self.seed, arch))
        try:
            profile, too_large = size_guard(
                arch, deploy=self.deploy, data_shape=self._data_shape, batch_size=self.trainer.batch_size,
                optimizer_slots=2 if self.trainer.optimizer == "rmsprop" else 1, limit_gb=self.max_child_memory_gb,
                converts=self.latency is not None and self.modes.measures)
            child.params, child.macs = profile.params, profile.macs
            if too_large:
                child.fail(too_large)
        except Exception as exc:
            child.fail(f"build: {first_line(exc, with_type=True)}")
        job = _Job(child)
        if not child.ok:
            self._done.append(child)
            return
        self._jobs[arch] = job
        self._pools[TRAIN].queue.append(job)
        if self.latency is None:
            job.timed = True
        elif self.modes.measure_at_submit:
            self._pools[CONVERT].queue.append(job)  # converted and timed while it trains
        else:
            job.predicted = self.modes.predict(arch)  # measured, if at all, once trained (hybrid)

    def pending(self) -> int:
        return len(self._jobs) + len(self._done)

    def next_result(self) -> ChildResult:
        import ray

        while not self._done:
            if not self._jobs:
                raise RuntimeError("next_result() with nothing submitted")
            self._dispatch()
            if not self._inflight and not self._starting and not self._probing:
                raise EvaluatorStopped("no actor can take the remaining children (all devices unhealthy?)")
            refs = [*self._inflight, *self._starting, *self._probing]
            ready, _ = ray.wait(refs, num_returns=1, timeout=self.poll_s)
            if ready and len(refs) > 1:  # everything else that is done by now, in one call
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            for ref in ready:
                if ref in self._starting:
                    self._started(ref)
                elif ref in self._probing:
                    self._probed(ref)
                else:
                    self._complete(ref)
            self._overdue()
        self._dispatch()  # actors freed by these results start their next stage before the driver commits the step
        return self._done.popleft()

    def _dispatch(self) -> None:
        for stage, pool in self._pools.items():
            while pool.queue and pool.idle:
                job = pool.queue.popleft()
                if not self._current(job):
                    continue  # finished (failed) while it waited
                actor = pool.idle.popleft()
                if stage == TRAIN:
                    ref = actor.train.remote(job.child.arch, job.child.seed, self.scores, self.score_batch_size)
                elif stage == CONVERT:
                    ref = actor.convert.remote(job.child.arch, self.deploy, self._ship)
                else:
                    ref = actor.time.remote(dict(job.conversion))
                self._inflight[ref] = (job, stage, actor)

    def _stage_failed(self, job: _Job, stage: str, reason: str) -> None:
        """A stage failed for the cluster's reasons (transient: evaluated again if resampled). Training failed: the
        child fails now. Conversion or timing failed: the measurement failed; the child finishes once trained (in
        hybrid mode with its predicted latency, as when a local measurement fails so)."""
        if stage == TRAIN:
            self._finish(job.child.fail(reason, transient=True), job)
            return
        job.measured = {"status": "failed", "error": reason, "extra": transient()}
        job.timed = True
        if job.trained:
            self._finish(job.child, job)

    def _current(self, job: _Job) -> bool:
        """Whether ``job`` is still its architecture's pending job: an earlier job of the same architecture (failed,
        then submitted again) is not, and its late answers must not touch the newer one."""
        return self._jobs.get(job.child.arch) is job

    def _complete(self, ref) -> None:
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError, WorkerCrashedError

        job, stage, actor = self._inflight.pop(ref)
        pool = self._pools[stage]
        current = self._current(job)  # else a late answer for a child already recorded: dropped, never recorded twice
        try:
            value = ray.get(ref, timeout=0)
        except RayTaskError as exc:  # a stage raised (its actor lives): the child fails with the cause. Stages return
            pool.idle.append(actor)  # a child's own failures as values, so what they raise is not the architecture's
            if current:
                self._stage_failed(job, stage, f"{stage}: {first_line(exc.cause if exc.cause else exc, with_type=True)}")
            return
        except RayError as exc:  # the actor died (its node with it), or its answer was lost: another attempt
            what = "actor died" if isinstance(exc, (RayActorError, WorkerCrashedError)) else "result lost"
            reason = f"{stage} {what} ({_why(exc, limit=200)})"
            if stage == TIME and self._phone_gone(actor, pool, reason):
                if current:
                    pool.queue.appendleft(job)  # its timing moves to a healthy phone
                return
            self._replace(pool, actor)
            self._probe_idle()
            if not current:
                return
            job.attempts[stage] += 1
            log.warning("%s: %s (attempt %d of %d)", job.child.arch, reason, job.attempts[stage], self.max_attempts)
            if job.attempts[stage] >= self.max_attempts:
                self._stage_failed(job, stage, f"{stage}: gave up after {self.max_attempts} attempts: {reason}")
            else:
                pool.queue.appendleft(job)
            return
        pool.idle.append(actor)
        if not current:
            return
        job.nodes[stage] = value.pop("node", None)
        if stage == TRAIN:
            value.pop("pid", None)
            scored = value.pop("scored", None)
            if scored is not None:
                apply_scores(job.child, scored)
            apply_training(job.child, value)
            job.trained = True
            if not job.timed and not self.modes.measure_at_submit:
                job.reason = self.modes.wants_measurement(job.child, job.predicted)
                if job.reason is None:
                    job.timed = True  # the prediction stands
                else:
                    self._pools[CONVERT].queue.append(job)
        elif stage == CONVERT:
            if value.get("status") == "ok":
                job.conversion = value
                self._pools[TIME].queue.append(job)
            else:
                job.measured = {"status": "failed", "error": value.get("error"),
                                "extra": transient(value.get("transient"))}
                job.timed = True
        else:
            if value.get("status") != "ok" and self._device_dropped(actor, pool):
                pool.queue.appendleft(job)  # its timing moves to a healthy phone
                return
            job.measured = value
            job.timed = True
        if job.trained and job.timed:
            self._finish(job.child, job)

    def _replace(self, pool: _Pool, actor) -> None:
        """Replace a dead actor; the fresh one takes work once it has answered a ping. Until then it may wait for
        resources no node has free (the node that had them died): :meth:`_overdue` gives up on it in time."""
        fresh = pool.replace(actor)
        if fresh is not None:
            self._starting[fresh.where.remote()] = (pool, fresh, time.monotonic() + self.actor_start_s)

    def _probe_idle(self) -> None:
        """An actor died: the idle actors of its node died with it, unnoticed until work reached them, and each
        would have cost a child an attempt it never ran (three dead idle actors failed a child while a live one
        waited). Every idle actor takes work again once it has answered a ping; a dead one is replaced."""
        for pool in self._pools.values():
            while pool.idle:
                actor = pool.idle.popleft()
                self._probing[actor.where.remote()] = (pool, actor)

    def _probed(self, ref) -> None:
        import ray

        pool, actor = self._probing.pop(ref)
        if actor not in pool.slot or actor in pool.unhealthy:  # dropped, or its phone marked, meanwhile
            return
        try:
            ray.get(ref, timeout=0)
        except ray.exceptions.RayError as exc:
            reason = f"{pool.kind} actor died while idle ({_why(exc, limit=200)})"
            log.warning("%s", reason)
            if not (pool.kind == TIME and self._phone_gone(actor, pool, reason)):
                self._replace(pool, actor)
        else:
            pool.idle.append(actor)

    def _started(self, ref) -> None:
        import ray

        pool, actor, _ = self._starting.pop(ref)
        try:
            ray.get(ref, timeout=0)
        except ray.exceptions.RayError as exc:  # died in its constructor, or with its node
            self._lose(pool, actor, f"its replacement could not start: {_why(exc)}")
        else:
            pool.idle.append(actor)

    def _overdue(self) -> None:
        now = time.monotonic()
        for ref, (pool, actor, deadline) in list(self._starting.items()):
            if now > deadline:
                del self._starting[ref]
                self._lose(pool, actor, f"its replacement was not placed within {self.actor_start_s:g} s (no node "
                                        "has its resources free: see ray status)")

    def _lose(self, pool: _Pool, actor, reason: str) -> None:
        """Give up a replacement actor (its slot with it); the search goes on with the others, or stops in one line
        when none of its kind is left (resumable like any interrupted run)."""
        slot = pool.drop(actor)
        left = len(pool.actors) - len(pool.unhealthy)
        what = {TRAIN: "trainer", CONVERT: "converter", TIME: "device"}[pool.kind] + (f" for phone {slot}" if slot
                                                                                     else "")
        log.warning("a %s actor died and %s; %d left", what, reason, left)
        if left == 0:
            raise EvaluatorStopped(f"no {pool.kind} actor left: a {what} actor died and {reason}; run the same "
                                   "command to resume once the cluster has room")

    def _phone_gone(self, actor, pool: _Pool, reason: str) -> bool:
        """A dead device actor whose phone the cluster no longer advertises (its node went away) is not replaced (the
        replacement would wait for that phone for ever): the phone is marked unhealthy, as one that drops is."""
        import ray

        serial = pool.slot.get(actor)
        if serial is None or f"phone_{serial}" in ray.cluster_resources():
            return False
        return self._device_dropped(actor, pool, f"phone {serial} left the cluster: {reason}")

    def _device_dropped(self, actor, pool: _Pool, problem: str | None = None) -> bool:
        import ray

        if problem is None:
            try:
                problem = ray.get(actor.healthy.remote(), timeout=60)
            except Exception as exc:
                problem = first_line(exc)
        if problem is None:
            return False
        pool.unhealthy[actor] = problem
        if actor in pool.idle:
            pool.idle.remove(actor)
        log.warning("device marked unhealthy: %s", problem)
        if len(pool.unhealthy) == len(pool.actors):
            raise EvaluatorStopped(f"every timing device dropped ({'; '.join(pool.unhealthy.values())}); reconnect "
                                   "a phone and run the same command to resume")
        return True

    def _finish(self, child: ChildResult, job: _Job) -> None:
        if not self._current(job):
            return
        del self._jobs[child.arch]
        if job.predicted is not None or job.measured is not None:
            self.modes.finish(child, job.predicted, job.measured, job.reason)
        child.extra["nodes"] = job.nodes
        self._done.append(child)

    def status(self) -> str:
        parts = [f"{stage} {pool.busy}/{len(pool.actors) - len(pool.unhealthy)}" for stage, pool in self._pools.items()]
        waiting = sum(len(p.queue) for p in self._pools.values())
        return " ".join(parts + [self.modes.status()]).strip() + (f" queued {waiting}" if waiting else "")


def _why(exc: BaseException, limit: int = 300) -> str:
    """One line for a Ray error: the exception an actor's method or constructor raised (Ray's first line only names
    the actor; a constructor's exception is the last line), else the first line."""
    if isinstance(getattr(exc, "cause", None), BaseException):  # RayTaskError
        return first_line(exc.cause, limit=limit, with_type=True)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if getattr(exc, "actor_init_failed", False) and lines:
        return lines[-1][:limit]
    return first_line(exc, limit=limit, with_type=True)


def _local_phones(latency: dict) -> list[str]:
    """Serials of the phones ``adb devices`` lists ready on this machine; an adb that is missing or does not answer
    stops the search in one line (it was a traceback from the evaluator's start)."""
    service = build("latency", latency)
    try:
        return [d["serial"] for d in service.runner.devices() if d["state"] == "device"]
    except DeviceError as exc:
        raise EvaluatorStopped(f"evaluator=ray: cannot list this machine's phones: {first_line(exc)}") from None
    finally:
        service.close()
