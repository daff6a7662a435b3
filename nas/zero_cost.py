"""Training-free scores of a child from one minibatch: SynFlow and the NASWOT activation-pattern score.

Why: a score that ranks architectures from a forward (and backward) pass at initialisation costs a fraction of a
second where proxy training costs tens of seconds, so where it ranks well it can pre-filter or replace the proxy.
Both are implemented here from their papers' definitions (no third-party code):

``synflow`` (Tanaka et al., NeurIPS 2020, as a NAS score in Abdelfattah et al., ICLR 2021): the network at
  initialisation with every parameter replaced by its absolute value, batch norm at its initial statistics (the
  identity: evaluation mode), activations removed (with non-negative weights and an all-ones input a ReLU is the
  identity anyway; ReLU6 would clip and cut the gradient flow), in float64. ``R = sum(f(1))`` for an all-ones
  input of the data's shape; the score is ``sum |theta * dR/dtheta|`` over the weights of every convolution and
  linear layer. Reported as its natural logarithm (the sum reaches 1e100 and beyond on deep children; the ranking
  is the same).
``naswot`` (Mellor et al., "Neural Architecture Search without Training", ICML 2021): for a minibatch of N images,
  the binary code ``c_i`` of image i says which units are active (input > 0) at every ReLU of the network (training
  mode, as in the paper); ``K[i, j]`` = number of units where ``c_i`` and ``c_j`` agree (N_A minus the Hamming
  distance); the score is ``log |det K|``.

``compute_scores`` is deterministic for a seed (the seed draws the initial weights, as ``train_child`` does, and
the minibatch) and never raises for a bad child: a score that cannot be computed is ``None`` and ``error`` says why.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mnas_common.checks import positive_int
from mnas_common.errors import first_line

__all__ = ["SCORES", "compute_scores", "naswot", "synflow"]


def synflow(model: nn.Module, x: torch.Tensor) -> float:
    """ln of the SynFlow score of ``model`` (modified in place: pass a copy) for inputs shaped like ``x``."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, (nn.ReLU, nn.ReLU6)):
                setattr(module, child_name, nn.Identity())
    model = model.double().eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    model.zero_grad(set_to_none=True)
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64)
    model(ones).sum().backward()
    total = 0.0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.grad is not None:
                total += float((module.weight * module.weight.grad).abs().sum())
    if not total > 0:
        raise ValueError(f"SynFlow sum is {total} (no gradient reaches the weights)")
    return math.log(total)


def naswot(model: nn.Module, x: torch.Tensor) -> float:
    """log|det K| of the activation-pattern kernel of ``model`` on the minibatch ``x`` (needs >= 2 images)."""
    if len(x) < 2:
        raise ValueError("NASWOT needs a minibatch of at least 2 images")
    kernel = torch.zeros((len(x), len(x)), dtype=torch.float64)

    def count(_module, inputs):
        codes = (inputs[0].detach().reshape(len(x), -1) > 0).to(torch.float64)
        kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

    hooks = [m.register_forward_pre_hook(count) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    if not hooks:
        raise ValueError("NASWOT: the network has no ReLU units")
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    sign, logdet = np.linalg.slogdet(kernel.numpy())
    if sign <= 0 or not math.isfinite(logdet):
        raise ValueError("NASWOT kernel is singular (two images share one activation pattern)")
    return float(logdet)


SCORES: dict[str, Callable[[nn.Module, torch.Tensor], float]] = {"synflow": synflow, "naswot": naswot}


def _minibatch(data: Any, batch_size: int, seed: int) -> torch.Tensor:
    """``batch_size`` training images drawn with ``seed``, normalised as the trainer normalises them."""
    from nas.trainer import BatchLoader

    loader = BatchLoader(data.train, min(batch_size, len(data.train)), mean=data.mean, std=data.std,
                         device=torch.device("cpu"), generator=np.random.default_rng(seed), augment=False, prefetch=1,
                         channels_last=False, drop_last=False)
    x, _ = next(iter(loader))
    return x


def compute_scores(arch: str, data: Any, names: Sequence[str] = ("synflow", "naswot"), *, seed: int = 0,
                   batch_size: int = 64) -> dict[str, Any]:
    """Training-free scores of ``arch`` (architecture string or reference name) on one minibatch of ``data``.

    Returns ``{name: float or None for each name, "seconds": wall time, "error": None or "name: reason; ..."}``
    (higher scores are expected to mean better architectures). Unknown score names or a bad ``batch_size`` raise
    ``ValueError`` (caller's mistake); a child that cannot be built or scored comes back with ``None`` and a reason.
    """
    from search_spaces import build_model

    names = tuple(names)
    unknown = [n for n in names if n not in SCORES]
    if unknown or not names:
        raise ValueError(f"unknown training-free score(s) {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(SCORES)}")
    positive_int("batch_size", batch_size)
    out: dict[str, Any] = {name: None for name in names}
    errors: list[str] = []
    start = time.perf_counter()
    try:
        torch.manual_seed(seed)
        try:
            model = build_model(arch, num_classes=data.num_classes, in_channels=data.channels)
        except Exception as exc:
            raise ValueError(f"invalid architecture: {first_line(exc)}") from None
        x = _minibatch(data, batch_size, seed)
        for name in names:
            try:
                value = SCORES[name](copy.deepcopy(model), x)
                if not math.isfinite(value):
                    raise ValueError(f"score is {value}")
                out[name] = value
            except Exception as exc:
                errors.append(f"{name}: {first_line(exc, with_type=not isinstance(exc, ValueError))}")
    except Exception as exc:
        errors = [f"{name}: {first_line(exc, with_type=not isinstance(exc, ValueError))}" for name in names]
    out["seconds"] = time.perf_counter() - start
    out["error"] = "; ".join(errors) or None
    return out
