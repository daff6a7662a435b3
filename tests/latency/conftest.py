"""Shared by the latency tests: one host service (and its SQLite cache of converted models) per session."""

from __future__ import annotations

import pytest

from latency import build_service

SMALL = "ds_r1_k3_s1_c8-ir_r1_k3_s2_e3_c16"


@pytest.fixture(scope="session")
def latency_root(tmp_path_factory):
    return tmp_path_factory.mktemp("latency")


@pytest.fixture(scope="session")
def host_service(latency_root):
    service = build_service("host", threads=1, warmup_runs=2, num_runs=5, workers=2,
                            cache_path=latency_root / "latency.sqlite", work_dir=latency_root / "work")
    yield service
    service.close()
