"""The factorized hierarchical search space and its token codec.

A *token sequence* holds one integer per decision, which is what a controller emits. Each of the blocks has
six decisions, in this order: conv op, kernel size, SE ratio, skip op, filter size, number of layers.

Filter sizes are ``make_divisible(multiplier * base_channels, channel_divisor)`` and layer counts are
``max(min_layers, base_layers + delta)``. Choices that round or clip to the same value are merged (keeping the
first), which is why a block's filter/layer decisions may have fewer options than the configured lists (for
example 0.75 x 16 and 1.0 x 16 channels both round to 16). A one-layer block's skip op that changes nothing (where the
channels change, or ``noskip`` at stride 2, which is what identity becomes there) decodes as identity, the canonical
spelling (:func:`~search_spaces.arch.network_spec`): sequences that differ only there are one network, so
:attr:`SearchSpace.num_networks` can be smaller than :attr:`SearchSpace.size`. ``decode(encode(a))`` is
``canonical(a)`` for every architecture ``a`` of the space.
"""

from __future__ import annotations

import math
import re
from itertools import product
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from mnas_common.config import to_plain

from search_spaces.arch import (MAX_VALUE, SKIP_OPS, STEM_CHANNELS, ArchSpec, BlockSpec, effective_skip, network_spec,
                                parse_arch)
from search_spaces.width import make_divisible

DECISIONS = ("conv_op", "kernel", "se_ratio", "skip", "filters", "layers")

CONV_OPS = {"conv": ("cn", 1), "ds": ("ds", 1)}


# One spelling per op: ASCII digits, no leading zero. ``mbconv06`` (or ``mbconv٦``) decoded to MBConv e6, but
# encode looks an architecture's op up by the name it writes back, ``mbconv6``, and found no such choice.
_MBCONV = re.compile(r"mbconv([1-9][0-9]*)")


def _conv_op(name: str) -> tuple[str, int]:
    """Config name -> (block type, expansion). ``mbconv<N>`` is MBConv with expansion N."""
    if isinstance(name, str) and name in CONV_OPS:
        return CONV_OPS[name]
    if isinstance(name, str) and (m := _MBCONV.fullmatch(name)) and int(m.group(1)) <= MAX_VALUE:
        return ("ir", int(m.group(1)))
    raise ValueError(f"unknown conv op {name!r}; expected conv, ds or mbconv<expansion> (e.g. mbconv6, no leading 0, "
                     f"at most mbconv{MAX_VALUE})")


def _conv_op_name(block_type: str, expansion: int) -> str:
    return {"cn": "conv", "ds": "ds"}.get(block_type, f"mbconv{expansion}")


@dataclass(frozen=True)
class BlockChoices:
    """The options of one block, already rounded and de-duplicated."""

    stride: int
    conv_ops: tuple[str, ...]
    kernels: tuple[int, ...]
    se_ratios: tuple[float, ...]
    skips: tuple[str, ...]
    channels: tuple[int, ...]
    layers: tuple[int, ...]

    def options(self) -> tuple[tuple, ...]:
        return (self.conv_ops, self.kernels, self.se_ratios, self.skips, self.channels, self.layers)


def _unique(values) -> tuple:
    return tuple(dict.fromkeys(values))


def _integer(key: str, value) -> int:
    """``value`` as an int, refusing what ``int()`` would truncate (16.5 -> 16), overflow on (inf) or fail on (NaN)
    with a message that names no key; bools and strings are not counts either."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ValueError(f"search space: {key} must be an integer, got {value!r}")


def _real(key: str, value) -> float:
    """``value`` as a finite float: a NaN multiplier passed ``m <= 0`` and failed later inside make_divisible."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
    raise ValueError(f"search space: {key} must be a finite number, got {value!r}")


def _nonempty(name: str, values: Sequence) -> list:
    values = list(values)
    if not values:
        raise ValueError(f"search space: {name} must not be empty")
    if len(set(values)) != len(values):
        raise ValueError(f"search space: {name} has duplicates: {values}")
    return values


