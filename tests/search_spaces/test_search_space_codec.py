"""Token <-> string <-> spec round trips, grammar errors and the space's choice lists."""

from __future__ import annotations

import itertools
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search_spaces import (
    ArchSpec,
    BlockSpec,
    SearchSpace,
    canonical,
    format_arch,
    list_references,
    make_divisible,
    parse_arch,
    resolve_arch,
)
from search_spaces.__main__ import load_space
from search_spaces.space import DECISIONS

MBV2 = (
    "ds_r1_k3_s1_c16-ir_r2_k3_s2_e6_c24-ir_r3_k3_s2_e6_c32-ir_r4_k3_s2_e6_c64-"
    "ir_r3_k3_s1_e6_c96-ir_r3_k3_s2_e6_c160-ir_r1_k3_s1_e6_c320"
)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.default()


def test_default_space_matches_the_paper(space):
    assert space.num_blocks == 7
    assert space.num_decisions == 42
    # conv op, kernel, SE, skip are full per block; filters/layers are merged where rounding collides.
    for b in range(7):
        assert space.num_choices[6 * b : 6 * b + 4] == [4, 2, 2, 3]
    assert [b.stride for b in space.blocks] == [1, 2, 2, 2, 1, 2, 1]
    assert space.blocks[1].channels == (24, 32)  # 0.75*24=18 rounds up to 24 (90% rule), 1.25*24=30 -> 32
    assert space.blocks[0].layers == (1, 2)  # max(1, 1-1) = 1 merges with delta 0
    assert space.blocks[3].layers == (3, 4, 5)
    assert space.size == math.prod(space.num_choices)
    assert space.size > 10**17


def test_make_divisible_matches_torchvision():
    assert make_divisible(83, 8) == 80
    assert make_divisible(84, 8) == 88
    assert make_divisible(0.75 * 16, 8) == 16
    assert make_divisible(0.75 * 24, 8) == 24  # 16 would be < 90% of 18
    assert make_divisible(1.25 * 320, 8) == 400


def test_hydra_config_space_equals_default(space):
    assert load_space("mnasnet").num_choices == space.num_choices


def test_tiny_space_is_smaller_and_configurable():
    tiny = load_space("tiny")
    assert tiny.size < 10**6
    assert tiny.num_decisions == 42
    shrunk = load_space("mnasnet", ["search_space.kernel_sizes=[3]", "search_space.se_ratios=[0.0]"])
    assert shrunk.size * 4**7 == SearchSpace.default().size


def test_space_refuses_bad_choice_lists():
    with pytest.raises(ValueError, match="kernel_sizes"):
        SearchSpace(blocks=[{"channels": 16, "layers": 1, "stride": 1}], kernel_sizes=[4])
    with pytest.raises(ValueError, match="conv op 'mbconvX'"):
        SearchSpace(blocks=[{"channels": 16, "layers": 1, "stride": 1}], conv_ops=["mbconvX"])
    with pytest.raises(ValueError, match="block 1"):
        SearchSpace(blocks=[{"channels": 16, "layers": 1}])
    with pytest.raises(ValueError, match="skip op 'residual'"):
        SearchSpace(blocks=[{"channels": 16, "layers": 1, "stride": 1}], skip_ops=["residual"])


