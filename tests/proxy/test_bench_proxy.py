"""The proxy-fidelity benchmark: result store, job keys, statistics on known records, held-out split, CLI, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from mnas_common.sources import FASHION_MNIST_ROOT
from nas.data import load_dataset
from nas.fidelity import Job, ResultStore, StoreBusy, analyse, cost_against, fidelity_figure
from search_spaces import resolve_arch
from tests.conftest import load_script as load_conftest_script, needs_fmnist

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "bench_proxy.py"
DATA = dict(name="fm", source="fashion_mnist", root=FASHION_MNIST_ROOT, resolution=16, classes=None,
            images_per_class=30, val_per_class=20, seed=0)
TRAINER = dict(epochs=1, batch_size=32, lr=0.05, max_steps=4, augment=False, device="cpu")
# the key of Job("proxy", "mobilenet_v2", 0, DATA with root /data/fm, TRAINER) as stores written before the
# training revision existed hold it
STORED_KEY = "2dcdc569fccf900f6d8a"
# a tiny run of the script: smoke's tiny space and data, a few steps per training
TINY = ["--experiment", "smoke", "--archs", "3", "--references", "", "--zero-cost-batch", "16",
        "--reference-seeds", "100,101", "--reference", "dataset.images_per_class=50",
        "--reference", "trainer.max_steps=6",
        "--reference", "trainer.warmup_steps=0", "trainer.max_steps=4", "--no-progress", "--bootstrap", "200"]


def load_script():
    return load_conftest_script("bench_proxy")


def record(job: Job, top1: float | None, wall: float = 1.0) -> dict:
    result = {"status": "ok" if top1 is not None else "failed", "top1": top1, "train_seconds": wall * 0.9,
              "eval_seconds": wall * 0.1, "error": None if top1 is not None else "loss is nan"}
    return {"key": job.key(), "kind": job.kind, "role": job.role, "arch": job.arch, "seed": job.seed,
            "score": job.score, "result": result, "wall_seconds": wall}


def test_store_appends_reloads_and_drops_a_line_cut_by_a_kill(tmp_path):
    store = ResultStore(tmp_path)
    store.append({"key": "a", "x": 1})
    store.append({"key": "b", "x": 2})
    store.close()
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"key": "c", "x"')  # killed mid-write
    assert set(ResultStore(tmp_path, write=False).load()) == {"a", "b"}  # a reader skips it
    store = ResultStore(tmp_path)  # the next writer cuts it before appending
    store.append({"key": "c", "x": 3})
    store.close()
    assert [json.loads(line)["key"] for line in (tmp_path / "results.jsonl").read_text().splitlines()] == \
        ["a", "b", "c"]


def test_the_writer_reads_its_file_once_and_keeps_its_appends(tmp_path, monkeypatch):
    """bench_proxy read results.jsonl three times per run (the check, run_jobs, the analysis): the writer holds the
    lock, so the file can only change through its own appends, which it keeps."""
    first = ResultStore(tmp_path)
    first.append({"key": "a", "x": 1})
    first.close()
    reads = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self) or real(self, *a, **k))
    store = ResultStore(tmp_path)
    assert set(store.load()) == {"a"}
    store.append({"key": "b", "x": 2})
    assert set(store.load()) == {"a", "b"} and set(store.load()) == {"a", "b"}
    assert len(reads) == 1
    store.close()
    assert set(ResultStore(tmp_path, write=False).load()) == {"a", "b"}


def test_store_refuses_a_second_writer(tmp_path):
    first = ResultStore(tmp_path)
    with pytest.raises(StoreBusy, match="another bench_proxy"):
        ResultStore(tmp_path)
    first.close()
    ResultStore(tmp_path).close()


def test_job_key_covers_every_setting_that_changes_a_result():
    base = Job("proxy", "mobilenet_v2", 0, DATA, trainer=TRAINER)
    same = [Job("reference", "mobilenet_v2", 0, DATA, trainer=TRAINER),  # the role is not part of the result
            Job("proxy", resolve_arch("mobilenet_v2"), 0, DATA, trainer=TRAINER),  # name or string: one arch
            Job("proxy", "mobilenet_v2", 0, DATA, trainer=dict(TRAINER, prefetch=8))]
    for job in same:
        assert job.key() == base.key(), job
    different = [Job("proxy", "mnasnet_b1", 0, DATA, trainer=TRAINER),
                 Job("proxy", "mobilenet_v2", 1, DATA, trainer=TRAINER),
                 Job("proxy", "mobilenet_v2", 0, dict(DATA, images_per_class=31), trainer=TRAINER),
                 Job("proxy", "mobilenet_v2", 0, dict(DATA, resolution=20), trainer=TRAINER),
                 Job("proxy", "mobilenet_v2", 0, DATA, trainer=dict(TRAINER, lr=0.1)),
                 Job("proxy", "mobilenet_v2", 0, DATA, trainer=TRAINER, threads=2),
                 Job("zero_cost", "mobilenet_v2", 0, DATA, score="synflow", batch_size=64)]
    keys = {job.key() for job in different} | {base.key()}
    assert len(keys) == len(different) + 1


def test_job_key_follows_the_training_revision_and_keeps_stored_keys(monkeypatch):
    """A key stored before the revision existed still names the same job (so results.jsonl files stay valid), and a
    raised TRAINING_REVISION retrains every training job while a training-free score keeps its key."""
    import nas.trainer

    job = Job("proxy", "mobilenet_v2", 0, dict(DATA, root="/data/fm"), trainer=TRAINER)
    score = Job("zero_cost", "mobilenet_v2", 0, dict(DATA, root="/data/fm"), score="synflow", batch_size=64)
    assert nas.trainer.TRAINING_REVISION == 1 and job.key() == STORED_KEY
    before = score.key()
    monkeypatch.setattr(nas.trainer, "TRAINING_REVISION", 2)
    assert job.key() != STORED_KEY and score.key() == before


def test_analyse_on_known_records(tmp_path):
    archs = ["mobilenet_v2", "mnasnet_a1", "mnasnet_b1", "ds_r1_k3_s1_c16", "ds_r1_k5_s1_c16", "ds_r1_k3_s1_c24"]
    truth = [0.90, 0.91, 0.92, 0.80, 0.85, 0.88]
    proxy = [Job("proxy", a, s, DATA, trainer=TRAINER) for s in (0, 1) for a in archs]
    reference = [Job("reference", a, s, DATA, trainer=dict(TRAINER, epochs=3)) for s in (100, 101) for a in archs]
    zero = [Job("zero_cost", a, s, DATA, score="naswot", batch_size=64) for s in (0, 1) for a in archs]
    records = {}
    for job in reference:
        r = record(job, truth[archs.index(job.arch)] + (0.001 if job.seed == 100 else -0.001), wall=100.0)
        records[r["key"]] = r
    for job in proxy:  # seed 0 ranks exactly as the reference, seed 1 swaps the best two
        i = archs.index(job.arch)
        value = truth[i] - 0.1 if job.seed == 0 or i not in (1, 2) else truth[3 - i] - 0.1
        records[job.key()] = record(job, value, wall=2.0 if job.seed == 0 else 4.0)
    for job in zero:  # a score ranking the reverse of the reference
        records[job.key()] = {**record(job, None), "result": {"naswot": -truth[archs.index(job.arch)],
                                                              "seconds": 0.1, "error": None}}
    stats = analyse(records, archs, proxy=proxy, reference=reference, zero_cost=zero, top_k=2, n_boot=100)
    assert stats["archs"] == 6 and stats["complete"] and not stats["failed"]
    # Spearman of seed 1: ranks (2,3,1,4,5,6)... one adjacent swap of six: rho = 1 - 6*2/(6*35) = 0.942857
    assert stats["spearman"]["value"] == pytest.approx((1 + (1 - 12 / 210)) / 2)
    assert stats["kendall"]["value"] == pytest.approx((1 + (1 - 2 / 15)) / 2)  # one discordant pair of 15
    assert stats["noise_spearman"]["value"] == pytest.approx(1 - 12 / 210)
    assert stats["reference_noise_spearman"]["value"] == pytest.approx(1.0)
    assert stats["top_k_overlap"] == pytest.approx(1.0)  # the swap stays inside the top 2
    lo, hi = stats["spearman"]["ci"]
    assert lo <= stats["spearman"]["value"] <= hi
    assert stats["proxy_seconds"] == pytest.approx(3.0) and stats["reference_cost"]["seconds"] == 100.0
    assert stats["zero_cost"]["naswot"]["spearman"]["value"] == pytest.approx(-1.0)
    fig = fidelity_figure(stats, references=["mnasnet_a1"], title="known records")
    proxy_ax, score_ax = fig.axes
    assert proxy_ax.get_title() == "proxy: Spearman 0.97 (6 archs)"
    assert score_ax.get_title() == "naswot: Spearman -1.00 (6 archs)"
    assert [t.get_text() for t in proxy_ax.texts] == ["mnasnet_a1"]
    fig.savefig(tmp_path / "fidelity.png")
    assert (tmp_path / "fidelity.png").stat().st_size > 10_000

    # a top k that holds every architecture says nothing: no figure rather than a trivial 1.0
    assert analyse(records, archs, proxy=proxy, reference=reference, zero_cost=zero, top_k=6,
                   n_boot=20)["top_k_overlap"] is None

    # a failed proxy training drops its architecture; a missing one makes the run incomplete
    failed = proxy[0]
    records[failed.key()] = record(failed, None)
    del records[proxy[-1].key()]
    stats = analyse(records, archs, proxy=proxy, reference=reference, n_boot=50)
    assert stats["archs"] == 4 and stats["failed"] == [failed.arch] and stats["missing_proxy"] == [archs[-1]]
    assert not stats["complete"]


def test_cost_against_a_baseline_pairs_the_children_both_ran():
    archs = ["mobilenet_v2", "mnasnet_a1", "mnasnet_b1"]
    proxy = [Job("proxy", a, s, DATA, trainer=TRAINER) for s in (0, 1) for a in archs]
    baseline = [Job("baseline", a, 0, dict(DATA, val_per_class=5), trainer=TRAINER) for a in archs]
    walls = {"mobilenet_v2": 2.0, "mnasnet_a1": 4.0, "mnasnet_b1": 30.0}
    records = {j.key(): record(j, 0.5, wall=walls[j.arch] if j.seed == 0 else 99.0) for j in proxy}
    assert cost_against(records, proxy, baseline) == {}  # nothing run by both yet
    records[baseline[0].key()] = record(baseline[0], 0.5, wall=1.0)
    records[baseline[1].key()] = record(baseline[1], None, wall=5.0)  # a failed child's time was spent too
    out = cost_against(records, proxy, baseline)
    # only the two children both ran, on the baseline's seed: (2 + 4) / 2 against (1 + 5) / 2
    assert out["pairs"] == 2 and out["ratio"] == pytest.approx(1.0)
    assert out["proxy"]["seconds"] == pytest.approx(3.0) and out["baseline"]["seconds"] == pytest.approx(3.0)
    assert out["baseline"]["train_seconds"] == pytest.approx(2.7)


def test_baseline_jobs_run_beside_the_proxys_first_seed():
    bench = load_script()
    args = bench.parse_args(["--experiment", "smoke", "--archs", "3", "--references", "", "--seeds", "4,5",
                             "--zero-cost", "naswot", "--baseline", "dataset.val_per_class=10",
                             "--baseline", "trainer.epochs=2"])
    s = bench.settings(args)
    proxy, reference, zero = bench.make_jobs(args, s)
    baseline = bench.baseline_jobs(args, s)
    assert [(j.arch, j.seed) for j in baseline] == [(a, 4) for a in s["archs"]]
    assert s["baseline_dataset"]["val_per_class"] == 10 and s["baseline_trainer"]["epochs"] == 2
    assert s["proxy_dataset"]["val_per_class"] == 20 and s["proxy_trainer"]["epochs"] == 1  # the proxy is unchanged
    order = bench.job_order(proxy, baseline, reference, zero, 4)
    assert [(j.role, j.seed) for j in order] == [("zero_cost", 4)] * 3 + [("zero_cost", 5)] * 3 + \
        [("proxy", 4), ("baseline", 4)] * 3 + [("proxy", 5)] * 3 + \
        [("reference", 100)] * 3 + [("reference", 101)] * 3  # the default reference seeds
    assert [j.arch for j in order[6:12]] == [a for a in s["archs"] for _ in (0, 1)]  # each beside its own arch


@needs_fmnist
def test_reference_holds_out_the_proxys_images_and_trains_on_none_of_them(tmp_path):
    bench = load_script()
    args = bench.parse_args(["--experiment", "smoke", "--archs", "2", "--references", "mobilenet_v2"])
    s = bench.settings(args)
    assert len(s["archs"]) == 3 and s["archs"][-1] == "mobilenet_v2"
    assert s["reference_dataset"]["images_per_class"] is None  # every training image that is not held out
    assert s["reference_dataset"]["resolution"] == 28  # the dataset's own resolution, not smoke's 16 px
    for field in bench.SPLIT_FIELDS:
        assert s["reference_dataset"][field] == s["proxy_dataset"][field]
    proxy = load_dataset(dict(DATA, images_per_class=40), cache_dir=tmp_path, progress=False)
    reference = load_dataset(dict(DATA, images_per_class=200, resolution=28), cache_dir=tmp_path, progress=False)
    bench.check_held_out(proxy, reference)
    assert np.array_equal(np.load(proxy.path / "val_source_indices.npy"),
                          np.load(reference.path / "val_source_indices.npy"))
    other = load_dataset(dict(DATA, seed=1), cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="different images"):
        bench.check_held_out(proxy, other)


@pytest.mark.parametrize("argv, culprit", [
    (["--archs", "-1"], "--archs"),
    (["--workers", "0"], "--workers"),
    (["--seeds", "0,0"], "--seeds"),
    (["--seeds", "a"], "--seeds"),
    (["--seeds", "0,-1"], "each seed must be an integer in [0, 2**64), got -1"),  # stored as a failed job for good
    (["--reference-seeds", "-2"], "--reference-seeds"),
    (["--zero-cost", "grad_norm"], "grad_norm"),
    (["--zero-cost-batch", "1"], "--zero-cost-batch must be >= 2 for naswot"),  # every naswot job stored as failed
    (["--reference", "epochs=3"], "--reference"),
    (["--reference", "dataset.val_per_class=7"], "val_per_class"),
    (["--reference", "dataset.seed=3"], "dataset.seed"),
    (["--baseline", "epochs=3"], "--baseline"),
    (["--baseline", "trainer.lr=-1"], "trainer.lr"),
    (["--experiment", "smoke", "--baseline", "trainer.epochs=1"], "the proxy's own setting"),
    (["--experiment", "no_such_experiment"], "no_such_experiment"),
    (["trainer.no_such_field=1"], "no_such_field"),
    (["trainer.lr=-1"], "trainer.lr"),
    (["--references", "no_such_net"], "no_such_net"),
    (["--device", "bogus"], "--device"),  # a traceback after the data was prepared
    (["--device", "cuda:99"], "--device"),  # every job stored as failed for good, exit 0
    (["--plot", "fig.jpgx"], "--plot"),  # a traceback after all the training, the --json line lost
])
def test_bad_input_is_one_error_line_and_exit_2(argv, culprit, capsys, tmp_path):
    assert load_script().main([*argv, "--results", str(tmp_path / "r")]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and culprit in lines[0], err
    assert "Exception: " not in lines[0]  # Hydra's errors by their message, as nas.search names them
    assert out == "" and not (tmp_path / "r").exists()


def run_script(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, **kw)


def stored_keys(results: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (results / "results.jsonl").read_text().splitlines()]


@needs_fmnist
@pytest.mark.slow
def test_interrupted_runs_continue_and_train_nothing_twice(tmp_path):
    env = dict(os.environ, MNAS_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    results = tmp_path / "results"
    args = [*TINY, "--results", str(results), "--json"]
    total = 3 * (2 * 2 + 2 + 2)  # 3 archs x (2 scores x 2 seeds + 2 proxy seeds + 2 reference seeds)

    # 1. stopped by --max-jobs: exit 3, what it ran is stored
    first = run_script([*args, "--max-jobs", "5"], env)
    assert first.returncode == 3, first.stderr[-3000:]
    assert len(stored_keys(results)) == 5
    assert json.loads(first.stdout.strip().splitlines()[-1])["complete"] is False

    # 2. killed with SIGTERM while training (workers: 2): it stops, leaves no worker behind, keeps what finished
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args, "--workers", "2"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(stored_keys(results)) < 7 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the benchmark should run its jobs in worker processes"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "run the same command again" in err
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"workers left running after SIGTERM: {alive}"
    after_kill = stored_keys(results)
    assert 7 <= len(after_kill) < total

    # 3. the rerun finishes the rest: every job exactly once
    last = run_script(args, env)
    assert last.returncode == 0, last.stderr[-3000:]
    keys = stored_keys(results)
    assert len(keys) == total == len(set(keys)) and keys[: len(after_kill)] == after_kill
    assert f"{len(after_kill)} jobs were stored, {total - len(after_kill)} ran now" in last.stderr
    out = json.loads(last.stdout.strip().splitlines()[-1])
    for key in ("spearman", "kendall", "noise_spearman", "archs", "proxy_seconds"):
        assert key in out
    assert out["archs"] == 3 and out["complete"] and out["proxy_seconds"] > 0
    assert set(out["stats"]["zero_cost"]) == {"synflow", "naswot"}

    # 4. a finished run trains nothing and reprints the same figures
    again = run_script(args, env)
    assert again.returncode == 0 and "0 ran now" in again.stderr
    assert stored_keys(results) == keys
    assert json.loads(again.stdout.strip().splitlines()[-1])["spearman"] == out["spearman"]


def summary_setup(results: Path):
    """The script, its --summary argv on smoke's tiny space (4 archs) with ``results``, parsed args, settings."""
    bench = load_script()
    argv = ["--experiment", "smoke", "--archs", "4", "--references", "", "--zero-cost", "none", "--summary",
            "--results", str(results), "--bootstrap", "50"]
    args = bench.parse_args(argv)
    return bench, argv, args, bench.settings(args)


