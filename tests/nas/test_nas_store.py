"""The run store: atomic steps, pending children, refusal of corrupted or foreign stores, full disk."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from nas.store import RunStore, StoreError


def _result(arch: str, top1: float, lat: float, status: str = "ok") -> dict:
    return {"arch": arch, "status": status, "top1": top1, "latency_ms": lat, "params": 10, "macs": 20,
            "error": None if status == "ok" else "train: loss is nan"}


def test_children_then_step_commit_atomically(tmp_path):
    with RunStore(tmp_path) as store:
        assert store.last_step() == -1
        store.add_child(step=0, idx=0, tokens=[1, 2], arch="a", result=_result("a", 0.5, 3.0), log_prob=-1.5)
        store.add_child(step=0, idx=1, tokens=[0, 2], arch="b", result=_result("b", 0.0, 1.0, "failed"))
        assert set(store.pending_children(0)) == {0, 1}
        assert store.num_committed_children() == 0
        state = {"rng": torch.get_rng_state(), "w": torch.arange(3.0)}
        store.commit_step(0, [0.45, -1.0], {"reward/mean": -0.275}, state)
        assert store.pending_children(0) == {}
        assert store.last_step() == 0
        loaded = store.controller_state(0)
        assert torch.equal(loaded["rng"], state["rng"]) and torch.equal(loaded["w"], state["w"])
        kids = store.children(committed_only=True)
        assert [(c.arch, c.reward, c.status) for c in kids] == [("a", 0.45, "ok"), ("b", -1.0, "failed")]
        assert kids[1].error == "train: loss is nan" and kids[0].log_prob == -1.5
        assert store.find_result("a")["top1"] == 0.5
        assert store.steps()[0]["reward/mean"] == -0.275
    # survives reopening (a real file on disk)
    with RunStore(tmp_path / "run.sqlite", readonly=True) as store:
        assert store.num_committed_children() == 2


def test_a_step_is_all_or_nothing(tmp_path):
    with RunStore(tmp_path) as store:
        store.add_child(step=0, idx=0, tokens=[1], arch="a", result=_result("a", 0.5, 3.0))
        with pytest.raises(StoreError):
            # step 0 committed twice: the second commit fails as a whole, rewards included
            store.commit_step(0, [0.1], {}, {})
            store.commit_step(0, [0.9], {}, {})
        assert store.children(committed_only=True)[0].reward == 0.1


def test_corrupted_store_is_reported_and_left_alone(tmp_path):
    path = tmp_path / "run.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="unreadable|corrupted"):
        RunStore(path)
    assert path.read_bytes() == before


def test_readonly_missing_store(tmp_path):
    with pytest.raises(StoreError, match="no run store"):
        RunStore(tmp_path / "nope" / "run.sqlite", readonly=True)


def test_full_disk_rolls_back_and_keeps_committed_results(tmp_path):
    with RunStore(tmp_path) as store:
        store.add_child(step=0, idx=0, tokens=[1], arch="a", result=_result("a", 0.5, 3.0))
        store.commit_step(0, [0.5], {}, {"w": torch.zeros(1)})
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # SQLite's own "database or disk is full"
        big = {"w": torch.zeros(200_000)}
        store.add_child(step=1, idx=0, tokens=[2], arch="b", result=_result("b", 0.6, 2.0))
        with pytest.raises(StoreError, match="disk full .* rolled back"):
            store.commit_step(1, [0.6], {}, big)
        assert store.last_step() == 0
        assert store.pending_children(1)[0].arch == "b"
    with sqlite3.connect(tmp_path / "run.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_child_seed_is_stored_and_schema_1_stores_are_migrated(tmp_path):
    with RunStore(tmp_path) as store:
        store.add_child(step=0, idx=0, tokens=[1], arch="a", result={**_result("a", 0.5, 3.0), "seed": 1234})
        assert store.pending_children(0)[0].seed == 1234
    # make it a schema-1 store (no seed column), as written by earlier versions
    con = sqlite3.connect(tmp_path / "run.sqlite")
    con.execute("ALTER TABLE children DROP COLUMN seed")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with RunStore(tmp_path, readonly=True) as store:  # readable as it is
        assert store.pending_children(0)[0].seed is None
    with RunStore(tmp_path) as store:  # opened for writing: migrated in place, nothing lost
        assert store.get_meta("schema_version") == 2
        assert store.pending_children(0)[0].arch == "a"
        store.add_child(step=0, idx=1, tokens=[2], arch="b", result={**_result("b", 0.6, 2.0), "seed": 7})
        assert [c.seed for c in store.pending_children(0).values()] == [None, 7]