@pytest.mark.parametrize("alias", ["mbconv06", "mbconv\u0666", "mbconv0", 6, "mbconv2000000"])
def test_conv_ops_have_one_spelling(alias):
    # 'mbconv06' was accepted as MBConv e6, and then encode found no 'mbconv6' among the choices
    with pytest.raises(ValueError, match=r"^unknown conv op .*mbconv6, no leading 0, at most mbconv1048576\)$"):
        SearchSpace(blocks=[{"channels": 16, "layers": 1, "stride": 1}], conv_ops=["ds", alias])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"blocks": [{"channels": 16.5, "layers": 1, "stride": 1}]}, "block 1 channels must be an integer, got 16.5"),
        ({"blocks": [{"channels": math.inf, "layers": 1, "stride": 1}]}, "block 1 channels must be an integer, got inf"),
        ({"blocks": [{"channels": 16, "layers": math.nan, "stride": 1}]}, "block 1 layers must be an integer, got nan"),
        ({"blocks": [{"channels": 16, "layers": 1, "stride": True}]}, "block 1 stride must be an integer, got True"),
        ({"kernel_sizes": [3, math.inf]}, "kernel_sizes must be an integer, got inf"),
        ({"kernel_sizes": [3.5]}, "kernel_sizes must be an integer, got 3.5"),
        ({"layer_deltas": [0, math.nan]}, "layer_deltas must be an integer, got nan"),
        ({"layer_deltas": [0.5]}, "layer_deltas must be an integer, got 0.5"),
        ({"filter_multipliers": [1.0, math.nan]}, "filter_multipliers must be a finite number, got nan"),
        ({"filter_multipliers": [math.inf]}, "filter_multipliers must be a finite number, got inf"),
        ({"se_ratios": ["0.25"]}, "se_ratios must be a finite number, got '0.25'"),
        ({"min_layers": math.nan}, "min_layers must be an integer, got nan"),
        ({"channel_divisor": 8.5}, "channel_divisor must be an integer, got 8.5"),
        ({"channel_divisor": 0}, "channel_divisor must be >= 1, got 0"),
        # 1e308 x 16 was inf: an OverflowError traceback from make_divisible
        ({"filter_multipliers": [1.0, 1e308]},
         "block 1 channels 16 x filter multiplier 1e+308 = inf is more than 1,048,576 channels"),
        ({"layer_deltas": [0, 2**21]}, "block 1 offers layers 2,097,153, more than 1,048,576 (after "
                                        "filter_multipliers, layer_deltas, channel_divisor and min_layers)"),
        # each was accepted here, and then every decode failed mid-search naming neither the block nor the key
        ({"channel_divisor": 2**21}, "block 1 offers channels 2,097,152, more than 1,048,576 (after "
                                     "filter_multipliers, layer_deltas, channel_divisor and min_layers)"),
        ({"min_layers": 2**21}, "block 1 offers layers 2,097,152, more than 1,048,576 (after "
                                "filter_multipliers, layer_deltas, channel_divisor and min_layers)"),
        ({"blocks": [{"channels": 16, "layers": 1, "stride": 2**21}]}, "block 1 offers stride 2,097,152, more than "
         "1,048,576 (after filter_multipliers, layer_deltas, channel_divisor and min_layers)"),
        ({"kernel_sizes": [3, 2**21 + 1]}, "kernel_sizes must be odd integers in [1, 1,048,576], got 2097153"),
    ],
)
def test_space_refuses_numbers_that_are_not_what_the_key_counts(changes, message):
    # int() truncated 16.5 to 16 and raised OverflowError / 'cannot convert float NaN' (naming no key) on inf / NaN
    config = {"blocks": [{"channels": 16, "layers": 1, "stride": 1}], **changes}
    with pytest.raises(ValueError, match=f"^search space: {re.escape(message)}$"):
        SearchSpace(**config)
    with pytest.raises(ValueError, match=re.escape(message)):
        SearchSpace.from_config(config)


def test_space_takes_integral_floats_as_counts():
    space = SearchSpace(blocks=[{"channels": 16.0, "layers": 2.0, "stride": 1.0}], kernel_sizes=[3.0],
                        layer_deltas=[-1.0, 0], channel_divisor=8.0, min_layers=1.0)
    assert space.blocks[0].channels == (16, 24) and space.blocks[0].layers == (1, 2) and space.blocks[0].kernels == (3,)


