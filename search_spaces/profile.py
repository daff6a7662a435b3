"""Parameter and multiply-add counts, measured with PyTorch's own FLOP counter (not hand formulas)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, resolution: int, in_channels: int = 3) -> tuple[int, dict[str, int]]:
    """Total multiply-adds of one forward pass at batch 1, and the MACs per module path (FLOPs / 2)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with counter:
            model(torch.zeros(1, in_channels, resolution, resolution))
    finally:
        model.train(was_training)
    per_module = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops() // 2, per_module


def count_params_macs(model: nn.Module, resolution: int, in_channels: int = 3) -> tuple[int, int]:
    return count_params(model), count_macs(model, resolution, in_channels)[0]
