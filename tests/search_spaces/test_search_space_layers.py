"""A network as the list of its layers: the chain of layer models computes the whole model, and the space's
enumeration of distinct layers holds every layer of every architecture the space can produce."""

from __future__ import annotations

import pytest
import torch

from search_spaces import SearchSpace, build_model, resolve_arch
from search_spaces.builder import build_layer
from search_spaces.layers import LayerSpec, block_layer, effective_skip, network_layers, se_channels

EXAMPLES = ["ds_r1_k3_s1_c16_poolskip-cn_r2_k5_s2_c24_se0.25_poolskip-ir_r3_k3_s2_e6_c24_se0.25",
            "mnasnet_a1", "mnasnet_b1", "mobilenet_v2",
            # SE as wide as the layer's input: cin 1 (at least one channel) and round(0.95 x 10) = 10
            "cn_r2_k3_s1_c1_se0.25-ir_r2_k3_s1_e6_c10_se0.95"]


@pytest.mark.parametrize("arch", EXAMPLES + SearchSpace.default().sample(6, seed=11))
def test_chain_of_layer_models_is_the_whole_model(arch):
    from search_spaces import resolve_arch

    arch = resolve_arch(arch)
    model = build_model(arch, num_classes=10).eval()
    layers = network_layers(arch, resolution=48, channels=3, num_classes=10)
    modules = [model.stem] + [layer for stage in model.blocks for layer in stage]
    assert len(layers) == len(modules) + 1 and layers[0].kind == "stem" and layers[-1].kind == "head"
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    h = x
    with torch.no_grad():
        for spec, module in zip(layers, modules):
            assert h.shape[1:] == (spec.cin, spec.size, spec.size), spec.key
            part = build_layer(spec).eval()
            part.load_state_dict(module.state_dict())  # same modules, same parameter names
            h = part(h)
        head = build_layer(layers[-1]).eval()
        head.load_state_dict({k: v for k, v in model.state_dict().items() if k.split(".")[0] in ("head", "classifier")})
        assert torch.allclose(head(h), model(x), atol=1e-5)


def test_space_layers_hold_every_sampled_architecture():
    space = SearchSpace.default()
    table = set(space.layers(resolution=224, channels=3, num_classes=1000))
    assert len(table) == 1748  # the default space at 224 px (README: "Latency lookup tables")
    for arch in space.sample(3000, seed=5):
        missing = [s.key for s in network_layers(arch, resolution=224, channels=3, num_classes=1000) if s not in table]
        assert not missing, (arch, missing)
    # and no layer is unreachable: every entry appears in some sampled network
    seen = {s for arch in space.sample(20000, seed=6)
            for s in network_layers(arch, resolution=224, channels=3, num_classes=1000)}
    assert seen == table


def test_layer_rules_and_keys():
    assert effective_skip("identity", 16, 16, 2) == "none" and effective_skip("pool", 16, 16, 2) == "pool"
    assert effective_skip("pool", 16, 24, 1) == "none" and effective_skip("identity", 24, 24, 1) == "identity"
    assert se_channels(0.0, 40) == 0 and se_channels(0.25, 40) == 10 and se_channels(0.01, 8) == 1
    spec = network_layers("ir_r2_k5_s2_e6_c24_se0.25", resolution=224, channels=3, num_classes=1000)[2]
    assert spec.key == "ir_e6_k5_se6_skipid_i24o24_s1_h56_relu"
    assert LayerSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="layer kind"):
        LayerSpec("neck", 1, 1, 1)


def test_a_layer_rebuilds_its_own_se_width():
    # block_spec inverted the SE width as se / cin, which is 1.0 (no valid ratio) where the width equals cin
    for arch in EXAMPLES:
        for spec in network_layers(resolve_arch(arch), resolution=48, channels=3, num_classes=10)[1:-1]:
            block = spec.block_spec()
            assert se_channels(block.se_ratio, spec.cin) == spec.se, spec.key
            assert block_layer(block, spec.cin, spec.size, True) == spec
    with pytest.raises(ValueError, match="SE width 9 must be between 0 and the layer's input channels 8"):
        LayerSpec("layer", 8, 8, 4, block_type="cn", se=9).block_spec()