def test_tokens_round_trip_over_thousands_of_samples(space):
    tokens = space.sample_tokens(5000, seed=123)
    strings = [space.decode(t) for t in tokens]
    for t, s in zip(tokens, strings):
        assert_round_trip(space, t, s)
        assert space.encode(parse_arch(s)) == space.encode(s)
    # distinct token sequences give distinct architectures, but for inert skip ops (one network, one string)
    distinct = {tuple(space.encode(s)) for s in strings}
    assert len(set(strings)) == len(distinct) > 4900


def assert_round_trip(space: SearchSpace, tokens: list[int], arch: str) -> None:
    """``arch``, decoded from ``tokens``, is canonical and encodes back to them, but for a skip op that changes
    nothing (written as identity: the network is the same)."""
    back = space.encode(arch)
    assert canonical(arch) == arch and space.decode(back) == arch
    skip = DECISIONS.index("skip")
    for b in range(space.num_blocks):
        for d in range(6):
            i = 6 * b + d
            if d != skip:
                assert back[i] == tokens[i], (b, d)
            elif back[i] != tokens[i]:  # an inert skip: the other spelling decodes to the same network
                assert space.blocks[b].skips[back[i]] == "identity"
                assert space.decode([*tokens[:i], back[i], *tokens[i + 1:]]) == arch


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_decode_encode_property(space, data):
    tokens = [data.draw(st.integers(0, n - 1)) for n in space.num_choices]
    arch = space.decode(tokens)
    assert_round_trip(space, tokens, arch)
    assert format_arch(parse_arch(arch)) == arch


block_specs = st.builds(
    lambda t, r, k, s, c, e, se, skip: BlockSpec(
        block_type=t,
        repeats=r,
        kernel=k,
        stride=s,
        out_channels=c,
        expansion=e if t == "ir" else 1,
        se_ratio=se,
        skip=skip,
    ),
    st.sampled_from(["cn", "ds", "ir"]),
    st.integers(1, 9),
    st.sampled_from([1, 3, 5, 7]),
    st.integers(1, 3),
    st.integers(1, 2048),
    st.integers(1, 8),
    st.sampled_from([0.0, 0.125, 0.25, 0.5]),
    st.sampled_from(["none", "identity", "pool"]),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(block_specs, min_size=1, max_size=9))
def test_any_spec_round_trips_through_the_grammar(blocks):
    spec = ArchSpec(tuple(blocks))
    assert parse_arch(format_arch(spec)) == spec


