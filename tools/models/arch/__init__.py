"""Face-recognition backbones people train with ArcFace loss (InsightFace ``arcface_torch`` layouts), for export.

``build(name)`` returns an untrained module whose ``state_dict`` keys are exactly those of the reference
implementation, so a ``backbone.pth`` saved by arcface_torch loads into it with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from tools.models.arch.iresnet import DEPTHS, iresnet
from tools.models.arch.mobilefacenet import mobilefacenet


def _iresnet_factory(name: str) -> Callable[[int], nn.Module]:
    return lambda num_features: iresnet(name, num_features)


ARCHS: dict[str, Callable[[int], nn.Module]] = {name: _iresnet_factory(name) for name in DEPTHS}
ARCHS["mobilefacenet"] = mobilefacenet


def build(name: str, num_features: int = 512) -> nn.Module:
    """An untrained ``name`` backbone (one of ``ARCHS``) producing ``num_features``-D embeddings."""
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r} (known: {', '.join(ARCHS)})")
    return ARCHS[name](num_features)


__all__ = ["ARCHS", "build"]
