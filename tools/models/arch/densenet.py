"""DenseNet-121 (Huang et al. 2017) as a face-embedding backbone for 112x112 aligned faces.

The origin of face-kiosk trained this backbone with an ArcFace margin loss. torchvision is not a dependency, so the
network is written here: the ImageNet layout (growth 32, blocks 6/12/24/16, bottleneck 4x, compression 0.5) with
InsightFace's "E" output layer (BatchNorm, dropout, fully connected to ``num_features``, BatchNorm) in place of the
classifier, which keeps the spatial layout of the last 3x3 feature map instead of averaging it away.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROWTH = 32
BLOCKS = (6, 12, 24, 16)
BN_SIZE = 4
STEM = 64
INPUT = 112


class DenseLayer(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, BN_SIZE * GROWTH, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(BN_SIZE * GROWTH)
        self.conv2 = nn.Conv2d(BN_SIZE * GROWTH, GROWTH, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        y = self.conv2(F.relu(self.norm2(y)))
        return torch.cat([x, y], dim=1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.norm(x))), 2)


class DenseNet121(nn.Module):
    """(N, 3, 112, 112) → (N, ``num_features``): 11.7 M parameters at 512-D (7.0 M in the trunk)."""

    def __init__(self, num_features: int = 512, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, STEM, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(STEM),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        ]
        channels, size = STEM, INPUT // 4
        for i, n in enumerate(BLOCKS):
            for _ in range(n):
                layers.append(DenseLayer(channels))
                channels += GROWTH
            if i < len(BLOCKS) - 1:
                layers.append(Transition(channels, channels // 2))
                channels, size = channels // 2, size // 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features_trunk = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * size * size, num_features)
        self.features = nn.BatchNorm1d(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features_trunk(x)
        out: torch.Tensor = self.features(self.fc(self.dropout(torch.flatten(x, 1))))
        return out


def densenet121(num_features: int = 512) -> DenseNet121:
    return DenseNet121(num_features)
