"""Proxy-fidelity benchmark: how well does the search's proxy rank architectures against a longer training?

N architectures (drawn with ``--arch-seed`` from the experiment's search space, plus the reference architectures)
are trained with the proxy (the ``trainer`` + ``dataset`` config of an experiment, quickstart by default, with any
Hydra overrides given as arguments) and with a reference training (``configs/trainer/reference.yaml`` on every
training image that is not held out), each on several seeds, with the real ``nas.trainer.train_child`` on
``nas.data.load_dataset``. Both are evaluated on the same held-out images (checked), which neither trains on.
Printed: Spearman and Kendall between proxy and reference (bootstrap 95% intervals over architectures), the
proxy's seed-to-seed Spearman (its noise ceiling) and the reference's, top-k overlap, the cost per child, and the
same statistics for training-free scores (``nas.zero_cost``).

Every finished job is stored at once (``--results``, JSON lines keyed by architecture, seed and every training and
dataset setting): run it again and it continues where it stopped; runs with other proxies reuse the reference.
``--baseline`` trains a second proxy (the experiment with other overrides) beside the proxy's first seed, job for
job, and prints the cost ratio of the two measured in the same sitting; the baseline is not ranked.

    python scripts/bench_proxy.py --workers 2                                 # quickstart's proxy, 24 + 3 archs
    python scripts/bench_proxy.py --workers 2 dataset.images_per_class=1000 trainer.epochs=1   # another proxy
    python scripts/bench_proxy.py --max-minutes 25 ...                        # stop starting jobs after 25 min
    python scripts/bench_proxy.py --summary                                   # every proxy in the store, one table
    python scripts/bench_proxy.py ... --baseline dataset.val_per_class=100    # cost side by side with another proxy
    python scripts/bench_proxy.py --archs 24 --json                           # last line: JSON

Exit status: 0 when every job is done, 3 when it stopped early (deadline, --max-jobs; rerun to continue),
130 when interrupted, 2 for bad input (one ``error: ...`` line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnas_common import paths  # noqa: E402
from mnas_common.checks import is_seed, positive_int  # noqa: E402
from mnas_common.config import to_plain  # noqa: E402
from mnas_common.errors import OneLineParser, first_line  # noqa: E402
from nas.cli import error_message  # noqa: E402

REFERENCES = "mobilenet_v2,mnasnet_a1,mnasnet_b1"
# fields that define which images are held out: the reference must share them with the proxy
SPLIT_FIELDS = ("source", "root", "classes", "seed", "val_per_class", "channels")

# what --summary reads of each stored record
SUMMARY_FIELDS = {"train": ("kind", "role", "setting", "threads", "device", "trainer", "dataset", "result"),
                  "zero_cost": ("kind", "score", "batch_size", "dataset_key", "dataset", "result")}


class BadInput(ValueError):
    pass


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values or len(set(values)) != len(values):
        raise BadInput(f"{name} must list at least one seed, each once, got {text!r}")
    for value in values:  # a negative one came back as a failed job, stored for good
        if not is_seed(value):
            raise BadInput(f"{name}: each seed must be an integer in [0, 2**64), got {value}")
    return values


def _writable_dir(flag: str, value: str, directory: Path) -> None:
    """``directory`` exists and is writable, or can be made (checked before any job runs, not found out after all
    of them)."""
    if problem := paths.directory_problem(directory):
        raise BadInput(f"{flag} {value}: {problem}")


def _plot_path(plot: str) -> str:
    """The file --plot writes: without an extension matplotlib adds its default one (fig -> fig.png), so that is the
    path checked and printed; the format must be one matplotlib writes and the folder one that can be written."""
    from matplotlib import rcParams
    from matplotlib.backend_bases import FigureCanvasBase

    if plot.endswith(("/", os.sep)) or Path(plot).is_dir():
        raise BadInput(f"--plot {plot} is a directory: name the image file (e.g. {Path(plot) / 'fidelity.png'})")
    ext = os.path.splitext(plot)[1][1:]  # as savefig reads it
    if not ext:
        ext = rcParams["savefig.format"]
        plot = f"{plot.rstrip('.')}.{ext}"
    kinds = FigureCanvasBase.get_supported_filetypes()
    if ext.lower() not in kinds:
        raise BadInput(f"--plot {plot}: matplotlib cannot write '.{ext}' files (it writes {', '.join(sorted(kinds))})")
    _writable_dir("--plot", plot, Path(plot).parent)
    if Path(plot).exists() and not os.access(plot, os.W_OK):
        raise BadInput(f"--plot {plot}: the file cannot be written")
    return plot


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = OneLineParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the proxy, e.g. trainer.epochs=1 "
                    "dataset.images_per_class=1000 (applied after the experiment)")
    ap.add_argument("--experiment", default="quickstart", help="experiment whose trainer + dataset is the proxy")
    ap.add_argument("--archs", type=int, default=24, help="architectures drawn from the search space (default 24)")
    ap.add_argument("--arch-seed", type=int, default=0, help="seed of the architecture draw")
    ap.add_argument("--references", default=REFERENCES, help="reference architectures added (comma-separated; '' none)")
    ap.add_argument("--seeds", default="0,1", help="proxy training seeds (default 0,1)")
    ap.add_argument("--reference-seeds", default="100,101",
                    help="reference training seeds (default 100,101: they rank alike at Spearman 0.91, README)")
    ap.add_argument("--reference-trainer", default="reference", help="trainer config of the reference training")
    ap.add_argument("--reference", action="append", default=[], metavar="KEY=VALUE",
                    help="override of the reference: trainer.FIELD=V or dataset.FIELD=V (repeatable); "
                         "dataset fields that choose the held-out images cannot differ from the proxy's")
    ap.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                    help="a baseline proxy to compare costs with: the experiment with this override (repeatable; "
                         "trainer.FIELD=V or dataset.FIELD=V) instead of the proxy's; trained on the same "
                         "architectures and first seed, each job beside the proxy's, and not ranked")
    ap.add_argument("--zero-cost", default="synflow,naswot", help="training-free scores ('none' to skip)")
    ap.add_argument("--zero-cost-batch", type=int, default=64, help="minibatch size of the training-free scores")
    ap.add_argument("--no-reference", action="store_true",
                    help="train no reference jobs (proxy cost and noise only; correlations use what is stored)")
    ap.add_argument("--workers", type=int, default=1, help="jobs in parallel (processes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per job (cost is reported per child)")
    ap.add_argument("--device", default="cpu", help="device of every training job (cpu; cuda where there is one); "
                    "training-free scores are computed on the CPU")
    ap.add_argument("--results", default="runs/bench_proxy", help="results directory (shared by all proxies)")
    ap.add_argument("--cache-dir", default=None, help="prepared datasets (default $MNAS_CACHE_DIR/data)")
    ap.add_argument("--max-minutes", type=float, default=None, help="start no new job after this many minutes")
    ap.add_argument("--max-jobs", type=int, default=None, help="start at most this many jobs in this call")
    ap.add_argument("--top-k", type=int, default=5, help="k of the top-k overlap")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the intervals")
    ap.add_argument("--summary", action="store_true", help="train nothing: one table of every proxy in --results")
    ap.add_argument("--plot", default=None, metavar="PNG",
                    help="also draw proxy (and training-free scores) against the reference, one point per arch")
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.archs < 0:
        raise BadInput(f"--archs must be >= 0, got {args.archs}")
    for name in ("workers", "threads", "zero_cost_batch", "top_k", "bootstrap"):
        positive_int(f"--{name.replace('_', '-')}", getattr(args, name))
    if args.max_jobs is not None:
        positive_int("--max-jobs", args.max_jobs)
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise BadInput(f"--max-minutes must be > 0, got {args.max_minutes}")
    from nas.trainer import check_device

    if problem := check_device(args.device):
        raise BadInput(problem.replace("trainer.device", "--device"))
    if args.plot and args.summary:  # the figure is one proxy setting's against the reference; the summary has many
        raise BadInput("--plot draws one proxy setting's figure and --summary draws none: drop --plot, or run "
                       "without --summary (the stored jobs are not run again)")
    if args.plot:
        args.plot = _plot_path(args.plot)
    if args.cache_dir is not None:
        _writable_dir("--cache-dir", args.cache_dir, Path(args.cache_dir))
    args.seed_list = _ints(args.seeds, "--seeds")
    args.reference_seed_list = _ints(args.reference_seeds, "--reference-seeds")
    args.score_list = [] if args.zero_cost.strip() in ("", "none") else [s.strip() for s in args.zero_cost.split(",")]
    from nas.zero_cost import SCORES

    unknown = [s for s in args.score_list if s not in SCORES]
    if unknown:
        raise BadInput(f"unknown training-free score(s) {', '.join(unknown)}; known: {', '.join(SCORES)}, none")
    if "naswot" in args.score_list and args.zero_cost_batch < 2:  # every job failed, and was stored so for good
        raise BadInput(f"--zero-cost-batch must be >= 2 for naswot (it compares images), got {args.zero_cost_batch}")
    for flag, items in (("--reference", args.reference), ("--baseline", args.baseline)):
        for item in items:
            if "=" not in item or not item.split("=", 1)[0].startswith(("trainer.", "dataset.")):
                raise BadInput(f"{flag} takes trainer.FIELD=VALUE or dataset.FIELD=VALUE, got {item!r}")
    return args


def _compose(config_name: str, overrides: list[str], hydra_config: bool = False):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base=None, config_dir=str(paths.config_dir())):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=hydra_config)


def settings(args: argparse.Namespace) -> dict:
    """Compose the proxy (experiment + overrides) and the reference (its trainer; the proxy's split, all images)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from nas.components import strip_targets
    from nas.data import DatasetConfig
    from nas.trainer import TrainerConfig

    def trained(cfg) -> tuple[dict, dict]:
        """An experiment's trainer and dataset as plain fields, no _target_ (what defines a result, the store's
        keys, not which class computes it), checked."""
        trainer, dataset = dict(strip_targets(cfg.trainer), device=args.device), strip_targets(cfg.dataset)
        TrainerConfig(**trainer)
        DatasetConfig.from_config(dataset)
        return trainer, dataset

    cfg = _compose("search", [f"+experiment={args.experiment}", *args.overrides], hydra_config=True)
    choice = cfg.hydra.runtime.choices.get("dataset")
    proxy_trainer, proxy_dataset = trained(cfg)

    trainer_over = [o for o in args.reference if o.startswith("trainer.")]
    dataset_over = [o.split(".", 1)[1] for o in args.reference if o.startswith("dataset.")]
    base = _compose("train", [f"trainer={args.reference_trainer}", f"dataset={choice}", *trainer_over])
    reference_trainer = dict(strip_targets(base.trainer), device=args.device)
    reference_dataset = dict(proxy_dataset, images_per_class=None, resolution=strip_targets(base.dataset)["resolution"])
    reference_dataset = to_plain(OmegaConf.merge(OmegaConf.create(reference_dataset),
                                                 OmegaConf.from_dotlist(dataset_over)))
    changed = [f for f in SPLIT_FIELDS if reference_dataset.get(f) != proxy_dataset.get(f)]
    if changed:
        raise BadInput(f"the reference must hold out the proxy's images: dataset.{', dataset.'.join(changed)} "
                       "cannot differ from the proxy's")
    TrainerConfig(**reference_trainer)
    DatasetConfig.from_config(reference_dataset)
    baseline_trainer = baseline_dataset = None
    if args.baseline:
        baseline_trainer, baseline_dataset = trained(_compose("search", [f"+experiment={args.experiment}",
                                                                          *args.baseline]))
        from nas.fidelity import setting_key

        if setting_key(baseline_trainer, baseline_dataset) == setting_key(proxy_trainer, proxy_dataset):
            raise BadInput(f"--baseline {' '.join(args.baseline)} gives the proxy's own setting: nothing to compare")

    space = instantiate(cfg.search_space)
    archs = list(dict.fromkeys(space.sample(args.archs, seed=args.arch_seed) +
                               [r.strip() for r in args.references.split(",") if r.strip()]))
    from search_spaces import resolve_arch

    for arch in archs:
        resolve_arch(arch)
    return {"proxy_trainer": proxy_trainer, "proxy_dataset": proxy_dataset, "reference_trainer": reference_trainer,
            "reference_dataset": reference_dataset, "baseline_trainer": baseline_trainer,
            "baseline_dataset": baseline_dataset, "archs": archs, "experiment": args.experiment,
            "overrides": list(args.overrides), "baseline": list(args.baseline)}


def check_held_out(proxy_data, reference_data) -> None:
    """Same held-out images for proxy and reference (so their rankings are comparable), never trained on."""
    import numpy as np

    pv = np.load(proxy_data.path / "val_source_indices.npy")
    rv = np.load(reference_data.path / "val_source_indices.npy")
    if not np.array_equal(np.sort(pv), np.sort(rv)):
        raise BadInput("proxy and reference hold out different images (their dataset splits differ)")
    for data in (proxy_data, reference_data):
        trained = np.load(data.path / "train_source_indices.npy")
        if np.intersect1d(trained, pv).size:
            raise BadInput(f"{data.path}: training images overlap the held-out images")


def make_jobs(args, s: dict) -> tuple[list, list, list]:
    from nas.fidelity import Job

    common = dict(threads=args.threads, device=args.device)
    proxy = [Job("proxy", a, seed, s["proxy_dataset"], trainer=s["proxy_trainer"], **common)
             for seed in args.seed_list for a in s["archs"]]
    reference = [Job("reference", a, seed, s["reference_dataset"], trainer=s["reference_trainer"], **common)
                 for seed in args.reference_seed_list for a in s["archs"]]
    zero = [zero_cost_job(args, a, seed, s["proxy_dataset"], name, args.zero_cost_batch)
            for name in args.score_list for seed in args.seed_list for a in s["archs"]]
    return proxy, reference, zero


def zero_cost_job(args, arch: str, seed: int, dataset: dict, score: str, batch_size: int):
    """A training-free score's job: computed on the CPU (float64) whatever --device, and its record says so (the
    benchmark's jobs and the summary's look-ups both build it here, so their keys agree)."""
    from nas.fidelity import Job

    return Job("zero_cost", arch, seed, dataset, score=score, batch_size=batch_size, threads=args.threads,
               device="cpu")


def baseline_jobs(args, s: dict) -> list:
    """The baseline proxy's jobs: the proxy's first seed on every architecture (cost only)."""
    from nas.fidelity import Job

    if not s["baseline_trainer"]:
        return []
    return [Job("baseline", a, args.seed_list[0], s["baseline_dataset"], trainer=s["baseline_trainer"],
                threads=args.threads, device=args.device) for a in s["archs"]]


def job_order(proxy: list, baseline: list, reference: list, zero: list, first_seed: int) -> list:
    """Cheap scores, the proxy's first seed with each baseline job right beside its proxy job (the same moment of
    the machine for both), the proxy's other seeds, then the reference seed by seed (a finished seed is usable
    early)."""
    first = [j for j in proxy if j.seed == first_seed]
    base = {j.arch: j for j in baseline}
    paired = [j for p in first for j in (p, base.get(p.arch)) if j is not None]
    return zero + paired + [j for j in proxy if j.seed != first_seed] + reference


def _fmt(entry: dict | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    ci = entry.get("ci")
    return f"{entry['value']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{entry['value']:.3f}"


def report(stats: dict, s: dict, args, proxy_info: dict, reference_info: dict | None) -> None:
    from nas.fidelity import setting_label

    print(f"proxy:     {setting_label(s['proxy_trainer'], proxy_info, s['proxy_dataset'])}"
          f"  [{args.experiment}{' ' + ' '.join(args.overrides) if args.overrides else ''}]")
    print(f"reference: {setting_label(s['reference_trainer'], reference_info, s['reference_dataset'])}")
    print(f"held out:  {proxy_info['num_val']:,} images (the same for both, trained on by neither)")
    print(f"archs:     {stats['archs']} of {stats['archs_requested']} used; proxy seeds {stats['proxy_seeds']}, "
          f"reference seeds {stats['reference_seeds']}")
    if stats["failed"]:
        print(f"failed:    {', '.join(a[:40] for a in stats['failed'])}")
    if not stats["complete"]:
        print(f"incomplete: {len(stats['missing_proxy'])} archs lack a proxy result, "
              f"{len(stats['missing_reference'])} a reference result")
    pc, rc = stats["proxy_cost"], stats["reference_cost"]
    rows = [
        ("Spearman, proxy (one seed) vs reference", _fmt(stats["spearman"])),
        ("Kendall tau-b, proxy vs reference", _fmt(stats["kendall"])),
        ("Spearman, proxy mean of seeds vs reference", _fmt(stats["spearman_seed_mean"])),
        ("proxy seed-to-seed Spearman (noise ceiling)", _fmt(stats["noise_spearman"])),
        ("reference seed-to-seed Spearman", _fmt(stats["reference_noise_spearman"])),
        (f"top-{stats.get('top_k', args.top_k)} overlap", "n/a" if stats["top_k_overlap"] is None
         else f"{stats['top_k_overlap']:.2f}"),
        (f"proxy cost per child ({args.threads} thread, {args.device})", "n/a" if not pc else
         f"{pc['seconds']:.1f} s (train {pc['train_seconds']:.1f} + eval {pc['eval_seconds']:.1f}; "
         f"median {pc['seconds_median']:.1f})"),
        ("reference cost per child", "n/a" if not rc else f"{rc['seconds']:.0f} s"),
    ]
    base = stats.get("baseline")
    if args.baseline:
        bc = base["baseline"] if base else None
        rows.append((f"baseline [{' '.join(args.baseline)}] cost per child", "n/a (no child run by both yet)"
                     if not base else f"{bc['seconds']:.1f} s (train {bc['train_seconds']:.1f} + eval "
                     f"{bc['eval_seconds']:.1f}); proxy / baseline {base['ratio']:.3f} over the {base['pairs']} "
                     f"children both ran (proxy {base['proxy']['seconds']:.1f} s on them)"))
    if stats.get("proxy_top1"):
        rows.append(("top-1 proxy / reference (mean)",
                     f"{stats['proxy_top1']['mean']:.4f} / {stats['reference_top1']['mean']:.4f}"))
    for name, z in stats.get("zero_cost", {}).items():
        cost = z.get("cost", {}).get("seconds")
        overlap = f"{z['top_k_overlap']:.2f}" if "top_k_overlap" in z else "n/a"
        rows.append((f"{name}: Spearman / Kendall vs reference", f"{_fmt(z.get('spearman'))} / {_fmt(z.get('kendall'))}"))
        rows.append((f"{name}: seed-to-seed Spearman, top-k, cost", f"{_fmt(z.get('noise_spearman'))}, {overlap}, "
                     f"{'n/a' if cost is None else f'{cost:.2f} s per child'}"))
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def summary(args, s: dict, records: dict) -> list[dict]:
    """One row per proxy setting (and training-free score) stored in --results, against the current reference.

    Every row is computed on the same architectures: those that every proxy in the table has finished on every
    seed (a proxy still running would otherwise be judged on an easier or harder subset than the others).
    """
    from nas.fidelity import Job, analyse, setting_key, setting_label, succeeded

    _, reference, _ = make_jobs(args, s)
    ref_setting = setting_key(s["reference_trainer"], s["reference_dataset"])
    common = dict(threads=args.threads, device=args.device)
    candidates: list[tuple[str, dict, dict]] = []  # (label, proxy jobs by arch, extra row fields)
    groups: dict[str, dict] = {}
    for r in records.values():
        if r["kind"] == "train" and r["setting"] != ref_setting and r["role"] != "baseline" \
                and r["threads"] == args.threads and r["device"] == args.device:
            groups.setdefault(r["setting"], r)
    for setting, rec in groups.items():
        candidates.append(("train", rec, {"proxy": setting_label(rec["trainer"], None, rec["dataset"]),
                                          "setting": setting}))
    zero = {(r["score"], r["batch_size"], r["dataset_key"]): r for r in records.values() if r["kind"] == "zero_cost"}
    for (name, batch, _), rec in zero.items():  # its minibatch comes from a proxy's images: say which
        data = rec["dataset"]
        per_class = data.get("images_per_class")
        drawn = f"{per_class}/class" if per_class else "all images"
        candidates.append(("zero_cost", rec, {
            "proxy": f"{name} (training-free, batch {batch} of {drawn}, {data.get('resolution')} px)"}))

    def stats_of(kind: str, rec: dict, archs: list[str]) -> dict:
        """analyse() with the proxy's jobs, or the score's (a training-free score is ranked like a proxy)."""
        if kind == "train":
            jobs = [Job("proxy", a, seed, rec["dataset"], trainer=rec["trainer"], **common)
                    for seed in args.seed_list for a in archs]
        else:
            jobs = [zero_cost_job(args, a, seed, rec["dataset"], rec["score"], rec["batch_size"])
                    for seed in args.seed_list for a in archs]
        return analyse(records, archs, proxy=jobs, reference=reference, top_k=args.top_k, n_boot=args.bootstrap)

    usable = []
    for kind, rec, row in candidates:
        per_arch = stats_of(kind, rec, s["archs"])["per_arch"]
        done = {a for a, v in per_arch.items() if v["proxy"] is not None and v["reference"] is not None}
        if len(done) >= 3:
            usable.append((kind, rec, row, done))
    shared = [a for a in s["archs"] if all(a in done for *_, done in usable)]
    rows = []
    for kind, rec, row, _ in usable:
        stats = stats_of(kind, rec, shared)
        if stats["spearman"]["value"] is None:
            continue
        rows.append({**row, "archs": stats["archs"], "archs_requested": len(s["archs"]), **{
            k: stats[k] for k in ("spearman", "kendall", "spearman_seed_mean", "noise_spearman",
                                  "reference_noise_spearman", "top_k_overlap", "proxy_cost")}})
    rows.sort(key=lambda r: r["proxy_cost"].get("seconds", math.inf))
    if not rows:  # say why the table is empty: most often a reference still being trained
        done = [(j.arch, succeeded(records.get(j.key()))) for j in reference]
        some = {arch for arch, ok in done if ok}
        every = set(s["archs"]) - {arch for arch, ok in done if not ok}
        if not records:
            print(f"no proxy ranked yet: nothing is stored in {args.results} (run the benchmark without --summary)")
        elif len(every) < 3:
            ref_label = setting_label(s["reference_trainer"], None, s["reference_dataset"])
            seeds = ",".join(map(str, args.reference_seed_list))
            print(f"no proxy ranked yet: the reference ({ref_label}) has every seed ({seeds}) on {len(every)} of "
                  f"{len(s['archs'])} architectures and at least one on {len(some)}; a row needs 3 "
                  f"(--reference-seeds with the finished seeds ranks against those)")
        else:
            print(f"no proxy ranked yet: no proxy in {args.results} has finished 3 of these architectures on every "
                  f"seed ({','.join(map(str, args.seed_list))}) with --threads {args.threads} on {args.device} "
                  f"with scores that differ")
        return rows
    noise = rows[0]["reference_noise_spearman"]["value"]
    print(f"{len(shared)} of {len(s['archs'])} architectures (those every proxy below has finished); reference "
          f"seed-to-seed Spearman {'n/a' if noise is None else f'{noise:.3f}'}")
    print(f"{'proxy':<72} {'archs':>5} {'s/child':>8} {'Spearman [95% CI]':>20} {'Kendall [95% CI]':>20} "
          f"{'seed-seed':>9} {'top-k':>6}")
    for r in rows:
        noise = r["noise_spearman"]["value"]
        overlap = math.nan if r["top_k_overlap"] is None else r["top_k_overlap"]  # 0.0 is a value, not a gap
        print(f"{r['proxy'][:72]:<72} {r['archs']:>5} {r['proxy_cost'].get('seconds', math.nan):8.1f} "
              f"{_fmt(r['spearman']):>20} {_fmt(r['kendall']):>20} "
              f"{'n/a' if noise is None else f'{noise:.3f}':>9} {overlap:6.2f}")
    return rows


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        s = settings(args)
    except Exception as exc:  # bad flags; Hydra: a missing experiment or config group option, a bad override
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 2

    from nas.data import load_dataset
    from nas.fidelity import JobCrashed, ResultStore, StoreBusy, analyse, cost_against, dataset_key, run_jobs

    proxy, reference, zero = make_jobs(args, s)
    baseline = baseline_jobs(args, s)
    if args.summary:
        try:
            store = ResultStore(args.results, write=False)
            records = store.load()
            for key, r in records.items():  # the summary reads every record: one from elsewhere is no KeyError
                fields = SUMMARY_FIELDS["zero_cost" if r.get("kind") == "zero_cost" else "train"]
                if missing := [f for f in fields if f not in r]:
                    raise ValueError(f"{store.path}: the record {key!r} lacks {', '.join(missing)}: "
                                     "not a bench_proxy record")
        except ValueError as exc:  # a damaged results file: one line, nothing written
            print(f"error: {first_line(exc)}", file=sys.stderr)
            return 2
        rows = summary(args, s, records)
        if args.json:
            print(json.dumps({"rows": rows}))
        return 0
    try:
        store = ResultStore(args.results)
    except (ValueError, OSError, StoreBusy) as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    try:
        store.load()  # a damaged results file is refused here, in one line, before anything runs
        proxy_data = load_dataset(s["proxy_dataset"], cache_dir=args.cache_dir, progress=not args.no_progress)
        reference_data = load_dataset(s["reference_dataset"], cache_dir=args.cache_dir,
                                      progress=not args.no_progress)
        check_held_out(proxy_data, reference_data)
        baseline_data = load_dataset(s["baseline_dataset"], cache_dir=args.cache_dir, progress=not args.no_progress) \
            if baseline else None
    except (ValueError, OSError) as exc:  # a cache that cannot be read or written, too
        store.close()
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    sizes = {dataset_key(s["proxy_dataset"]): (len(proxy_data.train), len(proxy_data.val)),
             dataset_key(s["reference_dataset"]): (len(reference_data.train), len(reference_data.val))}
    if baseline_data is not None:
        sizes[dataset_key(s["baseline_dataset"])] = (len(baseline_data.train), len(baseline_data.val))
    jobs = job_order(proxy, baseline, [] if args.no_reference else reference, zero, args.seed_list[0])
    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else None
    print(f"bench_proxy: {len(s['archs'])} archs, {len(jobs)} jobs, results in {args.results}", file=sys.stderr)
    try:
        run = run_jobs(jobs, store, workers=args.workers, threads=args.threads, cache_dir=args.cache_dir,
                       deadline=deadline, max_jobs=args.max_jobs, progress=not args.no_progress,
                       work=lambda j: j.work(*sizes[dataset_key(j.dataset)]))
        records = store.load()  # the writer's copy, with this run's records: the file is read once per run
    except JobCrashed as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"bench_proxy: {run.stored_before} jobs were stored, {run.ran} ran now, {run.pending} pending",
          file=sys.stderr)
    for line in run.failed:
        print(f"bench_proxy: failed: {line}", file=sys.stderr)
    stats = analyse(records, s["archs"], proxy=proxy, reference=reference, zero_cost=zero, top_k=args.top_k,
                    n_boot=args.bootstrap)
    stats["baseline"] = cost_against(records, proxy, baseline) if baseline else None
    report(stats, s, args, {"num_train": len(proxy_data.train), "num_val": len(proxy_data.val)},
           {"num_train": len(reference_data.train), "num_val": len(reference_data.val)})
    if args.plot:
        from nas.fidelity import fidelity_figure, setting_label

        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        title = f"proxy: {setting_label(s['proxy_trainer'], None, s['proxy_dataset'])}"
        references = [r.strip() for r in args.references.split(",") if r.strip()]
        fidelity_figure(stats, references=references, title=title).savefig(args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        def value(entry):
            return entry["value"] if entry else None

        line = {"spearman": value(stats["spearman"]), "kendall": value(stats["kendall"]),
                "noise_spearman": value(stats["noise_spearman"]), "archs": stats["archs"],
                "proxy_seconds": stats["proxy_seconds"],
                "baseline_seconds": stats["baseline"]["baseline"]["seconds"] if stats["baseline"] else None,
                "cost_ratio": stats["baseline"]["ratio"] if stats["baseline"] else None,
                "complete": stats["complete"] and not run.pending,
                "interrupted": run.interrupted, "settings": s, "stats": stats}
        print(json.dumps(line))
    if run.interrupted:
        print("interrupted: every finished job is stored; run the same command again to continue", file=sys.stderr)
        return 130
    return 0 if not run.pending else 3


if __name__ == "__main__":
    sys.exit(main())
