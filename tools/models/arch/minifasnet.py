"""MiniFASNetV2 and MiniFASNetV1SE (minivision-ai Silent-Face-Anti-Spoofing), the passive anti-spoofing nets, built
from a checkpoint's tensor shapes so its state dict loads with strict=True.

The networks are pruned MobileFaceNets: every channel width was chosen by the pruning, so no width is hard-coded
here; ``MiniFASNetShape.from_state_dict`` reads them (and the number of residual blocks, the squeeze-and-excitation
widths and the final kernel) off the checkpoint.

State_dict layout (after stripping DataParallel's ``module.``): ``conv1`` (3x3/2 ConvBlock), ``conv2_dw`` (3x3
depthwise ConvBlock), then three stages, each a downsampling ``DepthWise`` (``conv_23``, ``conv_34``, ``conv_45``)
followed by a ``Residual`` stage (``conv_3``, ``conv_4``, ``conv_5``) whose blocks sit in ``model.<i>``; then
``conv_6_sep`` (1x1 ConvBlock), ``conv_6_dw`` (depthwise LinearBlock over the whole 5x5 map), flatten, ``linear``
(no bias), ``bn`` (BatchNorm1d) and ``prob`` (no bias) to 3 logits. A block is ``conv`` (1x1 expand) → ``conv_dw``
(3x3 depthwise) → ``project`` (1x1, no activation); in V1SE the last block of each residual stage scales
``project``'s output by a squeeze-and-excitation gate (``se_module``: global average pool → 1x1 ``fc1`` → ``bn1``
→ ReLU → 1x1 ``fc2`` → ``bn2`` → sigmoid) before the shortcut is added. Training's dropout before ``prob`` and its
auxiliary Fourier-spectrum branch are not in the checkpoints and do nothing in eval mode.

Input: 80x80 BGR, float 0-255 NCHW, no normalisation. Output: 3 logits; class 1 = real face.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

STAGES = (("conv_23", "conv_3"), ("conv_34", "conv_4"), ("conv_45", "conv_5"))
VARIANTS = ("MiniFASNetV2", "MiniFASNetV1SE")


class ShapeError(ValueError):
    """The state dict is not a MiniFASNet (a key is missing or a shape does not fit the layout)."""


class LinearBlock(nn.Module):
    """conv (no bias) → BN, no activation (projections and the final depthwise conv)."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.bn(self.conv(x))
        return out


class ConvBlock(LinearBlock):
    """conv (no bias) → BN → PReLU."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__(cin, cout, kernel, stride, padding, groups)
        self.prelu = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.prelu(super().forward(x))
        return out


class SqueezeExcite(nn.Module):
    """Channel gate: global average → 1x1 → BN → ReLU → 1x1 → BN → sigmoid, multiplied onto the input."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)
        gate = torch.relu(self.bn1(self.fc1(gate)))
        gate = torch.sigmoid(self.bn2(self.fc2(gate)))
        return x * gate


class DepthWise(nn.Module):
    """1x1 expand to ``mid`` → 3x3 depthwise (``stride``) → 1x1 projection [→ SE gate] [+ input]."""

    def __init__(
        self, cin: int, cout: int, mid: int, stride: int, residual: bool, se_hidden: int | None = None
    ) -> None:
        super().__init__()
        self.residual = residual
        self.conv = ConvBlock(cin, mid)
        self.conv_dw = ConvBlock(mid, mid, kernel=3, stride=stride, padding=1, groups=mid)
        self.project = LinearBlock(mid, cout)
        # Registered only when present so that the state-dict keys are exactly the checkpoint's.
        self.se_module = SqueezeExcite(cout, se_hidden) if se_hidden is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.project(self.conv_dw(self.conv(x)))
        if self.se_module is not None:
            y = self.se_module(y)
        return x + y if self.residual else y


