"""Builder: exact reference params/MACs, every sample runs forward, skip rules, width multiplier."""

from __future__ import annotations

import pytest
import torch
import torchvision

from search_spaces import SearchSpace, build_model, count_params_macs, get_reference
from search_spaces.builder import SearchLayer
from search_spaces.profile import count_macs

torch.set_num_threads(2)


@pytest.mark.parametrize(
    ("name", "params", "macs"),
    [
        ("mobilenet_v2", 3_504_872, 300_774_272),
        ("mnasnet_b1", 4_383_312, 314_415_872),
        ("mnasnet_a1", 3_887_038, 311_579_072),
    ],
)
def test_reference_params_and_macs_are_exact(name, params, macs):
    model = build_model(name, num_classes=1000)
    assert count_params_macs(model, 224, 3) == (params, macs)
    meta = get_reference(name).meta
    assert (meta["params"], meta["macs"]) == (params, macs)


@pytest.mark.parametrize(
    ("name", "factory"),
    [("mobilenet_v2", torchvision.models.mobilenet_v2), ("mnasnet_b1", torchvision.models.mnasnet1_0)],
)
def test_references_equal_torchvision_layer_by_layer(name, factory):
    ours, theirs = build_model(name).eval(), factory().eval()
    shapes = lambda m: sorted(tuple(p.shape) for p in m.parameters())  # noqa: E731
    assert shapes(ours) == shapes(theirs)
    assert count_params_macs(theirs, 224, 3) == count_params_macs(ours, 224, 3)


def test_every_sample_builds_and_runs_forward():
    space = SearchSpace.default()
    archs = space.sample(12, seed=2024)
    with torch.no_grad():
        for arch in archs:
            for channels in (1, 3):
                model = build_model(arch, num_classes=10, in_channels=channels).eval()
                out = model(torch.randn(2, channels, 32, 32))
                assert out.shape == (2, 10)
                assert torch.isfinite(out).all()
            big = build_model(arch, num_classes=1000).eval()
            assert big(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_odd_resolutions_and_training_mode_backward():
    model = build_model("mnasnet_a1", num_classes=7, in_channels=1, dropout=0.5)
    out = model(torch.randn(3, 1, 27, 27))
    out.sum().backward()
    assert out.shape == (3, 7)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _layers(model):
    return [m for m in model.modules() if isinstance(m, SearchLayer)]


def test_skip_ops_apply_only_where_shapes_allow():
    arch = "ir_r2_k3_s2_e6_c32-ir_r2_k3_s2_e6_c32_poolskip-ir_r2_k3_s1_e6_c32_noskip"
    model = build_model(arch, num_classes=10)
    skips = [layer.skip_kind for layer in _layers(model)]
    # block 1: first layer changes channels (32 -> 32 is the stem's width, stride 2: identity impossible)
    # block 2: pool skip applies to both layers (channels match, pool carries the stride)
    # block 3: no skip at all
    assert skips == ["none", "identity", "pool", "pool", "none", "none"]
    x = torch.randn(1, 3, 64, 64)
    assert model(x).shape == (1, 10)


def test_width_multiplier_rounds_to_multiples_of_eight():
    narrow = build_model("mobilenet_v2", width_mult=0.5)
    convs = [m.out_channels for m in narrow.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c % 8 == 0 for c in convs)
    assert count_params_macs(narrow, 224, 3)[0] < 3_504_872
    # torchvision's mobilenet_v2(width_mult=0.5) uses the same rounding policy
    assert count_params_macs(narrow, 224, 3) == count_params_macs(torchvision.models.mobilenet_v2(width_mult=0.5), 224, 3)


def test_mac_counter_is_per_module():
    model = build_model("mobilenet_v2")
    total, per_module = count_macs(model, 224, 3)
    assert total == 300_774_272
    assert sum(per_module[f"MnasNetModel.blocks.{i}"] for i in range(7)) < total


def test_bad_builder_arguments():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        build_model("mobilenet_v2", activation="gelu")
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("nope")


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_profile_equals_the_flop_counter_on_the_built_model(seed):
    # profile_arch counts from the layer list (microseconds); the oracle runs PyTorch's FLOP counter on the model
    # built on the meta device. Params, MACs and activation elements must agree exactly, at any input.
    from search_spaces import profile_arch
    from search_spaces.profile import profile_model

    archs = SearchSpace.default().sample(12, seed=seed)
    archs += ["cn_r2_k3_s2_c24_se0.25_poolskip-ds_r2_k5_s1_c24_se0.25_poolskip-ir_r2_k3_s2_e1_c32_se0.25",
              "ds_r1_k3_s1_c16_noskip-ir_r3_k5_s2_e3_c16_poolskip"] if seed == 0 else []
    for arch in archs:
        for resolution, channels, classes in ((224, 3, 1000), (29, 1, 7)):
            mine = profile_arch(arch, resolution=resolution, in_channels=channels, num_classes=classes)
            oracle = profile_model(lambda: build_model(arch, num_classes=classes, in_channels=channels),
                                   resolution, channels)
            assert mine == oracle, arch
