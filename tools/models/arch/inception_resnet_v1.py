"""Inception-ResNet-v1 as used by FaceNet 20180408 (davidsandberg/facenet ``src/models/inception_resnet_v1.py``).

Inference form: every convolution carries a bias (TensorFlow's batch-norm folded into it, or the block's own up
projection bias), the bottleneck's batch-norm is folded into the linear layer. Module names follow the TensorFlow
scopes so that ``tf_scopes()`` maps each GraphDef variable scope onto the layer that holds its constants.

Layout (input 160x160): stem (Conv2d_1a … Conv2d_4b) → 5x block35 (scale 0.17) → Mixed_6a (reduction A) → 10x
block17 (0.10) → Mixed_7a (reduction B) → 5x block8 (0.20) → Block8 (scale 1.0, no activation) → global average pool
→ Bottleneck (1792 → 512, batch-norm folded) → L2 normalisation (``embeddings``, as in the frozen graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EMBEDDING_DIM = 512
INPUT_SIZE = 160


def _conv(cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, same: bool = False) -> nn.Conv2d:
    """A convolution with TensorFlow's VALID or (stride-1, odd-kernel, hence symmetric) SAME padding."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = (kh // 2, kw // 2) if same else (0, 0)
    return nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=padding, bias=True)


class ConvRelu(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, same: bool = True) -> None:
        super().__init__()
        self.conv = _conv(cin, cout, kernel, stride, same)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class Block35(nn.Module):
    """35x35 residual block (17x17 at 160x160 input)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.branch_0 = nn.ModuleDict({"Conv2d_1x1": ConvRelu(256, 32, 1)})
        self.branch_1 = nn.ModuleDict({"Conv2d_0a_1x1": ConvRelu(256, 32, 1), "Conv2d_0b_3x3": ConvRelu(32, 32, 3)})
        self.branch_2 = nn.ModuleDict(
            {
                "Conv2d_0a_1x1": ConvRelu(256, 32, 1),
                "Conv2d_0b_3x3": ConvRelu(32, 32, 3),
                "Conv2d_0c_3x3": ConvRelu(32, 32, 3),
            }
        )
        self.up = _conv(96, 256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([_seq(self.branch_0, x), _seq(self.branch_1, x), _seq(self.branch_2, x)], dim=1)
        return F.relu(x + self.scale * self.up(mixed))


class Block17(nn.Module):
    """17x17 residual block (8x8 at 160x160 input)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.branch_0 = nn.ModuleDict({"Conv2d_1x1": ConvRelu(896, 128, 1)})
        self.branch_1 = nn.ModuleDict(
            {
                "Conv2d_0a_1x1": ConvRelu(896, 128, 1),
                "Conv2d_0b_1x7": ConvRelu(128, 128, (1, 7)),
                "Conv2d_0c_7x1": ConvRelu(128, 128, (7, 1)),
            }
        )
        self.up = _conv(256, 896, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([_seq(self.branch_0, x), _seq(self.branch_1, x)], dim=1)
        return F.relu(x + self.scale * self.up(mixed))


class Block8(nn.Module):
    """8x8 residual block (3x3 at 160x160 input); the last one has no activation."""

    def __init__(self, scale: float, activation: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.activation = activation
        self.branch_0 = nn.ModuleDict({"Conv2d_1x1": ConvRelu(1792, 192, 1)})
        self.branch_1 = nn.ModuleDict(
            {
                "Conv2d_0a_1x1": ConvRelu(1792, 192, 1),
                "Conv2d_0b_1x3": ConvRelu(192, 192, (1, 3)),
                "Conv2d_0c_3x1": ConvRelu(192, 192, (3, 1)),
            }
        )
        self.up = _conv(384, 1792, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([_seq(self.branch_0, x), _seq(self.branch_1, x)], dim=1)
        out = x + self.scale * self.up(mixed)
        return F.relu(out) if self.activation else out


class ReductionA(nn.Module):
    """Mixed_6a: 256 → 896 channels, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.branch_0 = nn.ModuleDict({"Conv2d_1a_3x3": ConvRelu(256, 384, 3, stride=2, same=False)})
        self.branch_1 = nn.ModuleDict(
            {
                "Conv2d_0a_1x1": ConvRelu(256, 192, 1),
                "Conv2d_0b_3x3": ConvRelu(192, 192, 3),
                "Conv2d_1a_3x3": ConvRelu(192, 256, 3, stride=2, same=False),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d(x, 3, stride=2)
        return torch.cat([_seq(self.branch_0, x), _seq(self.branch_1, x), pool], dim=1)


class ReductionB(nn.Module):
    """Mixed_7a: 896 → 1792 channels, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.branch_0 = nn.ModuleDict(
            {"Conv2d_0a_1x1": ConvRelu(896, 256, 1), "Conv2d_1a_3x3": ConvRelu(256, 384, 3, stride=2, same=False)}
        )
        self.branch_1 = nn.ModuleDict(
            {"Conv2d_0a_1x1": ConvRelu(896, 256, 1), "Conv2d_1a_3x3": ConvRelu(256, 256, 3, stride=2, same=False)}
        )
        self.branch_2 = nn.ModuleDict(
            {
                "Conv2d_0a_1x1": ConvRelu(896, 256, 1),
                "Conv2d_0b_3x3": ConvRelu(256, 256, 3),
                "Conv2d_1a_3x3": ConvRelu(256, 256, 3, stride=2, same=False),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d(x, 3, stride=2)
        return torch.cat([_seq(self.branch_0, x), _seq(self.branch_1, x), _seq(self.branch_2, x), pool], dim=1)


def _seq(layers: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    for layer in layers.values():
        x = layer(x)
    return x


class InceptionResnetV1(nn.Module):
    """FaceNet's Inception-ResNet-v1. Input: (N, 3, 160, 160) prewhitened RGB; output (N, 512)."""

    block35_scale = 0.17
    block17_scale = 0.10
    block8_scale = 0.20

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
        self.stem = nn.ModuleDict(
            {
                "Conv2d_1a_3x3": ConvRelu(3, 32, 3, stride=2, same=False),
                "Conv2d_2a_3x3": ConvRelu(32, 32, 3, same=False),
                "Conv2d_2b_3x3": ConvRelu(32, 64, 3),
                "MaxPool_3a_3x3": nn.MaxPool2d(3, stride=2),
                "Conv2d_3b_1x1": ConvRelu(64, 80, 1, same=False),
                "Conv2d_4a_3x3": ConvRelu(80, 192, 3, same=False),
                "Conv2d_4b_3x3": ConvRelu(192, 256, 3, stride=2, same=False),
            }
        )
        self.repeat = nn.ModuleList([Block35(self.block35_scale) for _ in range(5)])
        self.mixed_6a = ReductionA()
        self.repeat_1 = nn.ModuleList([Block17(self.block17_scale) for _ in range(10)])
        self.mixed_7a = ReductionB()
        self.repeat_2 = nn.ModuleList([Block8(self.block8_scale) for _ in range(5)])
        self.block8 = Block8(1.0, activation=False)
        self.bottleneck = nn.Linear(1792, EMBEDDING_DIM, bias=True)  # batch-norm folded into weight and bias

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck output before L2 normalisation (the graph's ``Bottleneck/BatchNorm/Reshape_1``)."""
        x = _seq(self.stem, x)
        for block in self.repeat:
            x = block(x)
        x = self.mixed_6a(x)
        for block in self.repeat_1:
            x = block(x)
        x = self.mixed_7a(x)
        for block in self.repeat_2:
            x = block(x)
        x = self.block8(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        out: torch.Tensor = self.bottleneck(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        if self.normalize:
            # The graph's ``embeddings``: x * rsqrt(max(sum(x^2), 1e-10)).
            out = out * torch.rsqrt(torch.clamp((out * out).sum(dim=1, keepdim=True), min=1e-10))
        return out

    def residual_blocks(self) -> dict[str, Block35 | Block17 | Block8]:
        """TensorFlow scope → residual block (for their ``mul/x`` scale constants)."""
        blocks: dict[str, Block35 | Block17 | Block8] = {}
        for prefix, blocks_list in (("Repeat/block35", self.repeat), ("Repeat_1/block17", self.repeat_1)):
            for i, block in enumerate(blocks_list, 1):
                assert isinstance(block, Block35 | Block17)
                blocks[f"{prefix}_{i}"] = block
        for i, block in enumerate(self.repeat_2, 1):
            assert isinstance(block, Block8)
            blocks[f"Repeat_2/block8_{i}"] = block
        blocks["Block8"] = self.block8
        return blocks

    def tf_scopes(self) -> dict[str, nn.Conv2d]:
        """TensorFlow variable scope (below ``InceptionResnetV1/``) → the convolution holding its constants."""
        scopes: dict[str, nn.Conv2d] = {}
        for name, layer in self.stem.items():
            if isinstance(layer, ConvRelu):
                scopes[name] = layer.conv
        branched: dict[str, nn.Module] = {"Mixed_6a": self.mixed_6a, "Mixed_7a": self.mixed_7a}
        branched.update(self.residual_blocks())
        for prefix, module in branched.items():
            for b in range(4):
                branch = getattr(module, f"branch_{b}", None)
                if isinstance(branch, nn.ModuleDict):
                    for name, layer in branch.items():
                        assert isinstance(layer, ConvRelu)
                        scopes[f"{prefix}/Branch_{b}/{name}"] = layer.conv
            up = getattr(module, "up", None)
            if isinstance(up, nn.Conv2d):
                scopes[f"{prefix}/Conv2d_1x1"] = up
        return scopes