class Residual(nn.Module):
    """Stride-1 residual ``DepthWise`` blocks at constant width, each with its own (pruned) expansion width."""

    def __init__(self, channels: int, mids: tuple[int, ...], se_hidden: tuple[int | None, ...]) -> None:
        super().__init__()
        self.model = nn.Sequential(
            *[DepthWise(channels, channels, m, 1, True, s) for m, s in zip(mids, se_hidden, strict=True)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


@dataclass(frozen=True)
class StageShape:
    """One downsampling block and the residual stage after it."""

    cout: int  # width of the stage (the downsampling block's projection)
    down_mid: int  # the downsampling block's expansion width
    mids: tuple[int, ...]  # each residual block's expansion width
    se_hidden: tuple[int | None, ...]  # each residual block's SE bottleneck width (None: no SE)


@dataclass(frozen=True)
class MiniFASNetShape:
    """Every width of one checkpoint: enough to build the module its state dict loads into."""

    stem: int  # conv1 / conv2_dw width
    stages: tuple[StageShape, StageShape, StageShape]
    sep: int  # conv_6_sep width
    head_kernel: int  # conv_6_dw kernel (the final map's size: 5 for 80x80 input)
    embedding: int  # linear / bn width
    classes: int
    in_channels: int = 3

    @property
    def has_se(self) -> bool:
        return any(s is not None for stage in self.stages for s in stage.se_hidden)

    @property
    def variant(self) -> str:
        """``MiniFASNetV1SE`` when the checkpoint carries SE gates, else ``MiniFASNetV2`` (the two published ones)."""
        return VARIANTS[1] if self.has_se else VARIANTS[0]

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> MiniFASNetShape:
        """Read the widths from the tensor shapes (keys without ``module.``); ``ShapeError`` when it does not fit."""

        def shape(key: str, ndim: int) -> tuple[int, ...]:
            tensor = state.get(key)
            if tensor is None:
                raise ShapeError(f"missing tensor {key}")
            if tensor.ndim != ndim:
                raise ShapeError(f"{key} has shape {tuple(tensor.shape)}, expected {ndim} dimensions")
            return tuple(int(v) for v in tensor.shape)

        stem = shape("conv1.conv.weight", 4)
        stages = []
        for down, res in STAGES:
            mid = shape(f"{down}.conv.conv.weight", 4)[0]
            cout = shape(f"{down}.project.conv.weight", 4)[0]
            blocks = sorted({int(m.group(1)) for k in state if (m := re.match(rf"{res}\.model\.(\d+)\.", k))})
            if not blocks or blocks != list(range(len(blocks))):
                raise ShapeError(f"residual stage {res} has blocks {blocks}, expected 0..n-1")
            mids = tuple(shape(f"{res}.model.{i}.conv.conv.weight", 4)[0] for i in blocks)
            se = tuple(
                shape(f"{res}.model.{i}.se_module.fc1.weight", 4)[0]
                if f"{res}.model.{i}.se_module.fc1.weight" in state
                else None
                for i in blocks
            )
            stages.append(StageShape(cout=cout, down_mid=mid, mids=mids, se_hidden=se))
        sep = shape("conv_6_sep.conv.weight", 4)
        head = shape("conv_6_dw.conv.weight", 4)
        linear = shape("linear.weight", 2)
        prob = shape("prob.weight", 2)
        if head[2] != head[3] or head[0] != sep[0] or head[1] != 1:
            raise ShapeError(f"conv_6_dw has shape {head}, expected a square depthwise kernel over {sep[0]} channels")
        return cls(
            stem=stem[0],
            stages=(stages[0], stages[1], stages[2]),
            sep=sep[0],
            head_kernel=head[2],
            embedding=linear[0],
            classes=prob[0],
            in_channels=stem[1],
        )


class MiniFASNet(nn.Module):
    """80x80 BGR (0-255, NCHW) → ``classes`` logits. Spatial size: 80 → 40 (conv1) → 20 → 10 → 5."""

    def __init__(self, shape: MiniFASNetShape) -> None:
        super().__init__()
        self.shape = shape
        c = shape.stem
        self.conv1 = ConvBlock(shape.in_channels, c, kernel=3, stride=2, padding=1)
        self.conv2_dw = ConvBlock(c, c, kernel=3, padding=1, groups=c)
        cin = c
        for (down, res), stage in zip(STAGES, shape.stages, strict=True):
            setattr(self, down, DepthWise(cin, stage.cout, stage.down_mid, stride=2, residual=False))
            setattr(self, res, Residual(stage.cout, stage.mids, stage.se_hidden))
            cin = stage.cout
        self.conv_6_sep = ConvBlock(cin, shape.sep)
        self.conv_6_dw = LinearBlock(shape.sep, shape.sep, kernel=shape.head_kernel, groups=shape.sep)
        self.linear = nn.Linear(shape.sep, shape.embedding, bias=False)
        self.bn = nn.BatchNorm1d(shape.embedding)
        self.prob = nn.Linear(shape.embedding, shape.classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2_dw(self.conv1(x))
        for down, res in STAGES:
            x = getattr(self, res)(getattr(self, down)(x))
        x = self.conv_6_dw(self.conv_6_sep(x))
        out: torch.Tensor = self.prob(self.bn(self.linear(torch.flatten(x, 1))))
        return out


def minifasnet(state: Mapping[str, torch.Tensor]) -> MiniFASNet:
    """The network for ``state`` (keys without ``module.``) with its weights loaded strictly, in eval mode."""
    model = MiniFASNet(MiniFASNetShape.from_state_dict(state))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ShapeError(f"keys do not fit the layout (missing {missing[:3]}, unexpected {unexpected[:3]})")
    wrong = [k for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    if wrong:
        raise ShapeError(f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the layout needs a different one")
    model.load_state_dict(dict(state), strict=True)
    return model.eval()


__all__ = ["VARIANTS", "MiniFASNet", "MiniFASNetShape", "ShapeError", "minifasnet"]
