"""``python -m nas.pareto RUN_DIR [RUN_DIR ...] [--out DIR] [--export K]``: the accuracy-latency Pareto front.

Reads run stores (a run directory, or any directory containing runs, such as a multirun sweep), keeps the
non-dominated children (maximum accuracy, minimum latency) and writes:

- ``front.csv`` / ``front.json``: the front over all given runs, with the run each child came from (label and
  directory);
- ``children.csv``: every committed child of every run (label and directory);
- ``runs.csv``: one row per run (children, failures, best reward, best accuracy, front size, hypervolume and the
  reference latency it was computed against, common to the runs of one report);
- ``pareto.png``: accuracy vs latency, every child, each run's front and the reference architectures where the
  run measured them;
- ``incumbent.png``: best reward so far against children evaluated, per configuration (median and quartiles over
  seeds when runs differ only by seed): the incumbent-over-time plot NAS comparisons report;
- ``summary.md``: the tables above in Markdown;
- with ``--export K``: ``export/`` with the top-K architectures by reward as strings, ONNX and TFLite files
  (replacing an earlier ``export/`` whole).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import psutil

from mnas_common.errors import OneLineParser, first_line
from nas.front import front_mask, hypervolume
from nas.record import ChildResult, export_fields
from nas.store import STORE_NAME, RunStore, StoreError


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories (those holding a run store) at or below the given paths, in a stable order."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise ValueError(f"no such run directory: {path}")
        if (path / STORE_NAME).exists():
            runs.append(path)
        else:
            found = sorted(p.parent for p in path.rglob(STORE_NAME))
            if not found:
                raise ValueError(f"no run store ({STORE_NAME}) at or below {path}")
            runs.extend(found)
    once: dict[Path, Path] = {}
    for run in runs:
        once.setdefault(run.resolve(), run)  # each run once, however it was named
    return list(once.values())


# Overrides that say where a run's files live, what it logs and how its work is spread, not what it searched: left
# out of its label (a lone run's plot was titled "...,latency.cache_path=/tmp/x/latency.sqlite,logger=[]").
UNLABELLED = ("run_dir", "hydra", "logger", "pareto", "latency.cache_path", "latency.cache_max_gb", "latency.workers",
              "latency.task_timeout_s", "dataset.root", "evaluator.address", "evaluator.poll_s",
              "evaluator.actor_start_s")


def _label_overrides(overrides: list[str] | None) -> list[str]:
    def key(override: str) -> str:
        return override.split("=", 1)[0].lstrip("+~")

    return [o for o in overrides or []
            if not any(key(o) == k or key(o).startswith((k + ".", k + "/")) for k in UNLABELLED)]


def _below(dirs: list[Path]) -> list[str]:
    """Each directory's path below the one they all share (that one itself by its name)."""
    dirs = [d.resolve() for d in dirs]
    base = Path(os.path.commonpath(dirs))
    return [d.relative_to(base).as_posix() if d != base else base.name for d in dirs]


def _label_runs(runs: list[dict]) -> None:
    """Label each run by its overrides, leaving out those every run shares (a sweep's common settings; a lone run
    keeps them, less its experiment), and give it a ``group``: its label without ``seed=`` (runs of one group are
    seeds of one configuration). Runs whose labels clash are told apart by their parent directory where that names
    each one once (two sweeps of one experiment: each sweep is a group of its own), else the clashing runs alone by
    their own directory (the same configuration run again beside itself: still one group)."""
    lists = [_label_overrides(run["overrides"]) for run in runs]
    shared = set.intersection(*map(set, lists))
    common = shared if len(runs) > 1 else {o for o in shared if o.startswith("+experiment")}
    items = [[o for o in overrides if o not in common] for overrides in lists]
    labels = [",".join(i) for i in items]
    groups = [",".join(o for o in i if not o.startswith("seed=")) for i in items]
    for group in sorted({g for g, label in zip(groups, labels) if labels.count(label) > 1}):
        members = [i for i, g in enumerate(groups) if g == group]
        sweeps = _below([runs[i]["dir"].parent for i in members])
        named = [",".join(filter(None, [sweep, labels[i]])) for sweep, i in zip(sweeps, members)]
        if len(set(named)) == len(named):
            for sweep, i, name in zip(sweeps, members, named):
                labels[i], groups[i] = name, ",".join(filter(None, [sweep, group]))
        else:
            repeated = [i for i in members if labels.count(labels[i]) > 1]
            for where, i in zip(_below([runs[i]["dir"] for i in repeated]), repeated):
                labels[i] = f"{labels[i]} ({where})" if labels[i] else where
    for run, label, group in zip(runs, labels, groups):
        run["label"], run["group"] = label or run["dir"].name, group or "search"


