"""``python -m nas.train``: proxy-train one architecture (reference name or string) and print a JSON line.

The same code path as a search's children (``nas.data.load_dataset`` + ``nas.trainer.train_child``), so a user can
check what a child would score before spending a search on it. The last stdout line is the JSON result (with the
dataset description under ``dataset``); the exit status is 1 when the child failed while training (NaN loss, out of
memory). Bad input (an architecture that does not parse, an unknown or invalid config field, a bad override) is one
``error: ...`` line on stderr and exit status 2, found before any data is prepared.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mnas_common import paths


def log(message: str) -> None:
    """Plain progress lines on stderr (no bars: the output of a sweep stays readable); stdout is the JSON line."""
    print(f"[nas.train] {message}", file=sys.stderr, flush=True)


def run(cfg: DictConfig) -> dict:
    import torch

    from search_spaces import resolve_arch

    from nas.data import DatasetConfig, load_dataset
    from nas.trainer import TrainerConfig, train_child

    resolve_arch(str(cfg.arch))  # ValueError naming the architecture: bad input, not a failed child
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ValueError(f"seed must be an integer, got {cfg.seed!r}")
    if cfg.threads is not None:
        if not isinstance(cfg.threads, int) or cfg.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {cfg.threads!r}")
        torch.set_num_threads(cfg.threads)
    fields = OmegaConf.to_container(cfg.trainer, resolve=True)
    unknown = sorted(set(fields) - set(TrainerConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown trainer field(s) {', '.join(unknown)}; "
                         f"known: {', '.join(TrainerConfig.__dataclass_fields__)}")
    trainer = TrainerConfig(**fields)
    dataset = DatasetConfig.from_config(cfg.dataset)  # validated before the (possibly long) preparation
    data = load_dataset(dataset, cache_dir=cfg.cache_dir)
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
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(out, indent=1) + "\n")
    return out


@hydra.main(version_base=None, config_path=str(paths.config_dir()), config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        out = run(cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(out), flush=True)
    if out["status"] != "ok":
        sys.exit(1)


def check_overrides(argv: list[str]) -> str | None:
    """Compose the config with the command-line overrides first: Hydra would report a bad override (a field that
    does not exist, a config group option that is missing) as a multi-line traceback hint with exit status 1."""
    from hydra import compose, initialize_config_dir

    if any(a.startswith("-") for a in argv):  # --help, --cfg, -m: Hydra's own flags, left to Hydra
        return None
    overrides = [a for a in argv if not a.lstrip("+~").startswith("hydra")]
    config_dir = str(paths.config_dir())
    try:
        with initialize_config_dir(version_base=None, config_dir=config_dir):
            compose(config_name="train", overrides=overrides)
    except Exception as exc:
        return " ".join(str(exc).split())
    return None


if __name__ == "__main__":
    problem = check_overrides(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
