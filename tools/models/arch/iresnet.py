"""IResNet (InsightFace ``arcface_torch`` ``backbones/iresnet.py``), written so its checkpoints load with strict=True.

The layout, module names (and therefore the state_dict keys) match the reference: ``conv1``, ``bn1``, ``prelu``,
``layer1``..``layer4`` of ``IBasicBlock`` (``bn1 → conv1 → bn2 → prelu → conv2(stride) → bn3`` plus the identity or a
``downsample`` of 1x1 conv + BN), then ``bn2``, ``dropout``, ``fc`` (512·7·7 → num_features) and the ``features``
BatchNorm1d. Input 112x112. The reference's ``fp16`` flag only wraps the convolutions in CUDA autocast while
training; it adds no parameters, so an fp32 export of an fp16-trained checkpoint is exact up to fp32 rounding.
"""

from __future__ import annotations

import torch
from torch import nn

# name -> blocks per stage, as in arcface_torch (r18, r34, r50, r100)
DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual unit: BN, 3x3 conv, BN, PReLU, 3x3 conv (carries the stride), BN, + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut: torch.Tensor = x if self.downsample is None else self.downsample(x)
        return y + shortcut


class IResNet(nn.Module):
    """112x112 RGB → ``num_features`` (512) embedding; four stages of 64/128/256/512 channels, each halving H and W."""

    def __init__(self, depths: tuple[int, int, int, int], num_features: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        widths = (64, 128, 256, 512)
        cin = 64
        stages: list[nn.Sequential] = []
        for width, n in zip(widths, depths, strict=True):
            blocks = [IBasicBlock(cin, width, stride=2)] + [IBasicBlock(width, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        out: torch.Tensor = self.features(self.fc(x))
        return out


def iresnet(name: str, num_features: int = 512) -> IResNet:
    return IResNet(DEPTHS[name], num_features=num_features)