def test_summary_judges_every_proxy_on_the_same_architectures(tmp_path, capsys):
    from nas.fidelity import setting_key

    bench, argv, args, s = summary_setup(tmp_path)
    archs = s["archs"]
    _, reference, _ = bench.make_jobs(args, s)
    fast = s["proxy_trainer"]
    slow = dict(fast, lr=fast["lr"] / 2)
    store = ResultStore(tmp_path)

    def put(job, top1, trainer, wall):
        store.append({**record(job, top1, wall=wall), "trainer": trainer, "dataset": job.dataset, "threads": 1,
                      "device": "cpu", "setting": setting_key(trainer, job.dataset)})

    for job in reference:
        put(job, 0.5 + 0.1 * archs.index(job.arch), s["reference_trainer"], 100.0)
    for seed in (0, 1):
        for i, arch in enumerate(archs):  # `fast` ranks as the reference on all four archs
            put(Job("proxy", arch, seed, s["proxy_dataset"], trainer=fast), 0.4 + 0.1 * i, fast, 2.0)
        for i, arch in enumerate(archs[:3]):  # `slow` reverses it, and has not finished the fourth arch yet
            put(Job("proxy", arch, seed, s["proxy_dataset"], trainer=slow), 0.9 - 0.1 * i, slow, 3.0)
        for arch in archs:  # a baseline measured for its cost only: not a row of the table
            put(Job("baseline", arch, seed, dict(s["proxy_dataset"], val_per_class=3), trainer=fast), 0.5, fast, 1.0)
    store.close()
    capsys.readouterr()
    assert bench.main(argv + ["--json"]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    assert "3 of 4 architectures" in out
    assert [r["archs"] for r in rows] == [3, 3]  # not 4 for the finished proxy: the same three for both
    assert [r["spearman"]["value"] for r in rows] == pytest.approx([1.0, -1.0])  # sorted by cost: fast first
    assert [r["proxy_cost"]["seconds"] for r in rows] == pytest.approx([2.0, 3.0])


@needs_fmnist
@pytest.mark.slow
def test_a_baseline_is_trained_beside_the_proxy_and_its_cost_ratio_reported(tmp_path):
    env = dict(os.environ, MNAS_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    results = tmp_path / "results"
    args = [*TINY, "--results", str(results), "--json", "--zero-cost", "none", "--no-reference", "--seeds", "0",
            "--baseline", "dataset.val_per_class=5"]
    run = run_script(args, env)
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    assert sorted(r["role"] for r in records) == ["baseline"] * 3 + ["proxy"] * 3
    base = [r for r in records if r["role"] == "baseline"]
    assert {r["result"]["num_val"] for r in base} == {50} and {r["seed"] for r in base} == {0}  # 5 per class
    out = json.loads(run.stdout.strip().splitlines()[-1])
    proxy_mean = np.mean([r["wall_seconds"] for r in records if r["role"] == "proxy"])
    base_mean = np.mean([r["wall_seconds"] for r in base])
    assert out["baseline_seconds"] == pytest.approx(base_mean)
    assert out["cost_ratio"] == pytest.approx(proxy_mean / base_mean)
    assert "proxy / baseline" in run.stdout and "over the 3 children both ran" in run.stdout


def test_an_empty_summary_says_why(tmp_path, capsys):
    """No row: an empty store, a reference still being trained, or no proxy finished: each said in one line."""
    from nas.fidelity import setting_key

    bench, argv, args, s = summary_setup(tmp_path)
    _, reference, _ = bench.make_jobs(args, s)
    capsys.readouterr()
    assert bench.main(argv) == 0
    assert "nothing is stored in" in capsys.readouterr().out
    store = ResultStore(tmp_path)

    def put(job, trainer):
        top1 = 0.5 + 0.1 * s["archs"].index(job.arch)
        store.append({**record(job, top1), "trainer": trainer, "dataset": job.dataset, "threads": 1, "device": "cpu",
                      "setting": setting_key(trainer, job.dataset)})

    first_seed = [j for j in reference if j.seed == args.reference_seed_list[0]]
    for job in first_seed:  # one reference seed of two finished
        put(job, s["reference_trainer"])
    for seed in (0, 1):
        for arch in s["archs"]:
            put(Job("proxy", arch, seed, s["proxy_dataset"], trainer=s["proxy_trainer"]), s["proxy_trainer"])
    store.close()
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "has every seed (100,101) on 0 of 4 architectures and at least one on 4" in out
    assert "Spearman [95% CI]" not in out  # no empty table under the line
    seeds = ",".join(map(str, args.reference_seed_list[:1]))
    assert bench.main([*argv, "--reference-seeds", seeds]) == 0  # ranked against the finished seed
    assert "4 of 4 architectures" in capsys.readouterr().out
    lone = tmp_path / "reference-only"  # the reference finished, no proxy trained yet
    store = ResultStore(lone)
    for job in first_seed:
        put(job, s["reference_trainer"])
    store.close()
    argv[argv.index("--results") + 1] = str(lone)
    assert bench.main([*argv, "--reference-seeds", seeds]) == 0
    assert f"no proxy in {lone} has finished 3" in capsys.readouterr().out


def test_a_damaged_results_file_is_one_line(tmp_path, capsys):
    bench, argv, args, s = summary_setup(tmp_path)
    (tmp_path / "results.jsonl").write_text('{"key": "a", "result": {}}\n{"key": "x", "oops\n{"key": "b"}\n')
    before = (tmp_path / "results.jsonl").read_bytes()
    for extra in (["--summary"], []):
        run = [a for a in argv if a != "--summary"] + extra
        assert bench.main(run) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "results.jsonl:2: not a JSON line" in err, err
    assert (tmp_path / "results.jsonl").read_bytes() == before


def test_training_free_scores_are_recorded_on_the_cpu_they_ran_on(tmp_path):
    """compute_scores runs on the CPU: with --device cuda its records said cuda (and cost per child on cuda)."""
    from types import SimpleNamespace

    bench, _, args, s = summary_setup(tmp_path)
    args = SimpleNamespace(**{**vars(args), "device": "cuda", "score_list": ["synflow"]})
    proxy, reference, zero = bench.make_jobs(args, s)
    assert {j.device for j in proxy + reference} == {"cuda"} and {j.device for j in zero} == {"cpu"}


def _zero_job(arch: str = "mobilenet_v2") -> Job:
    return Job("zero_cost", arch, 0, DATA, score="naswot", batch_size=8)


@needs_fmnist
def test_a_transient_failure_is_run_again_not_reused(tmp_path):
    """A job stored as failed for a reason of the moment (out of memory beside another worker) was skipped by every
    later run: its architecture stayed failed for good, with exit 0."""
    from nas.fidelity import run_jobs

    job = _zero_job()
    store = ResultStore(tmp_path)
    store.append({**record(job, None), "result": {"status": "failed", "error": "out of memory", "transient": True}})
    summary = run_jobs([job], store, cache_dir=str(tmp_path / "cache"), progress=False)
    assert summary.stored_before == 0 and summary.ran == 1 and not summary.failed
    assert store.load()[job.key()]["result"]["naswot"] is not None
    again = run_jobs([job], store, cache_dir=str(tmp_path / "cache"), progress=False)
    assert again.stored_before == 1 and again.ran == 0
    store.close()


@needs_fmnist
@pytest.mark.slow
def test_a_worker_that_dies_stops_the_run_in_one_line_and_keeps_what_finished(tmp_path):
    """multiprocessing.Pool never reported a killed worker's task: the run waited forever, and SIGTERM then hung in
    Pool.terminate, so only SIGKILL ended it."""
    import threading

    from nas.fidelity import JobCrashed, run_jobs

    quick = _zero_job()
    slow = Job("proxy", "mobilenet_v2", 0, DATA, trainer=dict(TRAINER, max_steps=100_000, epochs=1000))
    store = ResultStore(tmp_path)

    def workers():  # the pool's live processes (not multiprocessing's resource tracker, not a dead one)
        alive = []
        for child in psutil.Process().children(recursive=True):
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    alive.append(child)
            except (psutil.ZombieProcess, psutil.NoSuchProcess):  # killed, not reaped yet: dead
                pass
        return alive

    def kill_the_worker_once_the_first_job_is_stored():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (tmp_path / "results.jsonl").exists():
            time.sleep(0.1)
        time.sleep(2.0)  # the slow job has started
        for child in workers():
            child.kill()

    killer = threading.Thread(target=kill_the_worker_once_the_first_job_is_stored, daemon=True)
    killer.start()
    start = time.monotonic()
    with pytest.raises(JobCrashed, match=r"a worker process died .* while running proxy job for mobilenet_v2"):
        run_jobs([quick, slow], store, cache_dir=str(tmp_path / "cache"), progress=False)
    assert time.monotonic() - start < 300
    killer.join(timeout=10)
    assert list(store.load()) == [quick.key()]
    assert not workers()
    store.close()


def test_a_summary_on_cuda_keeps_the_training_free_rows(tmp_path, capsys, monkeypatch):
    """The summary looked the scores up under --device (cuda) while they are stored as run, on the CPU: their rows
    vanished with --device cuda."""
    from types import SimpleNamespace

    import nas.trainer
    from nas.fidelity import dataset_key, setting_key

    monkeypatch.setattr(nas.trainer, "check_device", lambda device: None)  # a machine with a GPU
    bench, argv, _, _ = summary_setup(tmp_path)
    argv = [*argv, "--device", "cuda", "--json"]
    args = bench.parse_args(argv)
    s = bench.settings(args)
    proxy, reference, zero = bench.make_jobs(SimpleNamespace(**{**vars(args), "score_list": ["synflow"]}), s)
    store = ResultStore(tmp_path)
    for job in proxy + reference + zero:
        top1 = 0.5 + 0.1 * s["archs"].index(job.arch)
        r = {**record(job, top1), "trainer": job.trainer, "dataset": job.dataset, "threads": job.threads,
             "device": job.device, "batch_size": job.batch_size,
             "dataset_key": dataset_key(job.dataset), "setting": None}
        if job.kind == "train":
            r["setting"] = setting_key(job.trainer, job.dataset)
        else:
            r["result"] = {"synflow": top1, "seconds": 0.1, "error": None}
        store.append(r)
    store.close()
    capsys.readouterr()
    assert bench.main(argv) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert len(rows) == 2 and [r["proxy"] for r in rows if r["proxy"].startswith("synflow (training-free")], rows


def test_a_plot_that_cannot_be_written_is_refused_before_any_job(tmp_path):
    """A --plot under a file (or a folder that cannot be made) was found out only when the figure was saved, after
    every job had run: a traceback and no --json line. A --plot without an extension printed a path matplotlib
    did not write (it adds .png)."""
    bench = load_script()
    (tmp_path / "results.jsonl").write_text("")
    for plot in (tmp_path / "results.jsonl" / "fig.png", tmp_path / "results.jsonl" / "sub" / "fig", tmp_path):
        with pytest.raises(bench.BadInput, match="^--plot "):  # main: one error line, exit 2 (as every BadInput)
            bench.parse_args(["--plot", str(plot)])
    assert bench.parse_args(["--plot", str(tmp_path / "new" / "fig")]).plot == str(tmp_path / "new" / "fig.png")
    assert bench.parse_args(["--plot", "fig.svg"]).plot == "fig.svg"
    with pytest.raises(bench.BadInput, match="^--plot draws one proxy setting's figure and --summary draws none"):
        bench.parse_args(["--summary", "--plot", "fig.png"])  # --plot was ignored without a word


def test_a_one_image_batch_is_refused_only_for_naswot():
    assert load_script().parse_args(["--zero-cost", "synflow", "--zero-cost-batch", "1"]).zero_cost_batch == 1


@pytest.mark.parametrize("line, says", [
    ('{"note": "not a record"}', "results.jsonl:2: not a record"),
    ('[1, 2]', "results.jsonl:2: not a record"),
    ('{"key": "x", "result": {}}', "lacks kind, role, setting"),
])
def test_a_json_line_that_is_no_record_is_one_line_and_left_as_it_was(tmp_path, capsys, line, says):
    bench, argv, _, _ = summary_setup(tmp_path)
    (tmp_path / "results.jsonl").write_text('{"key": "a", "kind": "zero_cost", "score": "synflow", "batch_size": 2, '
                                            f'"dataset_key": "d", "dataset": {{}}, "result": {{}}}}\n{line}\n')
    before = (tmp_path / "results.jsonl").read_bytes()
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err
    assert (tmp_path / "results.jsonl").read_bytes() == before


def test_a_cache_dir_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    bench = load_script()
    with pytest.raises(bench.BadInput, match="^--cache-dir .*file is not a directory"):
        bench.parse_args(["--cache-dir", str(tmp_path / "file" / "data")])


def test_a_bad_command_line_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script().parse_args(["--archs", "abc"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "--archs" in err, err