@settings(max_examples=2000, deadline=None)
@given(st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_any_se_ratio_round_trips_exactly(ratio):
    # '{:g}' wrote 1/3 as 0.333333 and 1e-05 with the stage separator '-' in it
    spec = ArchSpec((BlockSpec("ir", 1, 3, 1, 16, expansion=6, se_ratio=ratio),))
    assert parse_arch(format_arch(spec)) == spec


def test_a_space_with_any_se_ratio_encodes_what_it_decodes():
    space = SearchSpace(blocks=[{"channels": 16, "layers": 1, "stride": 1}], se_ratios=[0.0, 1 / 3, 1e-5, 5e-324])
    identity = space.blocks[0].skips.index("identity")  # 32 -> 16 channels: the skip is inert, written as identity
    for se in range(4):
        tokens = [0, 0, se, identity, 0, 0]
        assert space.encode(space.decode(tokens)) == tokens
    assert "_se0.00001" in space.decode([0, 0, 2, 0, 0, 0])


def test_a_space_without_identity_encodes_every_network_it_decodes():
    """An inert skip decodes as identity (the canonical spelling), which encode then refused in a space whose skip
    ops leave identity out: every one of this space's 4,096 sequences failed, and contains() said no to them."""
    space = SearchSpace(blocks=[{"channels": 16, "layers": 1, "stride": 1}, {"channels": 24, "layers": 1, "stride": 2}],
                        skip_ops=["none", "pool"], layer_deltas=[0])
    networks = set()
    for tokens in itertools.product(*(range(n) for n in space.num_choices)):
        arch = space.decode(tokens)
        assert space.contains(arch) and space.decode(space.encode(arch)) == arch
        networks.add(arch)
    assert len(networks) == space.num_networks < space.size
    with pytest.raises(ValueError, match=r"stage 1: skip 'identity' is not among"):  # where a skip does apply
        SearchSpace(blocks=[{"channels": 32, "layers": 2, "stride": 1}], skip_ops=["none", "pool"]).encode(
            "ds_r2_k3_s1_c32")


def test_tokens_are_order_free_and_defaults_omitted():
    assert canonical("ir_c24_e6_s2_k3_r2_se0.25") == "ir_r2_k3_s2_e6_c24_se0.25"
    assert canonical("ds_r1_k3_s1_c16_se0") == "ds_r1_k3_s1_c16"
    assert format_arch(parse_arch("cn_k5_r1_s1_c8_poolskip")) == "cn_r1_k5_s1_c8_poolskip"
    assert canonical("cn_k5_r1_s1_c8_poolskip") == "cn_r1_k5_s1_c8"  # 32 -> 8 channels: no skip op applies
    assert canonical("cn_k5_r1_s1_c32_poolskip") == "cn_r1_k5_s1_c32_poolskip"  # 32 -> 32: the pool skip does
    assert canonical("cn_k5_r1_s2_c32_noskip") == "cn_r1_k5_s2_c32"  # stride 2: identity is no skip either


def test_grammar_expresses_channels_outside_the_choice_lists(space):
    a1 = resolve_arch("mnasnet_a1")
    assert "c112" in a1
    assert not space.contains(a1)
    assert space.contains(MBV2.replace("ds_r1_k3_s1_c16", "ds_r1_k3_s1_c16"))
    with pytest.raises(ValueError, match=r"stage 5: filters 112 is not among"):
        space.encode(a1)


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("xx_r1_k3_s1_c16", r"stage 1 .*unknown block type 'xx'"),
        (MBV2.replace("ir_r3_k3_s2_e6_c32", "ir_r3_k3_s2_e6_c32_q7"), r"stage 3 .*unknown token 'q7' at token 7"),
        ("ds_r1_k3_s1", r"stage 1 .*missing token\(s\) c"),
        ("ir_r1_k3_s1_c16", r"missing token\(s\) e"),
        ("ds_r1_k3_s1_c16-", r"stage 2 .*unknown block type ''"),
        ("ds_r1_k3_k5_s1_c16", r"repeats 'k'"),
        ("ds_r1_k4_s1_c16", r"kernel must be odd"),
        ("ds_r0_k3_s1_c16", r"repeats must be a positive integer"),
        ("ds_r1_k3_s1_e6_c16", r"expansion applies only to 'ir'"),
        # reached torch as a C-level overflow traceback (sizes are 64-bit)
        ("ir_r1_k3_s1_e6_c99999999999999999999999", r"stage 1 .*out_channels must be at most 1,048,576"),
        ("ds_r2000000_k3_s1_c16", r"repeats must be at most 1,048,576"),
        ("ds_r1_k3_s1_c16_se1.5", r"se ratio must be in \[0, 1\)"),
        ("", r"non-empty"),
        # any script's digits were read as numbers: r\u0662 as r2 (int() and float() take them)
        ("ir_r\u0662_k3_s1_e6_c16", r"unknown token 'r\u0662' at token 2"),
        ("ir_r1_k3_s1_e6_c16_se\u0660.25", r"unknown token 'se\u0660.25' at token 7"),
    ],
)
def test_malformed_strings_name_the_offending_part(arch, message):
    with pytest.raises(ValueError, match=message):
        parse_arch(arch)


