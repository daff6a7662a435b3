"""Proxy-trainer benchmark: builder overhead, data-wait fraction, and the cost of one proxy-trained child.

Measured side by side in one run (rounds interleave the models so a busy machine slows them alike):
1. Training throughput of our decoded ``mobilenet_v2`` / ``mnasnet_b1`` vs torchvision's ``mobilenet_v2`` /
   ``mnasnet1_0`` on the same prepared batches, batch size, thread count and optimiser. Goal: ratio >= 0.95.
2. ``data_wait_fraction`` of ``train_child`` on the prepared cache. Goal: < 0.10 of step time.
3. Wall time of ``train_child`` with the ``quick`` trainer on the default Fashion-MNIST proxy (what one child of a
   CPU search costs).

    .venv/bin/python scripts/bench_trainer.py --threads 1 --rounds 3

The output ends with one JSON line (``JSON_HELP``), with or without ``--json``: scripts read it, so it stays; the flag
is accepted as the other bench scripts' is. A dataset that cannot be loaded (more ``--images-per-class`` than the
source holds, a missing source, a cache that cannot be written) is one ``error: ...`` line and exit 2, before any
model is timed.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.data import load_dataset  # noqa: E402
from nas.trainer import BatchLoader, TrainerConfig, train_child  # noqa: E402

PAIRS = (("mobilenet_v2", "mobilenet_v2"), ("mnasnet_b1", "mnasnet1_0"))
JSON_HELP = ("the last line is JSON: threads, batch, resolution, rounds, steps, images_per_class, pairs [{ours, "
             "torchvision, ours_ips, torchvision_ips, ratio}] (img/s) and children [{arch, train_child's result}]; "
             "printed with or without --json (kept for the scripts that read it), the flag is accepted as in the "
             "other bench scripts")


def throughput(model: nn.Module, data, batch: int, steps: int, seed: int) -> float:
    """Images per second over ``steps`` SGD steps (after one warm-up step) from the prepared uint8 cache."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    loader = BatchLoader(data.train, batch, mean=data.mean, std=data.std, device=torch.device("cpu"),
                         generator=np.random.default_rng(seed), augment=False, prefetch=4, channels_last=True,
                         drop_last=True)
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 1:
            start = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 1:
            seen += len(y)
        if i == steps:
            break
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    import torchvision
    from omegaconf import OmegaConf

    from search_spaces import build_model

    from mnas_common.errors import OneLineParser, first_line  # bad command lines: one error line, exit 2
    from nas.components import strip_targets

    ap = OneLineParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--images-per-class", type=int, default=400)
    ap.add_argument("--json", action="store_true", help=JSON_HELP)
    args = ap.parse_args(argv)
    ap.require_positive(args, "threads", "rounds", "steps", "batch", "resolution", "images_per_class")
    if args.images_per_class * 10 // args.batch < args.steps + 1:  # Fashion-MNIST: 10 classes; one warm-up step
        ap.error(f"--images-per-class {args.images_per_class} gives {args.images_per_class * 10 // args.batch} "
                 f"full batches of {args.batch}; --steps {args.steps} needs {args.steps + 1}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    root = Path(__file__).resolve().parents[1] / "configs"
    # the config names its class (_target_, for Hydra): the fields alone make the TrainerConfig
    quick = TrainerConfig(**strip_targets(OmegaConf.load(root / "trainer" / "quick.yaml")))
    try:  # both datasets before any timing: a problem with either is the user's to fix, in one line
        # 3-channel copy so torchvision's models take the same input as ours
        data3 = load_dataset(dict(name="fashion_mnist", source="fashion_mnist", resolution=args.resolution,
                                  channels=3, images_per_class=args.images_per_class, val_per_class=100, seed=0),
                             progress=False)
        # the default Fashion-MNIST proxy (28px, 1 channel) for the quick-trained children
        data = load_dataset(OmegaConf.load(root / "dataset" / "fashion_mnist.yaml"), progress=False)
    except (ValueError, OSError) as exc:  # DatasetUnavailable (a ValueError): too few images per class, no source
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 2
    models = {}
    for ours, theirs in PAIRS:
        models[f"ours:{ours}"] = build_model(ours, num_classes=10, in_channels=3, dropout=0.2)
        models[f"torchvision:{theirs}"] = getattr(torchvision.models, theirs)(num_classes=10, dropout=0.2)
    for m in models.values():
        m.to(memory_format=torch.channels_last)
    speeds: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.rounds):
        for name, model in (models.items() if r % 2 == 0 else reversed(list(models.items()))):
            speeds[name].append(throughput(model, data3, args.batch, args.steps, seed=r))
    print(f"# training throughput, images/s (median of {args.rounds} interleaved rounds; batch {args.batch}, "
          f"{args.resolution}px, {args.threads} thread(s))")
    print(f"{'ours':<24}{'img/s':>9}  {'torchvision':<24}{'img/s':>9}  {'ratio':>6}  goal >= 0.95")
    report = {"threads": args.threads, "batch": args.batch, "resolution": args.resolution, "rounds": args.rounds,
              "steps": args.steps, "images_per_class": args.images_per_class, "pairs": []}
    ok = True
    for ours, theirs in PAIRS:
        a = statistics.median(speeds[f"ours:{ours}"])
        b = statistics.median(speeds[f"torchvision:{theirs}"])
        ratio = a / b
        ok &= ratio >= 0.95
        report["pairs"].append({"ours": ours, "torchvision": theirs, "ours_ips": a, "torchvision_ips": b,
                                "ratio": ratio})
        print(f"{ours:<24}{a:9.1f}  {theirs:<24}{b:9.1f}  {ratio:6.3f}  {'PASS' if ratio >= 0.95 else 'FAIL'}")

    # one proxy-trained child with the quick trainer on the default Fashion-MNIST proxy (28px, 1 channel)
    print(f"\n# train_child, trainer=quick ({quick.epochs} epochs, batch {quick.batch_size}), dataset=fashion_mnist "
          f"({len(data.train)} train / {len(data.val)} val, {data.resolution}px)")
    print(f"{'arch':<14}{'status':>7}{'top1':>7}{'train s':>9}{'eval s':>8}{'img/s':>8}{'data wait':>11}")
    report["children"] = []
    for arch in ("mobilenet_v2", "mnasnet_b1"):
        r = train_child(arch, data, quick, seed=0, device="cpu")
        ok &= r.status == "ok" and r.data_wait_fraction < 0.10
        report["children"].append({"arch": arch, **r.to_dict()})
        print(f"{arch:<14}{r.status:>7}{(r.top1 or 0):7.3f}{r.train_seconds:9.2f}{r.eval_seconds:8.2f}"
              f"{r.images_per_second:8.0f}{r.data_wait_fraction:10.2%}  {'PASS' if r.data_wait_fraction < 0.10 else 'FAIL'} (< 10%)")
    print(json.dumps(report))  # with or without --json (JSON_HELP)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
