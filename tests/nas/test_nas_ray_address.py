"""evaluator.address is checked before a search starts: an address nothing answers at is one line within seconds
(``ray.init`` would retry it for minutes), whether given outright or found by ``auto`` (RAY_ADDRESS, the last
``ray start``). No Ray instance is started: only Ray's address resolution and a TCP connection. Outside a private
network namespace Ray resolves 127.0.0.1 to the machine's own address (DESIGN.md), and so does the check: the
test servers listen where Ray would connect."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager

import pytest

from nas.ray_evaluator import RAY_CLIENT_PORT, cluster_problem


def _head_host() -> str:
    """Where Ray connects for 127.0.0.1 here (itself in a private network namespace)."""
    from ray._private.services import resolve_ip_for_localhost

    return resolve_ip_for_localhost("127.0.0.1")


def _closed_port() -> int:
    with socket.create_server((_head_host(), 0)) as server:
        return server.getsockname()[1]  # closed again when the block ends: nothing answers there


def test_null_starts_ray_here_and_needs_no_cluster():
    assert cluster_problem(None) is None


def test_local_is_refused_for_null():
    """ray.init(address="local") starts a private instance the search neither sized, reaped nor shut down: its
    processes outlived a kill -9 of the driver."""
    assert cluster_problem("local") == ("evaluator.address=local is not one of null, auto, host:port or "
                                        "ray://host:port; use evaluator.address=null to start Ray for this search "
                                        "(stopped with it)")


@contextmanager
def _server(answer: bytes):
    """A server on the head's host that reads what a client sends and answers ``answer`` to every connection."""
    server = socket.create_server((_head_host(), 0))

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.recv(1024)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        thread.join(5)


GRPC_SETTINGS = bytes([0, 0, 6, 4, 0, 0, 0, 0, 0]) + bytes([0, 3, 0, 0, 0, 100])  # a server's first HTTP/2 frame


def test_an_address_where_a_head_listens_passes():
    with _server(GRPC_SETTINGS) as port:  # answers an HTTP/2 preface as Ray's GCS and client server (gRPC) do
        assert cluster_problem(f"127.0.0.1:{port}") is None
        assert cluster_problem(f"ray://{_head_host()}:{port}") is None


@pytest.mark.parametrize("answer", [b"HTTP/1.0 400 Bad request\r\n\r\n", b""], ids=["http1", "silent"])
def test_an_address_where_another_server_listens_is_one_line(answer):
    """Any open port passed (a dashboard's, pasted by mistake), and ray.init then retried it for minutes."""
    with _server(answer) as port:
        address = f"{_head_host()}:{port}"
        problem = cluster_problem(address, timeout_s=2)
    assert problem.startswith(f"evaluator.address={address}: {address} answers, but not as a Ray head")
    assert "\n" not in problem


@pytest.mark.parametrize("form", ["{0}", "ray://{0}"])
def test_an_address_nothing_answers_at_is_one_line(form):
    target = f"{_head_host()}:{_closed_port()}"
    address = form.format(target)
    problem = cluster_problem(address, timeout_s=2)
    assert problem.startswith(f"evaluator.address={address}: no Ray cluster answers at {target} (")
    assert "evaluator.address=null" in problem and "\n" not in problem


def test_a_ray_client_address_without_a_port_gets_the_client_port(monkeypatch):
    seen = []

    def connect(target, timeout):
        seen.append(target)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", connect)
    assert "at head:10001 (Connection refused)" in cluster_problem("ray://head")
    assert "at [::1]:10001" in cluster_problem("ray://[::1]/")
    assert seen == [("head", RAY_CLIENT_PORT), ("::1", RAY_CLIENT_PORT)]


def test_auto_with_a_ray_client_address_in_the_environment_probes_that_address(monkeypatch):
    """ray.init(address="auto") joins RAY_ADDRESS=ray://... through Ray Client; the check parsed ray://head:10001 as
    a head's host:port and refused a cluster Ray would have joined."""
    seen = []

    def connect(target, timeout):
        seen.append(target)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head")
    assert cluster_problem("auto").startswith("evaluator.address=auto: no Ray cluster answers at head:10001 (")
    assert seen == [("head", RAY_CLIENT_PORT)]


def test_auto_names_the_stale_address_it_resolved_to(monkeypatch):
    target = f"{_head_host()}:{_closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", target)  # as the last ray start's file would name it
    problem = cluster_problem("auto", timeout_s=2)
    assert f"no Ray cluster answers at {target}" in problem and "has that cluster stopped?" in problem


@pytest.mark.parametrize("address", ["", "  "])
def test_an_empty_address_is_refused(address):
    assert cluster_problem(address).startswith("evaluator.address must be null, auto, host:port or ray://host:port")


def test_a_search_refuses_a_dead_cluster_before_writing_anything(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    address = f"127.0.0.1:{_closed_port()}"
    result = subprocess.run([sys.executable, "-m", "nas.search", "+experiment=smoke", "reward=macs", "logger=[]",
                             "measure_latency=false", "evaluator=ray", f"evaluator.address={address}",
                             f"run_dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: evaluator.address={address}: no Ray cluster "
                                                             "answers at ")
    assert not (tmp_path / "run" / "run.sqlite").exists()
