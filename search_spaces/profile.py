"""Parameter and multiply-add counts and the memory an architecture needs, all without allocating it.

Two ways that agree exactly (tested over hundreds of random architectures and the references):

- ``count_params_macs(model, ...)``: PyTorch's own FLOP counter on a built model; build it under
  ``torch.device("meta")`` and nothing is allocated. The oracle, and the per-module breakdown of
  ``python -m search_spaces info``; about 0.1-0.2 s per network.
- ``layer_profile(arch, ...)``: the same numbers from the network's layer list (``search_spaces.layers``) in closed
  form, in microseconds. The search profiles every child with it: at 8,000 children the FLOP counter would cost
  the driver half an hour.

A 100,000-channel stage (15 GB of weights) is profiled without building it, which is what lets the search refuse
oversized children by their estimate instead of being killed for memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

BYTES_PER_FLOAT = 4


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def count_macs(model: nn.Module, resolution: int, in_channels: int = 3) -> tuple[int, dict[str, int]]:
    """Total multiply-adds of one forward pass at batch 1, and the MACs per module path (FLOPs / 2).

    The input lives on the model's device, so a model built under ``torch.device("meta")`` is counted without memory.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with counter:
            model(torch.zeros(1, in_channels, resolution, resolution, device=_device_of(model)))
    finally:
        model.train(was_training)
    per_module = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops() // 2, per_module


def count_params_macs(model: nn.Module, resolution: int, in_channels: int = 3) -> tuple[int, int]:
    return count_params(model), count_macs(model, resolution, in_channels)[0]


@dataclass(frozen=True)
class Profile:
    """What an architecture costs at one input size: exact counts and memory estimates in bytes."""

    params: int
    macs: int
    activations: int  # elements written by the leaf modules in one forward pass at batch 1

    def training_bytes(self, batch_size: int, optimizer_slots: int = 1) -> int:
        """Weights, gradients and optimizer slots (momentum; RMSProp keeps 2) plus the activations kept for the
        backward pass of one batch. An estimate meant to refuse what cannot fit, not to size allocations."""
        weights = self.params * BYTES_PER_FLOAT * (2 + optimizer_slots)
        return weights + self.activations * batch_size * BYTES_PER_FLOAT

    def inference_bytes(self) -> int:
        """Weights plus the activations of one batch-1 forward pass (conversion and the conversion check)."""
        return (self.params + self.activations) * BYTES_PER_FLOAT


def _conv(cin: int, cout: int, kernel: int, out: int, groups: int = 1, bias: bool = False) -> tuple[int, int]:
    """(params, MACs) of a conv layer producing ``cout`` x ``out`` x ``out``."""
    per_output = cin // groups * kernel * kernel
    return cout * per_output + (cout if bias else 0), out * out * cout * per_output


def layer_costs(layer) -> tuple[int, int, int]:
    """(params, MACs, activation elements) of one ``LayerSpec``, exactly as the builder's modules compute them."""
    from search_spaces.layers import HEAD_CHANNELS

    params = macs = acts = 0

    def conv_bn_act(cin: int, cout: int, kernel: int, size: int, stride: int = 1, groups: int = 1,
                    act: bool = True) -> int:
        nonlocal params, macs, acts
        out = (size - 1) // stride + 1
        p, m = _conv(cin, cout, kernel, out, groups)
        params, macs, acts = params + p + 2 * cout, macs + m, acts + (3 if act else 2) * cout * out * out
        return out

    def squeeze_excite(channels: int, reduced: int) -> None:  # pool, reduce, act, expand, gate
        nonlocal params, macs, acts
        for cin, cout in ((channels, reduced), (reduced, channels)):
            p, m = _conv(cin, cout, 1, 1, bias=True)
            params, macs = params + p, macs + m
        acts += 3 * channels + 2 * reduced

    if layer.kind == "stem":
        conv_bn_act(layer.cin, layer.cout, layer.kernel, layer.size, layer.stride)
    elif layer.kind == "head":
        conv_bn_act(layer.cin, HEAD_CHANNELS, 1, layer.size)
        params += HEAD_CHANNELS * layer.cout + layer.cout
        macs += HEAD_CHANNELS * layer.cout
        acts += 2 * HEAD_CHANNELS + layer.cout  # pool, dropout, classifier
    else:
        size, cin, cout, k, s = layer.size, layer.cin, layer.cout, layer.kernel, layer.stride
        out = (size - 1) // s + 1
        if layer.block_type == "cn":
            conv_bn_act(cin, cout, k, size, s)
            if layer.se:
                squeeze_excite(cout, layer.se)
        elif layer.block_type == "ds":
            conv_bn_act(cin, cin, k, size, s, groups=cin)
            if layer.se:
                squeeze_excite(cin, layer.se)
            conv_bn_act(cin, cout, 1, out, act=False)
        else:
            mid = cin * layer.expansion
            if layer.expansion != 1:
                conv_bn_act(cin, mid, 1, size)
            conv_bn_act(mid, mid, k, size, s, groups=mid)
            if layer.se:
                squeeze_excite(mid, layer.se)
            conv_bn_act(mid, cout, 1, out, act=False)
        if layer.skip == "pool":
            acts += cin * out * out
    return params, macs, acts


def layer_profile(arch, resolution: int, in_channels: int = 3, num_classes: int = 1000,
                  activation: str = "relu") -> Profile:
    """The :class:`Profile` of ``arch`` (a string or ``ArchSpec``) in closed form from its layers."""
    from search_spaces.layers import network_layers

    params = macs = acts = 0
    for layer in network_layers(arch, resolution=resolution, channels=in_channels, num_classes=num_classes,
                                activation=activation):
        p, m, a = layer_costs(layer)
        params, macs, acts = params + p, macs + m, acts + a
    return Profile(params=params, macs=macs, activations=acts)


@torch.no_grad()
def profile_model(build, resolution: int, in_channels: int = 3) -> Profile:
    """Profile the model returned by ``build()`` (called under the ``meta`` device: nothing is allocated)."""
    with torch.device("meta"):
        model = build()
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
             for m in model.modules() if not list(m.children())]
    try:
        params, macs = count_params_macs(model, resolution, in_channels)
    finally:
        for hook in hooks:
            hook.remove()
    return Profile(params=params, macs=macs, activations=sum(sizes))
