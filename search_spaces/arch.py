"""Architecture strings <-> block specs.

An architecture is written as one *stage* per block, stages joined by ``-``; a stage is a block-type prefix
followed by ``_``-separated, order-free tokens (the timm convention, e.g. ``ir_r2_k3_s2_e6_c24_se0.25``)::

    ds_r1_k3_s1_c16-ir_r2_k3_s2_e6_c24-...-ir_r1_k3_s1_e6_c320

Block types: ``cn`` regular conv, ``ds`` depthwise-separable conv, ``ir`` MBConv (inverted residual).
Tokens: ``r<repeats>`` ``k<kernel>`` ``s<stride>`` ``e<expansion>`` (``ir`` only) ``c<out channels>``
``se<ratio>`` (optional, default 0) and the skip op: absent = identity residual, ``noskip``, ``poolskip``.

This module is pure Python (no torch) so controllers, caches and CSVs can handle architectures as strings.
``format_arch(parse_arch(s))`` is ``s`` with its tokens in order and its numbers in their shortest form (``r02`` is
written ``r2``, ``se0.250`` ``se0.25``); ``parse_arch(format_arch(a)) == a`` always;
:func:`canonical` also writes a skip op that changes nothing as the default, so one network has one string.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from decimal import Decimal

BLOCK_TYPES = ("cn", "ds", "ir")
SKIP_OPS = ("none", "identity", "pool")
STAGE_SEP = "-"
TOKEN_SEP = "_"

_SKIP_TOKENS = {"noskip": "none", "poolskip": "pool"}
# ASCII digits only (``\d`` took r٢ for 2, as int() and float() read any script's digits)
_INT_TOKEN = re.compile(r"^(r|k|s|e|c)([0-9]+)$")
_SE_TOKEN = re.compile(r"^se([0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?)$")


def _format_ratio(ratio: float) -> str:
    """The shortest decimal that reads back as exactly ``ratio`` (``repr``'s digits), never in exponent form.

    ``:g`` kept six digits (1/3 came back as 0.333333, outside a space that offers 1/3) and wrote 1e-05, whose
    ``-`` is the stage separator.
    """
    return format(Decimal(repr(ratio)), "f")


MAX_VALUE = 2**20  # any number in a block (channels, repeats, ...): larger than any network that can be built


@dataclass(frozen=True)
class BlockSpec:
    """One searchable block: ``repeats`` copies of one layer design; only the first layer has ``stride``."""

    block_type: str
    repeats: int
    kernel: int
    stride: int
    out_channels: int
    expansion: int = 1
    se_ratio: float = 0.0
    skip: str = "identity"

    def __post_init__(self) -> None:
        if self.block_type not in BLOCK_TYPES:
            raise ValueError(f"unknown block type {self.block_type!r}; expected one of {', '.join(BLOCK_TYPES)}")
        for name in ("repeats", "kernel", "stride", "out_channels", "expansion"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            if value > MAX_VALUE:  # c10**22 reached torch as a C overflow traceback (64-bit sizes)
                raise ValueError(f"{name} must be at most {MAX_VALUE:,}, got {value:,}")
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (same padding), got {self.kernel}")
        if self.block_type != "ir" and self.expansion != 1:
            raise ValueError(f"expansion applies only to 'ir' blocks, got e{self.expansion} on {self.block_type!r}")
        if not (isinstance(self.se_ratio, (int, float)) and math.isfinite(self.se_ratio) and 0 <= self.se_ratio < 1):
            raise ValueError(f"se ratio must be in [0, 1), got {self.se_ratio!r}")
        if self.skip not in SKIP_OPS:
            raise ValueError(f"unknown skip op {self.skip!r}; expected one of {', '.join(SKIP_OPS)}")
        object.__setattr__(self, "se_ratio", float(self.se_ratio))

    def to_string(self) -> str:
        tokens = [self.block_type, f"r{self.repeats}", f"k{self.kernel}", f"s{self.stride}"]
        if self.block_type == "ir":
            tokens.append(f"e{self.expansion}")
        tokens.append(f"c{self.out_channels}")
        if self.se_ratio > 0:
            tokens.append(f"se{_format_ratio(self.se_ratio)}")
        if self.skip != "identity":
            tokens.append({"none": "noskip", "pool": "poolskip"}[self.skip])
        return TOKEN_SEP.join(tokens)


@dataclass(frozen=True)
class ArchSpec:
    """A whole searchable body: the list of blocks between the fixed stem and head."""

    blocks: tuple[BlockSpec, ...]

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ValueError("an architecture needs at least one block")
        object.__setattr__(self, "blocks", tuple(self.blocks))

    def to_string(self) -> str:
        return STAGE_SEP.join(b.to_string() for b in self.blocks)

    def __str__(self) -> str:
        return self.to_string()


def parse_stage(stage: str, position: int = 1) -> BlockSpec:
    """Parse one stage string; ``position`` (1-based) only serves the error messages."""
    where = f"stage {position} ({stage!r})"
    parts = stage.split(TOKEN_SEP)
    block_type = parts[0]
    if block_type not in BLOCK_TYPES:
        raise ValueError(f"{where}: unknown block type {block_type!r}; expected one of {', '.join(BLOCK_TYPES)}")
    values: dict[str, object] = {}
    for token_pos, token in enumerate(parts[1:], start=2):
        if token in _SKIP_TOKENS:
            key, value = "skip", _SKIP_TOKENS[token]
        elif m := _INT_TOKEN.match(token):
            key, value = m.group(1), int(m.group(2))
        elif m := _SE_TOKEN.match(token):
            key, value = "se", float(m.group(1))
        else:
            raise ValueError(f"{where}: unknown token {token!r} at token {token_pos}")
        if key in values:
            raise ValueError(f"{where}: token {token!r} at token {token_pos} repeats {key!r}")
        values[key] = value
    missing = [k for k in ("r", "k", "s", "c") if k not in values]
    if block_type == "ir" and "e" not in values:
        missing.append("e")
    if missing:
        raise ValueError(f"{where}: missing token(s) {', '.join(missing)}")
    try:
        return BlockSpec(
            block_type=block_type,
            repeats=values["r"],
            kernel=values["k"],
            stride=values["s"],
            out_channels=values["c"],
            expansion=values.get("e", 1),
            se_ratio=values.get("se", 0.0),
            skip=values.get("skip", "identity"),
        )
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def parse_arch(arch: str) -> ArchSpec:
    """Architecture string -> :class:`ArchSpec`. Raises ``ValueError`` naming the offending stage and token."""
    if not isinstance(arch, str) or not arch.strip():
        raise ValueError(f"architecture string must be a non-empty string, got {arch!r}")
    stages = arch.strip().split(STAGE_SEP)
    return ArchSpec(tuple(parse_stage(stage, i) for i, stage in enumerate(stages, start=1)))


def format_arch(spec: ArchSpec) -> str:
    return spec.to_string()


STEM_CHANNELS = 32  # the fixed stem's output: the first block's input


def effective_skip(skip: str, cin: int, cout: int, stride: int) -> str:
    """The skip op a layer really has: identity needs stride 1 and equal channels, pool needs equal channels."""
    if cin != cout:
        return "none"
    if skip == "identity":
        return "identity" if stride == 1 else "none"
    return skip


def network_spec(spec: ArchSpec) -> ArchSpec:
    """``spec`` with every skip op that changes nothing written as the default (identity): one spelling per
    network. A block's skip applies from its second layer on, so only a one-layer block can have an inert one: where
    the channels change (all three skips are dropped) or its stride is 2 (``noskip`` is what identity becomes).
    Networks as the search builds them (the 32-channel stem, width multiplier 1)."""
    blocks, cin = [], STEM_CHANNELS
    for block in spec.blocks:
        if block.repeats == 1 and block.skip != "identity":
            applied = effective_skip(block.skip, cin, block.out_channels, block.stride)
            if applied == effective_skip("identity", cin, block.out_channels, block.stride):
                block = dataclasses.replace(block, skip="identity")
        blocks.append(block)
        cin = block.out_channels
    return ArchSpec(tuple(blocks))


def canonical(arch: str) -> str:
    """The canonical spelling of an architecture string: tokens in fixed order, defaults omitted, a skip op that
    changes nothing written as the default (:func:`network_spec`); two strings of one network have one spelling."""
    return format_arch(network_spec(parse_arch(arch)))
