"""A network as the list of its layers, in pure Python: what a per-layer latency table is keyed by.

The builder (``search_spaces.builder``) and this module share the two rules that decide what a layer computes:
the skip op that really applies (:func:`effective_skip`) and the SE width (:func:`se_channels`). A layer here is
everything its latency depends on: the conv op, kernel, SE width, effective skip, input and output channels,
stride, input size and activation; plus the fixed stem and the head (conv1x1, pooling, classifier).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from search_spaces.arch import STEM_CHANNELS, ArchSpec, BlockSpec, effective_skip, parse_arch

HEAD_CHANNELS = 1280
LAYER_KINDS = ("stem", "layer", "head")


def se_channels(se_ratio: float, cin: int) -> int:
    """SE squeeze width from the layer's input channels (the public MnasNet ports); 0 without SE."""
    return max(1, round(se_ratio * cin)) if se_ratio > 0 else 0


def out_size(size: int, stride: int) -> int:
    """Spatial size after a same-padded (``kernel // 2``) odd-kernel conv or pool with ``stride``."""
    return (size - 1) // stride + 1


@dataclass(frozen=True, order=True)
class LayerSpec:
    """One layer as a latency table sees it. ``size`` is the input's height (= width)."""

    kind: str
    cin: int
    cout: int
    size: int
    stride: int = 1
    kernel: int = 1
    block_type: str = ""
    expansion: int = 1
    se: int = 0
    skip: str = "none"
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"unknown layer kind {self.kind!r}; expected one of {', '.join(LAYER_KINDS)}")

    @property
    def key(self) -> str:
        """A readable, unique name, e.g. ``ir_e6_k5_se6_skipid_i24o24_s1_h56_relu``."""
        act = f"_{self.activation}"
        if self.kind == "stem":
            return f"stem_k{self.kernel}_i{self.cin}o{self.cout}_s{self.stride}_h{self.size}{act}"
        if self.kind == "head":  # cout = number of classes
            return f"head_i{self.cin}m{HEAD_CHANNELS}o{self.cout}_h{self.size}{act}"
        skip = {"none": "", "identity": "_skipid", "pool": "_skippool"}[self.skip]
        exp = f"_e{self.expansion}" if self.block_type == "ir" else ""
        se = f"_se{self.se}" if self.se else ""
        return f"{self.block_type}{exp}_k{self.kernel}{se}{skip}_i{self.cin}o{self.cout}_s{self.stride}_h{self.size}{act}"

    @property
    def out_size(self) -> int:
        return 1 if self.kind == "head" else out_size(self.size, self.stride)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LayerSpec:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def block_spec(self) -> BlockSpec:
        """The one-layer block this layer is built from (``kind == 'layer'`` only)."""
        # Any ratio that gives the same SE width builds the same layer. se_channels rounds and keeps at least 1, so
        # the width can equal cin (cin 1, or 0.95 x 10 -> 10), where se / cin = 1.0 is no ratio a block may have:
        # the largest float below 1 rounds back to cin.
        if not 0 <= self.se <= self.cin:
            raise ValueError(f"SE width {self.se} must be between 0 and the layer's input channels {self.cin}")
        se_ratio = min(self.se / self.cin, math.nextafter(1.0, 0.0)) if self.se else 0.0
        return BlockSpec(block_type=self.block_type, repeats=1, kernel=self.kernel, stride=self.stride,
                         out_channels=self.cout, expansion=self.expansion if self.block_type == "ir" else 1,
                         se_ratio=se_ratio, skip=self.skip)


def stem_layer(resolution: int, channels: int, activation: str = "relu") -> LayerSpec:
    return LayerSpec("stem", channels, STEM_CHANNELS, resolution, stride=2, kernel=3, activation=activation)


def block_layer(block: BlockSpec, cin: int, size: int, first: bool, activation: str = "relu") -> LayerSpec:
    """Layer ``first`` (stride of the block) or a later layer (stride 1, cin == cout) of ``block``."""
    stride = block.stride if first else 1
    cout = block.out_channels
    return LayerSpec("layer", cin, cout, size, stride=stride, kernel=block.kernel, block_type=block.block_type,
                     expansion=block.expansion, se=se_channels(block.se_ratio, cin),
                     skip=effective_skip(block.skip, cin, cout, stride), activation=activation)


def head_layer(cin: int, size: int, num_classes: int, activation: str = "relu") -> LayerSpec:
    return LayerSpec("head", cin, num_classes, size, activation=activation)


def network_layers(arch: str | ArchSpec, *, resolution: int, channels: int, num_classes: int,
                   activation: str = "relu") -> list[LayerSpec]:
    """Every layer of the network ``build_model(arch)`` builds (width multiplier 1), in order."""
    spec = parse_arch(arch) if isinstance(arch, str) else arch
    stem = stem_layer(resolution, channels, activation)
    layers, cin, size = [stem], stem.cout, stem.out_size
    for block in spec.blocks:
        for i in range(block.repeats):
            layer = block_layer(block, cin, size, i == 0, activation)
            layers.append(layer)
            cin, size = layer.cout, layer.out_size
    layers.append(head_layer(cin, size, num_classes, activation))
    return layers


def unique(layers: Iterable[LayerSpec]) -> list[LayerSpec]:
    """Distinct layers, in first-seen order."""
    return list(dict.fromkeys(layers))
