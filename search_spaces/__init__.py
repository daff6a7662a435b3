"""MnasNet's factorized hierarchical search space: choice lists, codec, builder, reference architectures.

Knows nothing of controllers, training or latency. ``torch`` is imported only when a model is built.
"""

from __future__ import annotations

from search_spaces.arch import ArchSpec, BlockSpec, canonical, format_arch, network_spec, parse_arch
from search_spaces.references import get_reference, list_references, register_reference, resolve_arch
from search_spaces.space import SearchSpace
from search_spaces.width import make_divisible

__all__ = [
    "ArchSpec",
    "BlockSpec",
    "SearchSpace",
    "build_model",
    "canonical",
    "count_params_macs",
    "format_arch",
    "get_reference",
    "list_references",
    "make_divisible",
    "network_spec",
    "parse_arch",
    "profile_arch",
    "register_reference",
    "resolve_arch",
]


def build_model(
    arch: str | ArchSpec,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    activation: str | None = None,
):
    """Reference name, architecture string or spec -> ``MnasNetModel`` (an ``nn.Module``).

    ``activation`` defaults to the reference's own (ReLU6 for MobileNetV2) or ReLU, MnasNet's choice.
    """
    from search_spaces.builder import MnasNetModel

    if isinstance(arch, ArchSpec):
        spec = arch
    else:
        if activation is None and isinstance(arch, str) and arch.strip() in list_references():
            activation = get_reference(arch.strip()).activation
        spec = parse_arch(resolve_arch(arch))
    return MnasNetModel(
        spec,
        num_classes=num_classes,
        in_channels=in_channels,
        width_mult=width_mult,
        dropout=dropout,
        activation=activation or "relu",
    )


def count_params_macs(model, resolution: int, in_channels: int = 3) -> tuple[int, int]:
    from search_spaces.profile import count_params_macs as _count

    return _count(model, resolution, in_channels)


def profile_arch(arch: str | ArchSpec, *, resolution: int, in_channels: int = 3, num_classes: int = 1000):
    """Exact params and MACs plus memory estimates of ``arch`` (a :class:`~search_spaces.profile.Profile`), in
    closed form from its layers: microseconds, and an absurdly wide architecture costs nothing to describe."""
    from search_spaces.profile import layer_profile

    spec = arch if isinstance(arch, ArchSpec) else parse_arch(resolve_arch(arch))
    return layer_profile(spec, resolution, in_channels, num_classes)