def test_bad_tokens_name_position_and_decision(space):
    tokens = space.sample_tokens(1, seed=0)[0]
    bad = list(tokens)
    bad[7] = 99
    with pytest.raises(ValueError, match=r"token 7 \(block2.kernel\) = 99 is out of range \[0, 2\)"):
        space.decode(bad)
    with pytest.raises(ValueError, match="expected 42 tokens"):
        space.decode(tokens[:-1])
    with pytest.raises(ValueError, match=r"token 0 .* must be an integer"):
        space.decode(["a", *tokens[1:]])
    with pytest.raises(ValueError, match="-1 is out of range"):
        space.decode([-1, *tokens[1:]])


def test_sampling_is_seeded(space):
    assert space.sample(10, seed=7) == space.sample(10, seed=7)
    assert space.sample(10, seed=7) != space.sample(10, seed=8)


def test_references_are_named_data():
    assert list_references() == ["mnasnet_a1", "mnasnet_b1", "mobilenet_v2"]
    assert resolve_arch("mobilenet_v2") == MBV2
    with pytest.raises(ValueError, match="unknown architecture 'resnet50'"):
        resolve_arch("resnet50")
    from search_spaces import register_reference

    with pytest.raises(ValueError, match="already registered"):
        register_reference("mobilenet_v2", MBV2)


@pytest.mark.parametrize("name", ["mnasnet_a2", "mobilenet_v3", "MnasNet_A1", "resnet50"])
def test_a_misspelt_reference_name_is_named_with_the_known_ones(name):
    # 'mnasnet_a2' was parsed as an architecture string: "stage 1: unknown block type 'mnasnet'"
    known = "known: mnasnet_a1, mnasnet_b1, mobilenet_v2"
    with pytest.raises(ValueError, match=rf"^unknown architecture '{name}': not a reference name \({known}\) and not"):
        resolve_arch(name)


def test_a_string_starting_with_a_block_type_is_still_read_as_an_architecture():
    with pytest.raises(ValueError, match=r"^stage 1 \('ir_r1_k3_s1_c16'\): missing token\(s\) e$"):
        resolve_arch("ir_r1_k3_s1_c16")


def test_one_network_has_one_string_and_the_count_of_networks_is_exact():
    """A one-layer block whose channels change drops every skip op (and a stride-2 one turns identity into none):
    ir_r1_..._c16 with noskip, poolskip or identity was one network under three strings, trained and timed three
    times, counted three times in the space's size and in a run's unique architectures."""
    from search_spaces.layers import network_layers

    spellings = ["ir_r1_k5_s1_e6_c16_se0.25_noskip", "ir_r1_k5_s1_e6_c16_se0.25", "ir_r1_k5_s1_e6_c16_se0.25_poolskip"]
    assert {canonical(a) for a in spellings} == {"ir_r1_k5_s1_e6_c16_se0.25"}
    # every kind of block: channels kept or changed, stride 1 or 2, one layer or two; each decision has every choice
    space = SearchSpace(blocks=[{"channels": 32, "layers": 1, "stride": 2}, {"channels": 32, "layers": 1, "stride": 1},
                                {"channels": 16, "layers": 2, "stride": 1}], conv_ops=["ds"], kernel_sizes=[3],
                        se_ratios=[0.0], skip_ops=["none", "identity", "pool"], filter_multipliers=[0.5, 1.0],
                        layer_deltas=[-1, 0])
    networks = {}
    for tokens in itertools.product(*(range(k) for k in space.num_choices)):
        arch = space.decode(tokens)
        assert canonical(arch) == arch and space.decode(space.encode(arch)) == arch
        layers = tuple(network_layers(arch, resolution=16, channels=3, num_classes=10))
        assert networks.setdefault(arch, layers) == layers
    assert len(set(networks.values())) == len(networks)  # distinct strings are distinct networks
    assert space.num_networks == len(networks) < space.size == 432
    default = SearchSpace.default()
    assert default.num_networks == 198_579_389_183_557_632 < default.size  # about 2.8 sequences per network
