"""``python -m nas.train``: proxy-train one architecture (reference name or string) and print a JSON line.

The same code path as a search's children (``nas.data.load_dataset`` + ``nas.trainer.train_child``), so a user can
check what a child would score before spending a search on it. The last stdout line is the JSON result (with the
dataset description under ``dataset``); the exit status is 1 when the child failed while training (NaN loss, out of
memory). Bad input (an architecture that does not parse, an unknown or invalid config field, a bad override) is one
``error: ...`` line on stderr and exit status 2, found before any data is prepared; a dataset that cannot be
prepared (its cache directory unwritable, its source unreadable) is the same one line, found while preparing it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mnas_common import paths
from mnas_common.checks import positive_int, positive_number, seed
from mnas_common.errors import first_line
from nas.cli import check_command_line, fail


def log(message: str) -> None:
    """Plain progress lines on stderr (no bars: the output of a sweep stays readable); stdout is the JSON line."""
    print(f"[nas.train] {message}", file=sys.stderr, flush=True)


def check_output(output) -> Path | None:
    """The file ``output=`` names (None when unset), checked before anything is prepared or trained: a path that
    cannot be written was found only when the result was written, after minutes of training that were then lost."""
    if not output:
        return None
    path = Path(str(output)).expanduser()  # output='~/r.json' (quoted for Hydra) made a directory named ~
    if path.is_dir():
        raise ValueError(f"output={output} is a directory; give the path of a file to write the result to")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):  # opened for appending: proves it writable and leaves an existing file as it is
            pass
    except OSError as exc:
        raise ValueError(f"output={output} cannot be written: {first_line(exc)}") from None
    if not existed:
        path.unlink()  # created only to try it: no empty result file is left behind if the run fails
    return path


def run(cfg: DictConfig) -> dict:
    import torch

    from search_spaces import profile_arch, resolve_arch

    from nas.components import build
    from nas.data import cache_root, load_dataset
    from nas.evaluator import GiB
    from nas.trainer import check_device, train_child

    resolve_arch(str(cfg.arch))  # ValueError naming the architecture: bad input, not a failed child
    seed("seed", cfg.seed)  # before the data is prepared: a bad one would come back as a failed child
    threads = positive_int("threads", cfg.threads, allow_none=True)
    limit_gb = positive_number("max_memory_gb", cfg.max_memory_gb)
    trainer = build("trainer", cfg.trainer)
    dataset = build("dataset", cfg.dataset)  # validated before the (possibly long) preparation
    problem = check_device(cfg.device or trainer.device)
    if problem:
        raise ValueError(problem)
    # the size guard, on the meta device: an absurd architecture is refused before anything is allocated
    channels = dataset.channels or (1 if dataset.source == "fashion_mnist" else 3)
    classes = len(dataset.classes) if isinstance(dataset.classes, tuple) else dataset.classes or 1000  # an upper bound
    need = profile_arch(str(cfg.arch), resolution=dataset.resolution, in_channels=channels,
                        num_classes=classes).training_bytes(trainer.batch_size, 2 if trainer.optimizer == "rmsprop" else 1)
    if need > limit_gb * GiB:
        raise ValueError(f"{cfg.arch} is too large: an estimated {need / GiB:.1f} GB to train at batch "
                         f"{trainer.batch_size} exceeds max_memory_gb={limit_gb:g}")
    output = check_output(cfg.output)  # last of the checks: it may create the output's directory
    if threads:
        torch.set_num_threads(threads)
    try:
        data = load_dataset(dataset, cache_dir=cfg.cache_dir)
    except OSError as exc:  # the cache cannot be written (read-only, no permission, not a directory, disk full)
        # named here: an OSError of a failed write (ENOSPC) carries no path of its own
        raise ValueError(f"cannot prepare dataset {dataset.name} in {cache_root(cfg.cache_dir)}: "
                         f"{first_line(exc)}") from None
    if note := trainer.schedule_note(len(data.train)):
        log(f"warning: {note}")
    log(f"training {cfg.arch} on {data.name} ({len(data.train)} train / {len(data.val)} held-out images, "
        f"{data.num_classes} classes, {data.resolution} px) for {trainer.epochs} epoch(s)"
        f"{f' (at most {trainer.max_steps} steps)' if trainer.max_steps else ''}, seed {int(cfg.seed)}")
    result = train_child(str(cfg.arch), data, trainer, seed=int(cfg.seed), device=cfg.device)
    if result.status == "ok":
        top5 = "n/a" if result.top5 is None else f"{result.top5:.4f}"
        log(f"done: top1 {result.top1:.4f}, top5 {top5}, {result.steps} steps in {result.train_seconds:.1f} s "
            f"({result.images_per_second:.0f} img/s, data wait {100 * result.data_wait_fraction:.1f}%)")
    else:
        log(f"failed: {result.error}")
    out = {"arch": str(cfg.arch), "seed": int(cfg.seed), "threads": cfg.threads, **result.to_dict(),
           "dataset": data.describe()}
    if output:
        try:
            output.write_text(json.dumps(out, indent=1) + "\n")
        except OSError as exc:  # checked writable above; the disk may still fill up while training
            raise ValueError(f"output={cfg.output} cannot be written: {first_line(exc)}") from None
    return out


@hydra.main(version_base=None, config_path=str(paths.config_dir()), config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        out = run(cfg)
    except (ValueError, OSError) as exc:  # bad input, or a file the user's machine cannot read or write
        fail(first_line(exc))
    print(json.dumps(out), flush=True)
    if out["status"] != "ok":
        sys.exit(1)


if __name__ == "__main__":
    try:
        check_command_line("train", sys.argv[1:])
    except ValueError as exc:
        fail(str(exc))
    main()