class SearchSpace:
    """MnasNet's factorized hierarchical space; every choice list comes from the ``search_space`` config."""

    def __init__(
        self,
        blocks: Sequence[Mapping],
        conv_ops: Sequence[str] = ("conv", "ds", "mbconv3", "mbconv6"),
        kernel_sizes: Sequence[int] = (3, 5),
        se_ratios: Sequence[float] = (0.0, 0.25),
        skip_ops: Sequence[str] = ("none", "identity", "pool"),
        filter_multipliers: Sequence[float] = (0.75, 1.0, 1.25),
        layer_deltas: Sequence[int] = (-1, 0, 1),
        channel_divisor: int = 8,
        min_layers: int = 1,
    ) -> None:
        if not blocks:
            raise ValueError("search space: blocks must list at least one block")
        conv_ops = _nonempty("conv_ops", conv_ops)
        for op in conv_ops:
            _conv_op(op)
        kernel_sizes = _nonempty("kernel_sizes", [_integer("kernel_sizes", k) for k in kernel_sizes])
        for k in kernel_sizes:
            if k < 1 or k % 2 == 0 or k > MAX_VALUE:
                raise ValueError(f"search space: kernel_sizes must be odd integers in [1, {MAX_VALUE:,}], got {k}")
        se_ratios = _nonempty("se_ratios", [_real("se_ratios", r) for r in se_ratios])
        for r in se_ratios:
            if not 0 <= r < 1:
                raise ValueError(f"search space: se_ratios must be in [0, 1), got {r}")
        skip_ops = _nonempty("skip_ops", list(skip_ops))
        for s in skip_ops:
            if s not in SKIP_OPS:
                raise ValueError(f"search space: unknown skip op {s!r}; expected one of {', '.join(SKIP_OPS)}")
        filter_multipliers = _nonempty("filter_multipliers", [_real("filter_multipliers", m)
                                                              for m in filter_multipliers])
        if any(m <= 0 for m in filter_multipliers):
            raise ValueError(f"search space: filter_multipliers must be positive, got {filter_multipliers}")
        layer_deltas = _nonempty("layer_deltas", [_integer("layer_deltas", d) for d in layer_deltas])
        channel_divisor, min_layers = _integer("channel_divisor", channel_divisor), _integer("min_layers", min_layers)
        if min_layers < 1:
            raise ValueError(f"search space: min_layers must be >= 1, got {min_layers}")
        if channel_divisor < 1:
            raise ValueError(f"search space: channel_divisor must be >= 1, got {channel_divisor}")

        self.blocks: list[BlockChoices] = []
        for i, block in enumerate(blocks, start=1):
            keys = ("channels", "layers", "stride")
            try:
                values = [block[key] for key in keys]
            except (KeyError, TypeError):
                raise ValueError(f"search space: block {i} needs channels, layers and stride, got {block!r}") from None
            base_c, base_n, stride = (_integer(f"block {i} {key}", v) for key, v in zip(keys, values))
            if base_c < 1 or base_n < 1 or stride < 1:
                raise ValueError(f"search space: block {i} values must be positive, got {dict(block)!r}")
            widest = max(filter_multipliers) * base_c  # 1e308 x 16 was inf, an OverflowError in make_divisible
            if not widest <= MAX_VALUE:
                raise ValueError(f"search space: block {i} channels {base_c} x filter multiplier "
                                 f"{max(filter_multipliers)} = {widest:g} is more than {MAX_VALUE:,} channels")
            choices = BlockChoices(
                stride=stride,
                conv_ops=tuple(conv_ops),
                kernels=tuple(kernel_sizes),
                se_ratios=tuple(se_ratios),
                skips=tuple(skip_ops),
                channels=_unique(make_divisible(m * base_c, channel_divisor) for m in filter_multipliers),
                layers=_unique(max(min_layers, base_n + d) for d in layer_deltas),
            )
            # what the block offers, as every architecture string must hold it: a larger number passed here and
            # then failed every decode in the middle of a search, naming neither the block nor the key
            for key, value in (("channels", max(choices.channels)), ("layers", max(choices.layers)),
                               ("stride", stride)):
                if value > MAX_VALUE:
                    raise ValueError(f"search space: block {i} offers {key} {value:,}, more than {MAX_VALUE:,} (after "
                                     "filter_multipliers, layer_deltas, channel_divisor and min_layers)")
            self.blocks.append(choices)
        self.config = {
            "blocks": [dict(b) for b in blocks],
            "conv_ops": conv_ops,
            "kernel_sizes": kernel_sizes,
            "se_ratios": se_ratios,
            "skip_ops": skip_ops,
            "filter_multipliers": filter_multipliers,
            "layer_deltas": layer_deltas,
            "channel_divisor": channel_divisor,
            "min_layers": min_layers,
        }
        self.num_choices: list[int] = [len(opts) for b in self.blocks for opts in b.options()]

    @classmethod
    def from_config(cls, cfg: Mapping) -> SearchSpace:
        """Build from a (Hydra/OmegaConf or plain) mapping; ``_target_`` is ignored. A mapping of the wrong form (a
        field missing, unknown or of the wrong type) is one ``ValueError`` line."""
        try:
            return cls(**{k: v for k, v in dict(to_plain(cfg)).items() if k != "_target_"})
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not of the form of configs/search_space/mnasnet.yaml ({type(exc).__name__}: "
                             f"{exc})") from None

    @classmethod
    def default(cls) -> SearchSpace:
        """The paper's space, read from ``configs/search_space/mnasnet.yaml``."""
        from search_spaces.references import default_space_config

        return cls.from_config(default_space_config())

    # ------------------------------------------------------------------ properties
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_decisions(self) -> int:
        return len(self.num_choices)

    @property
    def size(self) -> int:
        """Number of token sequences: every decision's choices multiplied."""
        return math.prod(self.num_choices)

    @property
    def num_networks(self) -> int:
        """Number of distinct networks (architecture strings): fewer than :attr:`size`, because a one-layer block's
        skip op can change nothing (:func:`~search_spaces.arch.network_spec`). Counted block by block over the
        width entering each block."""
        prefixes = {STEM_CHANNELS: 1}  # networks so far, by the width they end with
        for b in self.blocks:
            others = len(b.conv_ops) * len(b.kernels) * len(b.se_ratios)
            after: dict[int, int] = {}
            for cin, count in prefixes.items():
                for cout in b.channels:
                    skips = sum(len(b.skips) if r > 1 else
                                len({effective_skip(skip, cin, cout, b.stride) for skip in b.skips}) for r in b.layers)
                    after[cout] = after.get(cout, 0) + count * others * skips
            prefixes = after
        return sum(prefixes.values())

    def decision_names(self) -> list[str]:
        return [f"block{b + 1}.{d}" for b in range(self.num_blocks) for d in DECISIONS]

    # ------------------------------------------------------------------ codec
    def validate_tokens(self, tokens: Sequence[int]) -> list[int]:
        tokens = list(tokens)
        if len(tokens) != self.num_decisions:
            raise ValueError(f"expected {self.num_decisions} tokens ({self.num_blocks} blocks x 6), got {len(tokens)}")
        names = self.decision_names()
        out = []
        for pos, (tok, n) in enumerate(zip(tokens, self.num_choices)):
            if isinstance(tok, bool) or not isinstance(tok, (int, np.integer)):
                raise ValueError(f"token {pos} ({names[pos]}) must be an integer, got {tok!r}")
            if not 0 <= tok < n:
                raise ValueError(f"token {pos} ({names[pos]}) = {tok} is out of range [0, {n})")
            out.append(int(tok))
        return out

    def decode_spec(self, tokens: Sequence[int]) -> ArchSpec:
        tokens = self.validate_tokens(tokens)
        specs = []
        for b, choices in enumerate(self.blocks):
            t = tokens[6 * b : 6 * b + 6]
            op, kernel, se, skip, channels, layers = (opts[i] for opts, i in zip(choices.options(), t))
            block_type, expansion = _conv_op(op)
            specs.append(
                BlockSpec(
                    block_type=block_type,
                    repeats=layers,
                    kernel=kernel,
                    stride=choices.stride,
                    out_channels=channels,
                    expansion=expansion,
                    se_ratio=se,
                    skip=skip,
                )
            )
        return network_spec(ArchSpec(tuple(specs)))  # sequences differing only in an inert skip: one network

    def decode(self, tokens: Sequence[int]) -> str:
        """Token sequence -> canonical architecture string (one per network: :func:`~search_spaces.arch.canonical`)."""
        return self.decode_spec(tokens).to_string()

    def encode(self, arch: str | ArchSpec) -> list[int]:
        """Architecture string -> token sequence; ``ValueError`` if the architecture lies outside this space."""
        spec = parse_arch(arch) if isinstance(arch, str) else arch
        if len(spec.blocks) != self.num_blocks:
            raise ValueError(f"architecture has {len(spec.blocks)} stages, this space has {self.num_blocks} blocks")
        tokens: list[int] = []
        cin = STEM_CHANNELS
        for i, (block, choices) in enumerate(zip(spec.blocks, self.blocks), start=1):
            if block.stride != choices.stride:
                raise ValueError(f"stage {i}: stride {block.stride} differs from the space's stride {choices.stride}")
            values = (
                _conv_op_name(block.block_type, block.expansion),
                block.kernel,
                block.se_ratio,
                block.skip,
                block.out_channels,
                block.repeats,
            )
            for name, value, options in zip(DECISIONS, values, choices.options()):
                if name == "skip" and value not in options and block.repeats == 1:
                    # a skip that changes nothing is written as identity (network_spec), in a space without it too
                    effect = effective_skip(value, cin, block.out_channels, block.stride)
                    value = next((o for o in options
                                  if effective_skip(o, cin, block.out_channels, block.stride) == effect), value)
                if value not in options:
                    raise ValueError(f"stage {i}: {name} {value!r} is not among this space's choices {list(options)}")
                tokens.append(options.index(value))
            cin = block.out_channels
        return tokens

    def sample_tokens(self, n: int, seed: int | None = None) -> list[list[int]]:
        """``n`` uniform token sequences; the same seed always gives the same sequences."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = np.random.default_rng(seed)
        return [[int(rng.integers(k)) for k in self.num_choices] for _ in range(n)]

    def sample(self, n: int, seed: int | None = None) -> list[str]:
        return [self.decode(t) for t in self.sample_tokens(n, seed)]

    def contains(self, arch: str) -> bool:
        try:
            self.encode(arch)
        except ValueError:
            return False
        return True

    def describe(self) -> str:
        lines = [f"{self.num_blocks} blocks, {self.num_decisions} decisions, {self.size:.3e} token sequences, "
                 f"{self.num_networks:.3e} distinct networks"]
        for i, b in enumerate(self.blocks, start=1):
            lines.append(
                f"  block {i}: stride {b.stride}, ops {list(b.conv_ops)}, kernels {list(b.kernels)}, "
                f"se {list(b.se_ratios)}, skips {list(b.skips)}, channels {list(b.channels)}, layers {list(b.layers)}"
            )
        return "\n".join(lines)

    # ------------------------------------------------------------------ layers
    def layers(self, *, resolution: int, channels: int, num_classes: int, activation: str = "relu") -> list:
        """Every distinct layer (:class:`~search_spaces.layers.LayerSpec`) any architecture of the space can have.

        A block's first layer takes each output width of the block before (the stem's for block 1) and has the
        block's stride; later layers (where the block can have more than one) map its width onto itself.
        """
        from search_spaces.layers import block_layer, head_layer, stem_layer, unique

        stem = stem_layer(resolution, channels, activation)
        out, cins, size = [stem], (stem.cout,), stem.out_size
        for choices in self.blocks:
            first_size = size
            for op, kernel, se, skip in product(choices.conv_ops, choices.kernels, choices.se_ratios, choices.skips):
                block_type, expansion = _conv_op(op)
                for cout in choices.channels:
                    block = BlockSpec(block_type=block_type, repeats=1, kernel=kernel, stride=choices.stride,
                                      out_channels=cout, expansion=expansion, se_ratio=se, skip=skip)
                    first = [block_layer(block, cin, first_size, True, activation) for cin in cins]
                    out += first
                    size = first[0].out_size
                    if max(choices.layers) > 1:
                        out.append(block_layer(block, cout, size, False, activation))
            cins = choices.channels
        out += [head_layer(cin, size, num_classes, activation) for cin in cins]
        return unique(out)
