"""One loopback Ray cluster per test session: a head (``node_a``) and a second node (``node_b``) started with
``ray start``, in the private network namespace ``make test`` runs the suite in (Ray listens on every interface: the
namespace keeps all of its traffic on 127.0.0.1). Both nodes use the session's token file (tests/conftest.py). The
nodes are stopped at the end of the session by killing their process groups, and the head's recorded address is
removed: nothing of Ray outlives the tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))


def private_netns() -> bool:
    """True inside a network namespace whose only interface is the loopback (``unshare -n``, lo up)."""
    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"]:
        return False
    try:
        with socket.create_server(("127.0.0.1", 0)):
            return True
    except OSError:  # lo is down
        return False


@dataclass
class Cluster:
    address: str
    env: dict
    tmp: Path
    nodes: list = field(default_factory=list)

    def start_node(self, *, head: bool = False, num_cpus: int = 1, resources: dict | None = None,
                   port: int | None = None) -> subprocess.Popen:
        """``ray start --block`` in a session of its own (its whole process group is killed to stop it)."""
        cmd = [RAY, "start", "--block", f"--num-cpus={num_cpus}", "--object-store-memory=200000000",
               "--disable-usage-stats", f"--resources={json.dumps(resources or {})}"]
        cmd += ["--head", f"--port={port}", "--include-dashboard=false"] if head else [f"--address={self.address}"]
        log = open(self.tmp / f"node{len(self.nodes)}.log", "w")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(proc)
        return proc

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        import ray

        deadline = time.time() + timeout
        while time.time() < deadline:
            if len([n for n in ray.nodes() if n.get("Alive")]) >= count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"the Ray cluster did not reach {count} nodes")

    @staticmethod
    def stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
        """Stop a node: its whole process group (raylet, agents, workers), gently then for good."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
        except ProcessLookupError:
            pass


def _forget_cluster(address: str) -> None:
    """``ray start --head`` records its address for later ``address=auto`` joins (``ray_current_cluster`` in Ray's
    temp directory); ``ray stop`` would remove it, killing the process group does not. Left behind, it sent a later
    ``evaluator.address=auto`` search to this dead cluster: removed if it still names it."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    try:
        if path.read_text().strip() == address:
            path.unlink()
    except OSError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    if not private_netns():
        pytest.skip("Ray tests run in a private network namespace (make test does it: unshare -n, as root)")
    tmp = tmp_path_factory.mktemp("ray")
    # the session's one authentication mode and token (tests/conftest.py) reach the nodes through the environment
    assert os.environ.get("RAY_AUTH_MODE") == "token" and Path(os.environ["RAY_AUTH_TOKEN_PATH"]).is_file()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    import ray

    port = _free_port()
    cluster = Cluster(address=f"127.0.0.1:{port}", env=env, tmp=tmp)
    try:  # the nodes are stopped however the set-up ends (a driver that cannot join left them running before)
        cluster.start_node(head=True, num_cpus=4, resources={"node_a": 1}, port=port)
        time.sleep(3)
        cluster.start_node(num_cpus=3, resources={"node_b": 1, "phone_FAKEA": 1, "phone_FAKEB": 1})
        deadline = time.time() + 120
        while True:  # the head takes a few seconds to accept drivers
            try:
                ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR", namespace="tests")
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        cluster.wait_for_nodes(2)
        yield cluster
    finally:
        ray.shutdown()
        for proc in reversed(cluster.nodes):
            Cluster.stop(proc)
        _forget_cluster(cluster.address)
