"""``python -m nas.train``: proxy-train one architecture (reference name or string) and print a JSON line.

The same code path as a search's children (``nas.data.load_dataset`` + ``nas.trainer.train_child``), so a user can
check what a child would score before spending a search on it. The last stdout line is the JSON result (with the
dataset description under ``dataset``); the exit status is 1 when the child failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf


def run(cfg: DictConfig) -> dict:
    import torch

    from nas.data import load_dataset
    from nas.trainer import TrainerConfig, train_child

    if cfg.threads is not None:
        if not isinstance(cfg.threads, int) or cfg.threads < 1:
            raise ValueError(f"threads must be a positive integer, got {cfg.threads!r}")
        torch.set_num_threads(cfg.threads)
    trainer = TrainerConfig(**OmegaConf.to_container(cfg.trainer, resolve=True))
    data = load_dataset(cfg.dataset, cache_dir=cfg.cache_dir)
    result = train_child(str(cfg.arch), data, trainer, seed=int(cfg.seed), device=cfg.device)
    out = {"arch": str(cfg.arch), "seed": int(cfg.seed), "threads": cfg.threads, **result.to_dict(),
           "dataset": data.describe()}
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(out, indent=1) + "\n")
    return out


@hydra.main(version_base=None, config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        out = run(cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(out), flush=True)
    if out["status"] != "ok":
        sys.exit(1)


if __name__ == "__main__":
    main()
