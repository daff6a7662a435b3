"""``python -m search_spaces info ARCH`` and ``python -m search_spaces sample --n N --seed S``."""

from __future__ import annotations

import argparse
import json
import sys

from search_spaces.arch import parse_arch
from mnas_common.checks import positive_int
from mnas_common.errors import first_line
from mnas_common.paths import config_dir

from search_spaces.references import list_references, resolve_arch
from search_spaces.space import SearchSpace


def load_space(name: str = "mnasnet", overrides: list[str] | None = None) -> SearchSpace:
    """Compose ``configs/search_space/<name>.yaml`` with Hydra (so config defaults and overrides apply)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            cfg = compose(overrides=[f"+search_space={name}", *(overrides or [])])
    except HydraException as exc:
        raise ValueError(f"cannot load search space config {name!r}: {first_line(exc)}") from None
    return SearchSpace.from_config(cfg.search_space)


def _info(args: argparse.Namespace) -> dict:
    import torch

    from search_spaces import build_model
    from search_spaces.profile import count_macs, count_params

    arch = resolve_arch(args.arch)
    spec = parse_arch(arch)
    with torch.device("meta"):  # shapes only: a 100,000-channel stage costs nothing to describe
        model = build_model(args.arch, num_classes=args.classes, in_channels=args.channels, width_mult=args.width)
    macs, per_module = count_macs(model, args.resolution, args.channels)
    res = (args.resolution + 1) // 2  # after the stride-2 stem
    blocks = []
    for i, (block, stage) in enumerate(zip(spec.blocks, model.blocks)):
        res = -(-res // block.stride)  # ceil: "same" padding
        blocks.append(
            {
                "block": i + 1,
                "stage": block.to_string(),
                "type": block.block_type,
                "repeats": block.repeats,
                "kernel": block.kernel,
                "stride": block.stride,
                "expansion": block.expansion,
                "out_channels": stage[-1].out_channels,  # the built model's, after --width (the stage string's is x1)
                "se_ratio": block.se_ratio,
                "skip": block.skip,
                "out_resolution": res,
                "params": count_params(stage),
                "macs": per_module.get(f"MnasNetModel.blocks.{i}", 0),
            }
        )
    return {
        "arch": arch,
        "resolution": args.resolution,
        "in_channels": args.channels,
        "classes": args.classes,
        "width_mult": args.width,
        "params": count_params(model),
        "macs": macs,
        "blocks": blocks,
    }


def _print_info(info: dict) -> None:
    print(f"arch:   {info['arch']}")
    print(
        f"input:  {info['in_channels']}x{info['resolution']}x{info['resolution']}, {info['classes']} classes, "
        f"width x{info['width_mult']}"
    )
    print(f"params: {info['params']:,}")
    print(f"MACs:   {info['macs']:,}")
    header = f"{'blk':>3} {'stage':<34} {'out':>9} {'params':>11} {'MACs':>14}"
    print(header)
    print("-" * len(header))
    for b in info["blocks"]:
        out = f"{b['out_channels']}x{b['out_resolution']}"
        print(f"{b['block']:>3} {b['stage']:<34} {out:>9} {b['params']:>11,} {b['macs']:>14,}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search_spaces", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="params, MACs and a per-block table of an architecture")
    info.add_argument("arch", help=f"reference name ({', '.join(list_references())}) or architecture string")
    info.add_argument("--resolution", type=int, default=224)
    info.add_argument("--classes", type=int, default=1000)
    info.add_argument("--channels", type=int, default=3, help="input channels")
    info.add_argument("--width", type=float, default=1.0, help="width multiplier")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    sample = sub.add_parser("sample", help="print N architecture strings sampled uniformly from the space")
    sample.add_argument("--n", type=int, default=1)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--space", default="mnasnet", help="config name under configs/search_space")
    space = sub.add_parser("space", help="describe the configured space (choices per block, size)")
    space.add_argument("--space", default="mnasnet", help="config name under configs/search_space")
    args = parser.parse_args(argv)

    try:
        if args.command == "info":
            for name in ("resolution", "classes", "channels"):
                positive_int(f"--{name}", getattr(args, name))
            if not 0 < args.width <= 16:
                raise ValueError(f"--width must be a multiplier > 0 and <= 16, got {args.width}")
            result = _info(args)
            if args.json:
                print(json.dumps(result))
            else:
                _print_info(result)
        elif args.command == "sample":
            if args.n < 0:
                raise ValueError(f"--n must be >= 0, got {args.n}")
            if args.seed < 0:
                raise ValueError(f"--seed must be >= 0, got {args.seed}")
            for arch in load_space(args.space).sample(args.n, args.seed):
                print(arch)
        else:
            print(load_space(args.space).describe())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
