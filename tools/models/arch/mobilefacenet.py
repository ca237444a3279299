"""MobileFaceNet as in InsightFace ``arcface_torch`` ``backbones/mobilefacenet.py`` (``get_mbf``: blocks (1, 4, 6, 2),
scale 2, 512-D), written so its checkpoints load with strict=True.

State_dict layout: ``layers`` is a list — a 3x3/2 ConvBlock, a grouped 3x3 ConvBlock, then alternating DepthWise
(downsampling) and Residual stages; ``conv_sep`` (1x1 to 512) and the GDC head ``features`` (7x7 depthwise
LinearBlock, flatten, bias-free Linear, BatchNorm1d). Every ConvBlock / LinearBlock keeps its modules in an inner
``layers`` Sequential (conv, BN[, PReLU]), as the reference does. The ``fp16`` flag of the reference is a training-time
autocast and adds no parameters.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """conv (no bias) → BN → PReLU."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out


class LinearBlock(nn.Module):
    """conv (no bias) → BN, no activation."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``mid`` → 3x3 depthwise (``stride``) → 1x1 linear projection [+ input]."""

    def __init__(self, cin: int, cout: int, mid: int, stride: int = 2, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(cin, mid),
            ConvBlock(mid, mid, kernel=3, stride=stride, padding=1, groups=mid),
            LinearBlock(mid, cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.layers(x)
        return x + y if self.residual else y


class Residual(nn.Module):
    """``n`` stride-1 residual DepthWise units at constant width."""

    def __init__(self, channels: int, n: int, mid: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(channels, channels, mid, stride=1, residual=True) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out


class GDC(nn.Module):
    """Global depthwise convolution head: 7x7 depthwise LinearBlock → flatten → Linear (no bias) → BatchNorm1d."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=7, groups=512),
            nn.Flatten(),
            nn.Linear(512, num_features, bias=False),
            nn.BatchNorm1d(num_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out


class MobileFaceNet(nn.Module):
    """112x112 RGB → ``num_features`` embedding (arcface_torch ``mbf``: 2.06 M parameters at scale 2)."""

    def __init__(
        self, num_features: int = 512, blocks: tuple[int, int, int, int] = (1, 4, 6, 2), scale: int = 2
    ) -> None:
        super().__init__()
        c1, c2 = 64 * scale, 128 * scale
        # arcface_torch: a grouped 3x3 ConvBlock when blocks[0] == 1, else a Residual stage (mbf_large)
        stem: nn.Module = (
            ConvBlock(c1, c1, kernel=3, padding=1, groups=64) if blocks[0] == 1 else Residual(c1, blocks[0], 128)
        )
        self.layers = nn.ModuleList(
            [
                ConvBlock(3, c1, kernel=3, stride=2, padding=1),
                stem,
                DepthWise(c1, c1, mid=128),
                Residual(c1, blocks[1], mid=128),
                DepthWise(c1, c2, mid=256),
                Residual(c2, blocks[2], mid=256),
                DepthWise(c2, c2, mid=512),
                Residual(c2, blocks[3], mid=256),
            ]
        )
        self.conv_sep = ConvBlock(c2, 512)
        self.features = GDC(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        out: torch.Tensor = self.features(self.conv_sep(x))
        return out


def mobilefacenet(num_features: int = 512) -> MobileFaceNet:
    return MobileFaceNet(num_features=num_features)