def load_runs(run_dirs: Sequence[Path]) -> tuple[list[dict], list[dict], list[Path]]:
    """The runs that read cleanly, ``{"dir", "error"}`` for each damaged one (reported, never modified): one
    damaged store in a sweep does not stop the report of the healthy runs, and the runs still starting."""
    runs, damaged, starting = [], [], []
    for run in run_dirs:
        try:
            with RunStore(run, readonly=True) as store:
                config = store.get_meta("config")
                kids = store.children(committed_only=True)
                # A sweep's job just started: nas.run writes its config and overrides together once the store exists.
                # Read now, its empty overrides and config would change the other runs' labels (nothing shared) and
                # hide their common target T. (A store the search engine wrote alone has children and no config.)
                if config is None and not kids:
                    starting.append(run)
                    continue
                config = {} if config is None else config
                overrides = store.get_meta("overrides")
                references = store.references()
                steps = store.steps()
                if not isinstance(config, dict) or not (
                        overrides is None or isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
                    raise store.damaged("meta 'config' or 'overrides' is damaged")
        except StoreError as exc:
            damaged.append({"dir": run, "error": str(exc)})
            continue
        runs.append({"dir": run, "overrides": overrides, "config": config, "children": [c.to_dict() for c in kids],
                     "measured": _measured(kids), "references": references, "steps": steps})
    if runs:
        _label_runs(runs)
    return runs, damaged, starting


def _measured(children: list[ChildResult]) -> list[dict]:
    """The points of the accuracy-latency plane (``ChildResult.measured``: the one definition, so a child with a
    latency but no accuracy is never plotted): every evaluation, as the search's own front takes them, but not a
    reused copy (it repeats an evaluation). With ``reuse_evaluations=false`` an architecture evaluated twice is two
    points (identical ones count once on a front); keeping only the first made the export's front and front_size
    differ from the search's where a second evaluation differed (GPU training)."""
    return [c.to_dict() for c in children if c.measured and not c.reused]


def _axes():
    """A new figure and axes in the size every plot of the export uses (headless backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5), dpi=110)


# Characters per line of a plot's title and legend entries: a run's label (its overrides, joined by commas) has no
# bound, and one line of it was cropped at the figure's edge. 60 title and 40 legend characters fit the 7-inch figure
# (the legend in about half the axes).
TITLE_WIDTH, LEGEND_WIDTH = 60, 40


def _wrap(text: str, width: int) -> str:
    """``text`` on lines of at most ``width`` characters, broken after a comma or a space (a label's overrides are
    joined by commas, without spaces), within a word only where one alone is longer than a line."""
    lines = [""]
    for piece in re.split(r"(?<=[, ])", text):  # each piece ends with its comma or space
        if lines[-1] and len(lines[-1]) + len(piece.rstrip()) > width:
            lines.append("")
        while len(piece.rstrip()) > width:  # on a line of its own (the one above was just ended)
            lines[-1] = piece[:width]
            lines.append("")
            piece = piece[width:]
        lines[-1] += piece
    return "\n".join(line.rstrip() for line in lines)


def _finish(fig, ax, xlabel: str, ylabel: str, title: str):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_wrap(title, TITLE_WIDTH))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if labels:
        ax.legend(handles, [_wrap(label, LEGEND_WIDTH) for label in labels], fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


_REF_MARKERS = ["*", "P", "X", "D", "^", "v", "s", "h"]


def scatter_figure(points: list[dict], *, title: str = "", runs: list[dict] | None = None, references: dict | None = None,
                   target_ms: float | None = None):
    """Matplotlib figure of accuracy vs latency: children, the front as a step line, references, the target T."""
    import matplotlib.pyplot as plt

    fig, ax = _axes()
    groups = runs or [{"label": None, "points": points}]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, group in enumerate(groups):
        pts = group["points"]
        if not pts:
            continue
        color = colors[i % len(colors)]
        lat = np.array([p["latency_ms"] for p in pts])
        acc = np.array([p["top1"] for p in pts]) * 100
        ax.scatter(lat, acc, s=14, alpha=0.45, color=color, label=group["label"])
        mask = front_mask(acc, lat)
        order = np.argsort(lat[mask])
        ax.step(lat[mask][order], acc[mask][order], where="post", color=color, linewidth=1.6)
        ax.scatter(lat[mask], acc[mask], s=34, color=color, edgecolor="black", linewidth=0.6, zorder=3)
    measured = [(n, r) for n, r in sorted((references or {}).items())
                if r.get("status") == "ok" and r.get("latency_ms") is not None and r.get("top1") is not None]
    for i, (name, ref) in enumerate(measured):
        ax.scatter([ref["latency_ms"]], [ref["top1"] * 100], marker=_REF_MARKERS[i % len(_REF_MARKERS)], s=90,
                   color="black", edgecolor="white", linewidth=0.5, zorder=4, label=f"{name} (reference)")
    if target_ms:
        ax.axvline(target_ms, color="grey", linestyle="--", linewidth=1, label=f"target T = {target_ms:g} ms")
    return _finish(fig, ax, "latency (ms, TFLite)", "proxy top-1 (%)", title)


def incumbent_curves(runs: list[dict]) -> dict[str, list[np.ndarray]]:
    """Best reward so far after each evaluated child (in sampling order), by group (a configuration's seeds
    together): element k is the best after k + 1 evaluations. A ``reused`` copy is left out, as from the engine's
    ``children/evaluated``: it cost no evaluation and repeats an earlier result, so it neither advances the count
    nor changes the best. (With reuse on, a run commits more children than it evaluates: counted per child, the
    curve of a controller that resamples a lot looked cheaper than it was.)"""
    groups: dict[str, list[np.ndarray]] = {}
    for run in runs:
        rewards = [c["reward"] for c in sorted(run["children"], key=lambda c: (c["step"], c["idx"]))
                   if c["reward"] is not None and not c["reused"]]
        if not rewards:
            continue
        curve = np.maximum.accumulate(np.asarray(rewards, dtype=float))
        groups.setdefault(run["group"], []).append(curve)
    return groups


def incumbent_figure(runs: list[dict], *, title: str = ""):
    """Best reward so far vs children evaluated (reused copies not counted); median with a quartile band where a
    label has several seeds."""
    fig, ax = _axes()
    for label, curves in sorted(incumbent_curves(runs).items()):
        # the evaluations every seed reached: seeds of one budget evaluate fewer children the more they reuse
        n = min(len(c) for c in curves)
        stack = np.stack([c[:n] for c in curves])
        x = np.arange(1, n + 1)
        median = np.median(stack, axis=0)
        line, = ax.plot(x, median, linewidth=1.6, label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        if len(curves) > 1:
            lo, hi = np.percentile(stack, [25, 75], axis=0)
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    return _finish(fig, ax, "children evaluated", "best reward so far", title)


def _flat(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """CSV rows: the run's label and directory, the record's export fields, with each training-free score as its own
    ``score_<name>`` column."""
    names = sorted({name for row in rows for name in (row.get("scores") or {})})
    fields = ["run", "dir", *[f for f in export_fields() if f != "scores"], *[f"score_{n}" for n in names]]
    flat = [{**row, **{f"score_{n}": (row.get("scores") or {}).get(n) for n in names}} for row in rows]
    return flat, fields


def _write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    if fields is None:
        rows, fields = _flat(rows)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _shared_target(runs: list[dict]) -> float | None:
    """The latency target T when every run used the same one and a reward that has one."""
    targets = set()
    for run in runs:
        reward = (run["config"] or {}).get("reward") or {}
        target = reward.get("target_ms") if isinstance(reward, dict) else None
        targets.add(float(target) if isinstance(target, (int, float)) else None)
    return targets.pop() if len(targets) == 1 else None


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def export_runs(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    export_top: int = 0,
    title: str | None = None,
) -> dict:
    """Write the front, tables, plot and summary for the runs at or below ``paths``; return the summary.

    Damaged run stores are listed (``runs.csv``, ``summary.md``, the returned ``damaged``) and left out; only when
    no run can be read is it an error."""
    runs, damaged, starting = load_runs(find_runs(paths))
    if not runs:
        raise ValueError("; ".join([d["error"] for d in damaged]
                                   + [f"no run to report: {d} is starting, no children yet" for d in starting]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    all_children, all_points = [], []
    for run in runs:
        where = {"run": run["label"], "dir": str(run["dir"])}
        all_children += [{**where, **c} for c in run["children"]]
        run["points"] = [{**where, **c} for c in run["measured"]]
        all_points.extend(run["points"])
    # The hypervolume's reference point: top-1 0 and 1.1 x the slowest child measured in *these* runs, so one run's
    # hypervolume differs between its own report and a sweep's. Written beside every hypervolume (runs.csv,
    # summary.md): numbers from two reports compare only where the reference is the same.
    lat_ref = max((p["latency_ms"] for p in all_points), default=1.0) * 1.1

    rows = []
    for run in runs:
        pts = run["points"]
        rewards = [c["reward"] for c in run["children"] if c["reward"] is not None]
        acc = [p["top1"] for p in pts]
        lat = [p["latency_ms"] for p in pts]
        rows.append(
            {
                "run": run["label"],
                "dir": str(run["dir"]),
                "children": len(run["children"]),
                "failed": sum(c["status"] != "ok" for c in run["children"]),
                "unique": len({c["arch"] for c in run["children"]}),
                "best_reward": max(rewards, default=None),
                "best_top1": max((c["top1"] for c in run["children"] if c["status"] == "ok" and c["top1"] is not None),
                                 default=None),  # latency or not
                "min_latency_ms": min(lat, default=None),
                "front_size": int(front_mask(acc, lat).sum()) if pts else 0,
                "hypervolume": hypervolume(acc, lat, lat_ref) if pts else 0.0,
                "hv_latency_ref_ms": lat_ref if all_points else None,  # no point measured: no reference
            }
        )

    mask = front_mask([p["top1"] for p in all_points], [p["latency_ms"] for p in all_points]) if all_points else []
    front = sorted((p for p, m in zip(all_points, mask) if m), key=lambda p: p["latency_ms"])
    front_rows = [{k: p.get(k) for k in ["run", "dir", *export_fields()]} for p in front]
    rows += [{"run": f"damaged: {d['dir']}", "dir": str(d["dir"]), "error": d["error"]} for d in damaged]

    _write_csv(out / "front.csv", front_rows)
    (out / "front.json").write_text(json.dumps(front_rows, indent=2))
    _write_csv(out / "children.csv", all_children)
    # the reference last, after error: the columns before it keep their places
    fields = [f for f in rows[0] if f != "hv_latency_ref_ms"]
    _write_csv(out / "runs.csv", rows, [*fields, "error", "hv_latency_ref_ms"])

    references = {}
    for run in runs:
        for name, ref in run["references"].items():
            references.setdefault(name, ref)
    title = title or (runs[0]["label"] if len(runs) == 1 else f"{len(runs)} runs")
    fig = scatter_figure(
        all_points,
        title=title,
        runs=runs if len(runs) > 1 else None,
        references=references,
        target_ms=_shared_target(runs),
    )
    fig.savefig(out / "pareto.png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    fig = incumbent_figure(runs, title=title)
    fig.savefig(out / "incumbent.png")
    plt.close(fig)

    # The summary goes with the tables before the export (minutes of conversion, which may fail), then again with
    # the export: summary.md never describes an earlier report.
    # an export/ already there is an earlier report's: kept (a user's export is not removed), and said so
    _write_summary(out / "summary.md", rows, front_rows, references, [], starting,
                   earlier_export=(out / "export").is_dir())
    exported = []
    if export_top > 0:
        exported = _export_top(runs, out / "export", export_top)
        _write_summary(out / "summary.md", rows, front_rows, references, exported, starting)
    return {"runs": rows, "front": front_rows, "exported": exported, "damaged": damaged, "starting": starting,
            "out": str(out)}


def _write_summary(path: Path, rows, front_rows, references, exported, starting, earlier_export=False) -> None:
    lines = ["# Pareto summary", ""]
    lines += ["| run | children | failed | unique | best reward | best top-1 | min latency (ms) | front | hypervolume |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    damaged = [r for r in rows if "error" in r]
    for r in rows:
        if "error" in r:
            continue
        lines.append(
            f"| {r['run']} | {r['children']} | {r['failed']} | {r['unique']} | {_fmt(r['best_reward'], '.4f')} | "
            f"{_fmt(r['best_top1'], '.4f')} | {_fmt(r['min_latency_ms'], '.2f')} | {r['front_size']} | "
            f"{_fmt(r['hypervolume'], '.3f')} |"
        )
    ref = rows[0]["hv_latency_ref_ms"]  # one for every run of the report (the first row is a run, never a damaged one)
    if ref is not None:
        lines += ["", f"Hypervolume: the area each run's front dominates above top-1 0 and below latency "
                  f"{ref:.4g} ms (1.1 x the slowest child measured in this report's runs; `hv_latency_ref_ms` "
                  "in runs.csv). Hypervolumes from two reports compare only where this reference is the same."]
    if damaged:
        lines += ["", "## Damaged run stores (left out, not modified)", ""]
        lines += [f"- `{r['dir']}`: {r['error']}" for r in damaged]
    if starting:
        lines += ["", "## Runs still starting (left out)", ""]
        lines += [f"- `{d}`: starting, no children yet" for d in starting]
    lines += ["", "## Front (all runs)", "",
              "| latency (ms) | latency | predicted (ms) | top-1 | MACs (M) | params (M) | run | architecture |",
              "|---:|---|---:|---:|---:|---:|---|---|"]
    for p in front_rows:
        macs = p["macs"] / 1e6 if p["macs"] else None
        params = p["params"] / 1e6 if p["params"] else None
        lines.append(
            f"| {_fmt(p['latency_ms'], '.2f')} | {p.get('latency_source') or 'measured'} | "
            f"{_fmt(p.get('latency_predicted_ms'), '.2f')} | {_fmt(p['top1'], '.4f')} | "
            f"{_fmt(macs, '.1f')} | {_fmt(params, '.2f')} | {p['run']} | `{p['arch']}` |"
        )
    if references:
        lines += ["", "## Reference architectures (same proxy training and latency setup)", "",
                  "| name | latency (ms) | top-1 |", "|---|---:|---:|"]
        for name, ref in sorted(references.items()):
            lines.append(f"| {name} | {_fmt(ref.get('latency_ms'), '.2f')} | {_fmt(ref.get('top1'), '.4f')} |")
    if exported:
        lines += ["", "## Exported", ""]
        lines += [f"- `{e['arch']}`: " + (f"not exported: {e['error']}" if "error" in e else e["tflite"])
                  for e in exported]
    elif earlier_export:
        lines += ["", "## Exported", "", "`export/` is an earlier report's, not made from these runs now "
                  "(`python -m nas.pareto ... --export K` makes it again)."]
    lines += ["", "![accuracy vs latency](pareto.png)", "", "![best reward so far](incumbent.png)", ""]
    path.write_text("\n".join(lines))


def _export_top(runs: list[dict], out: Path, k: int) -> list[dict]:
    """Top-K children by reward: architecture strings plus ONNX and TFLite files converted as the run did. A model
    that cannot be exported (its conversion fails or mismatches PyTorch, as a ``latency.mode=predict`` run's children
    were never converted) keeps its rank with an ``error`` instead of files; the others are exported.

    Every successful child is ranked, with a latency or not: an accuracy-only search (``measure_latency=false``)
    has a reward and no latency, and converting needs none."""
    from nas.components import build

    ranked = sorted(
        ((c["reward"], c["arch"], run) for run in runs for c in run["children"]
         if c["status"] == "ok" and c["reward"] is not None),
        key=lambda t: -t[0],
    )
    chosen, seen = [], set()
    for reward, arch, run in ranked:
        if arch not in seen:
            seen.add(arch)
            chosen.append((reward, arch, run))
        if len(chosen) == k:
            break
    # Written beside ``out`` and swapped in at the end: ``out`` then holds this export alone (no top3 left from an
    # earlier --export 3), and an export that fails leaves the previous one as it was.
    new = out.with_name(f".{out.name}.{os.getpid()}.new")
    _remove_abandoned(out)
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    exported = []
    services: dict[str, object] = {}
    try:
        with ExitStack() as stack:  # every service closed (its workers stopped) before the swap
            for rank, (reward, arch, run) in enumerate(chosen, start=1):
                config = run["config"]
                key = json.dumps(config.get("latency"), sort_keys=True)
                entry = {"rank": rank, "reward": reward, "arch": arch, "run": run["label"], "dir": str(run["dir"])}
                try:
                    if key not in services:
                        services[key] = stack.enter_context(
                            build("latency", {**config.get("latency", {}), "work_dir": str(new / "work")}))
                    deploy = config["deploy"]
                    files = services[key].export(
                        arch,
                        new / f"top{rank}",
                        resolution=deploy["resolution"],
                        channels=deploy["channels"],
                        num_classes=deploy["num_classes"],
                    )
                except (RuntimeError, ValueError) as exc:  # this model only (an OSError writing the export is not)
                    # the service's "cannot export <arch>: " would name the architecture a second time
                    exported.append({**entry, "error": first_line(exc).removeprefix(f"cannot export {arch}: ")})
                    continue
                final = {f: str(out / f"top{rank}" / Path(files[f]).name) for f in ("onnx", "tflite")}  # once swapped
                exported.append({**entry, **files, **final})  # max_abs_err stays a number
        shutil.rmtree(new / "work", ignore_errors=True)  # the workers' logs and calibration data: not the export
        (new / "architectures.txt").write_text("".join(e["arch"] + "\n" for e in exported if "error" not in e))
        (new / "architectures.json").write_text(json.dumps(exported, indent=2))
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)
    return exported


def export_failures(exported: list[dict]) -> list[str]:
    """One line per model of ``exported`` (``export_runs``'s ``summary["exported"]``) that could not be exported:
    ``top{rank} {arch} not exported: {reason}``; said by this command and by a search's own export."""
    return [f"top{e['rank']} {e['arch']} not exported: {e['error']}" for e in exported if "error" in e]


def _remove_abandoned(out: Path) -> None:
    """The temporary directories beside ``out`` of an export killed before its swap (``.export.<pid>.new`` or
    ``.old``), whose process is gone: nothing else removes them."""
    for path in out.parent.glob(f".{out.name}.*.*"):
        pid, _, suffix = path.name[len(out.name) + 2:].partition(".")
        if suffix in ("new", "old") and pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m nas.pareto", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories, or directories containing runs (sweeps)")
    parser.add_argument("--out", default=None, help="output directory (default: <first run>/pareto)")
    parser.add_argument("--export", type=int, default=0, metavar="K", help="also export the top-K as ONNX/TFLite")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    if args.export < 0:
        print(f"error: --export must be >= 0, got {args.export}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(args.runs[0]) / "pareto"
    try:
        summary = export_runs(args.runs, out, export_top=args.export, title=args.title)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write the export to {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for d in summary["damaged"]:
        print(f"warning: left out a damaged run: {d['error']}", file=sys.stderr)
    for d in summary["starting"]:
        print(f"note: left out {d}: starting, no children yet", file=sys.stderr)
    for line in export_failures(summary["exported"]):
        print(f"warning: {line}", file=sys.stderr)
    print((out / "summary.md").read_text())
    models = sum("error" not in e for e in summary["exported"])
    print(f"wrote {out}/front.csv, front.json, children.csv, runs.csv, pareto.png, incumbent.png, summary.md"
          + (f" and {models} exported models" if models else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
