"""Face-recognition backbones people train with ArcFace loss (InsightFace ``arcface_torch`` layouts, plus the
MobileFaceNet paper's width and DenseNet-121), for ``tools train`` and ``tools export``.

``build(name)`` returns an untrained module whose ``state_dict`` keys are exactly those of the reference
implementation, so a ``backbone.pth`` saved by arcface_torch loads into it with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tools.models.arch.densenet import densenet121
from tools.models.arch.iresnet import DEPTHS, iresnet
from tools.models.arch.mobilefacenet import MobileFaceNet, mobilefacenet


def _iresnet_factory(name: str) -> Callable[[int], nn.Module]:
    return lambda num_features: iresnet(name, num_features)


ARCHS: dict[str, Callable[[int], nn.Module]] = {name: _iresnet_factory(name) for name in DEPTHS}
ARCHS["mobilefacenet"] = mobilefacenet
# The MobileFaceNet paper's width (scale 1, ~1 M parameters at 128-D): 2.7x cheaper to train on a CPU than ``mbf``.
ARCHS["mobilefacenet-s1"] = lambda num_features: MobileFaceNet(num_features, scale=1)
# The origin's backbone (torchvision's layout, written out in tools/models/arch/densenet.py).
ARCHS["densenet121"] = densenet121


def build(name: str, num_features: int = 512) -> nn.Module:
    """An untrained ``name`` backbone (one of ``ARCHS``) producing ``num_features``-D embeddings."""
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r} (known: {', '.join(ARCHS)})")
    return ARCHS[name](num_features)


__all__ = ["ARCHS", "build"]
