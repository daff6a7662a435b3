"""``python -m nas.data prepare dataset=NAME [dataset.root=...] [dataset.images_per_class=...]``

Builds the prepared uint8 cache of a dataset config once (progress bar; resumable: an interrupted run continues
where it stopped) and prints its size and time. ``python -m nas.data info dataset=NAME`` prints the description of a
prepared dataset (builds nothing, changes nothing: a damaged one is named, for ``prepare`` to rebuild).
Arguments are Hydra-style overrides of ``configs/train.yaml`` (only ``dataset`` and ``cache_dir`` are used).
"""

from __future__ import annotations

import json
import sys
import time

from mnas_common import paths

USAGE = "usage: python -m nas.data {prepare,info} [dataset=NAME] [dataset.FIELD=VALUE ...] [cache_dir=DIR]"


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    config_dir = str(paths.config_dir())
    with initialize_config_dir(version_base=None, config_dir=config_dir):
        return compose(config_name="train", overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    from nas.cli import error_message, tilde_hint
    from nas.data import DamagedDataset, DatasetConfig, DatasetUnavailable, cache_root, check_dataset, load_dataset, \
        open_prepared, prepare

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{USAGE}\n\n{__doc__.strip()}")
        return 0
    if not argv or argv[0] not in ("prepare", "info"):  # one error line, as every other command's
        what = f"unknown command {argv[0]!r}" if argv else "no command"
        print(f"error: {what}: prepare or info ({USAGE})", file=sys.stderr)
        return 2
    command, overrides = argv[0], argv[1:]
    try:
        cfg = _compose(overrides)
        dataset = DatasetConfig.from_config(cfg.dataset)
        start = time.perf_counter()
        if command == "info":  # opened as it is: load_dataset would rebuild a damaged one (minutes for ImageNet)
            path = cache_root(cfg.cache_dir) / dataset.key()
            if not (path / "meta.json").exists():
                raise FileNotFoundError(f"dataset {dataset.name!r} is not prepared yet: run python -m nas.data prepare")
            changed = check_dataset(dataset, cfg.cache_dir)  # its source changed since: as prepare refuses it
            if changed:
                raise DatasetUnavailable(changed)
            try:
                data = open_prepared(path)
            except DamagedDataset as exc:
                raise DamagedDataset(f"{exc}; run python -m nas.data prepare with the same arguments to rebuild "
                                     "it") from None
        else:
            path = prepare(dataset, cfg.cache_dir)
            data = load_dataset(dataset, cfg.cache_dir, progress=False, source_checked=True)  # prepare() checked it
        seconds = time.perf_counter() - start
    except Exception as exc:  # bad overrides, missing folders, unknown classes: one readable line
        message = error_message(exc)  # Hydra's messages span lines: keep the error to one line
        print(f"error: {message}{tilde_hint(message, overrides)}", file=sys.stderr)
        return 2
    info = data.describe()
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    info.update(cache_bytes=size, seconds_this_call=round(seconds, 3))
    if command == "prepare":
        print(f"prepared {dataset.name}: {info['num_train']} train + {info['num_val']} val images at "
              f"{info['resolution']} px, {size / 2**20:.1f} MiB in {path} "
              f"(built in {info['prepare_seconds']:.1f} s; this call {seconds:.1f} s)", file=sys.stderr)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
