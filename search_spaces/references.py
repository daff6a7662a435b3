"""Reference architectures as named data, with their published metadata (torchvision ``Weights.meta`` style)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mnas_common.paths import config_dir

from search_spaces.arch import BLOCK_TYPES, TOKEN_SEP, canonical


@dataclass(frozen=True)
class ReferenceArch:
    name: str
    arch: str
    activation: str = "relu"
    meta: dict = field(default_factory=dict)


_REFERENCES: dict[str, ReferenceArch] = {}


def register_reference(name: str, arch: str, *, activation: str = "relu", **meta) -> ReferenceArch:
    """Add a named architecture; names are unique (a second registration is a bug, not an override)."""
    if name in _REFERENCES:
        raise ValueError(f"reference architecture {name!r} is already registered")
    ref = ReferenceArch(name=name, arch=canonical(arch), activation=activation, meta=dict(meta))
    _REFERENCES[name] = ref
    return ref


def get_reference(name: str) -> ReferenceArch:
    try:
        return _REFERENCES[name]
    except KeyError:
        raise ValueError(f"unknown reference architecture {name!r}; known: {', '.join(sorted(_REFERENCES))}") from None


def list_references() -> list[str]:
    return sorted(_REFERENCES)


def resolve_arch(name_or_arch: str) -> str:
    """A reference name or an architecture string -> the canonical architecture string."""
    if not isinstance(name_or_arch, str) or not name_or_arch.strip():
        raise ValueError(f"architecture must be a reference name or an architecture string, got {name_or_arch!r}")
    name_or_arch = name_or_arch.strip()
    if name_or_arch in _REFERENCES:
        return _REFERENCES[name_or_arch].arch
    # An architecture string starts with a block type; anything else is meant as a name, and a misspelt one
    # ('mnasnet_a2') must not be reported as a stage with an unknown block type 'mnasnet'.
    if name_or_arch.split(TOKEN_SEP)[0] not in BLOCK_TYPES:
        raise ValueError(
            f"unknown architecture {name_or_arch!r}: not a reference name (known: {', '.join(list_references())}) "
            f"and not an architecture string (those start with a block type: {', '.join(BLOCK_TYPES)})"
        )
    return canonical(name_or_arch)


def default_space_config() -> dict:
    import yaml

    path = config_dir() / "search_space" / "mnasnet.yaml"
    with open(path) as f:
        return yaml.safe_load(f)


register_reference(
    "mobilenet_v2",
    "ds_r1_k3_s1_c16-ir_r2_k3_s2_e6_c24-ir_r3_k3_s2_e6_c32-ir_r4_k3_s2_e6_c64-"
    "ir_r3_k3_s1_e6_c96-ir_r3_k3_s2_e6_c160-ir_r1_k3_s1_e6_c320",
    activation="relu6",
    params=3_504_872,
    macs=300_774_272,
    top1=72.0,
    latency_ms_pixel1=75.0,
    source="torchvision mobilenet_v2; accuracy/latency from the MnasNet paper (Table 1)",
)
register_reference(
    "mnasnet_a1",
    "ds_r1_k3_s1_c16_noskip-ir_r2_k3_s2_e6_c24-ir_r3_k5_s2_e3_c40_se0.25-ir_r4_k3_s2_e6_c80-"
    "ir_r2_k3_s1_e6_c112_se0.25-ir_r3_k5_s2_e6_c160_se0.25-ir_r1_k3_s1_e6_c320",
    params=3_887_038,
    macs=311_579_072,
    top1=75.2,
    latency_ms_pixel1=78.0,
    source="MnasNet paper (Table 1, Figure 7); params/MACs of the public PyTorch ports",
)
register_reference(
    "mnasnet_b1",
    "ds_r1_k3_s1_c16_noskip-ir_r3_k3_s2_e3_c24-ir_r3_k5_s2_e3_c40-ir_r3_k5_s2_e6_c80-"
    "ir_r2_k3_s1_e6_c96-ir_r4_k5_s2_e6_c192-ir_r1_k3_s1_e6_c320_noskip",
    params=4_383_312,
    macs=314_415_872,
    top1=74.0,
    source="torchvision mnasnet1_0 (MnasNet-B1); top-1 from the MnasNet paper's public release",
)
