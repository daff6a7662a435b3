"""Block specs -> ``nn.Module``. The only module of ``search_spaces`` that imports ``torch.nn``.

Network: stem (conv3x3, stride 2, BN, act) -> one stage per block -> head (conv1x1 to 1280, BN, act) ->
global average pooling -> dropout -> linear classifier. Layers of a stage repeat one design; only the first
layer carries the block's stride.

Layer designs (BN after every conv; ``act`` is ReLU unless configured):
  ``cn``  conv kxk(stride) -> act [-> SE]
  ``ds``  depthwise kxk(stride) -> act [-> SE] -> pointwise 1x1 (linear)
  ``ir``  pointwise 1x1 expand (skipped when e == 1) -> act -> depthwise kxk(stride) -> act [-> SE]
          -> pointwise 1x1 project (linear)
SE squeezes to ``round(se_ratio * layer input channels)`` (the public MnasNet ports) with a sigmoid gate.

Skip ops, applied per layer:
  ``identity``  x + f(x), only where stride is 1 and input and output channels match;
  ``pool``      avgpool3x3(stride)(x) + f(x), wherever input and output channels match;
  ``none``      f(x).
A skip that cannot apply (the channel count changes) is dropped for that layer: this is the one rule for
shape changes, the same as MobileNetV2/MnasNet drop the residual of a block's first layer.
"""

from __future__ import annotations

from torch import Tensor, nn

from search_spaces.arch import ArchSpec, BlockSpec
from search_spaces.layers import HEAD_CHANNELS, STEM_CHANNELS, LayerSpec, effective_skip, se_channels
from search_spaces.width import make_divisible

ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def _act(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name](inplace=True)
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}") from None


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = "relu"):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(_act(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int, act: str = "relu"):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = _act(act)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class SearchLayer(nn.Module):
    """One layer of a stage: the conv op's body plus the skip op."""

    def __init__(self, block: BlockSpec, cin: int, cout: int, stride: int, act: str = "relu"):
        super().__init__()
        self.out_channels = cout  # after the width multiplier: what describes the model (``info``) reports
        k = block.kernel
        se = se_channels(block.se_ratio, cin)
        body: list[nn.Module] = []
        if block.block_type == "cn":
            body.append(ConvBNAct(cin, cout, k, stride, act=act))
            if se:
                body.append(SqueezeExcite(cout, se, act))
        elif block.block_type == "ds":
            body.append(ConvBNAct(cin, cin, k, stride, groups=cin, act=act))
            if se:
                body.append(SqueezeExcite(cin, se, act))
            body.append(ConvBNAct(cin, cout, 1, act=None))
        else:  # "ir"
            mid = cin * block.expansion
            if block.expansion != 1:
                body.append(ConvBNAct(cin, mid, 1, act=act))
            body.append(ConvBNAct(mid, mid, k, stride, groups=mid, act=act))
            if se:
                body.append(SqueezeExcite(mid, se, act))
            body.append(ConvBNAct(mid, cout, 1, act=None))
        self.body = nn.Sequential(*body)

        self.skip_kind = effective_skip(block.skip, cin, cout, stride)
        self.shortcut: nn.Module | None = None
        if self.skip_kind == "pool":
            self.shortcut = nn.AvgPool2d(3, stride, padding=1, count_include_pad=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if self.skip_kind == "identity":
            return out + x
        if self.shortcut is not None:
            return out + self.shortcut(x)
        return out


class MnasNetModel(nn.Module):
    """A child network of the search space. ``arch`` keeps its canonical architecture string."""

    def __init__(
        self,
        spec: ArchSpec,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        stem_channels: int = STEM_CHANNELS,
        head_channels: int = HEAD_CHANNELS,
        activation: str = "relu",
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        _act(activation)
        self.arch = spec.to_string()

        # Widths are exact at width_mult 1 (so 112 or 12 channels stay as written) and otherwise rounded to
        # multiples of 8 as torchvision does.
        def width(c: int) -> int:
            return c if width_mult == 1.0 else make_divisible(c * width_mult, 8)

        cin = width(stem_channels)
        self.stem = ConvBNAct(in_channels, cin, 3, 2, act=activation)
        stages = []
        for block in spec.blocks:
            cout = width(block.out_channels)
            layers = []
            for i in range(block.repeats):
                layers.append(SearchLayer(block, cin, cout, block.stride if i == 0 else 1, activation))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*stages)
        head = make_divisible(head_channels * max(1.0, width_mult), 8) if width_mult > 1.0 else head_channels
        self.head = ConvBNAct(cin, head, 1, act=activation)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


class HeadLayer(nn.Module):
    """The network's end as a model of its own (per-layer latency tables): the same modules and forward as the end
    of :class:`MnasNetModel` (conv1x1 -> BN -> act -> global pooling -> dropout -> classifier)."""

    def __init__(self, cin: int, num_classes: int, activation: str = "relu", head_channels: int = HEAD_CHANNELS,
                 dropout: float = 0.2):
        super().__init__()
        self.head = ConvBNAct(cin, head_channels, 1, act=activation)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.pool(self.head(x)).flatten(1)))


def build_layer(spec: LayerSpec) -> nn.Module:
    """One layer of a network (:func:`search_spaces.layers.network_layers`) as a model of its own, built from the
    same modules the whole network uses, so it converts to the same TFLite ops."""
    if spec.kind == "stem":
        return ConvBNAct(spec.cin, spec.cout, spec.kernel, spec.stride, act=spec.activation)
    if spec.kind == "head":
        return HeadLayer(spec.cin, spec.cout, spec.activation)
    return SearchLayer(spec.block_spec(), spec.cin, spec.cout, spec.stride, spec.activation)
