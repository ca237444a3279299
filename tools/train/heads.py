"""Classification heads for training embeddings: the plain softmax baseline and the additive margin losses.

All margin heads compare the L2-normalised embedding with L2-normalised class centres (cosine ``cos θ``), change the
target logit, and scale by ``s`` (an explicit table, :data:`HEADS`):

- ``softmax``: a plain linear layer with bias on the raw embedding (the baseline the margin losses improve on).
- ``cosface`` (Wang et al. 2018, "CosFace"/AM-softmax): target logit ``s·(cos θ − m)``, default m = 0.35.
- ``arcface`` (Deng et al. 2019): target logit ``s·cos(θ + m)``, default m = 0.5. Where ``θ + m`` passes π the
  function stops decreasing, so there (θ > π − m) it continues linearly as ``cos θ − m·sin m`` (InsightFace's rule).
- ``combined`` (InsightFace's generalisation): ``s·(cos(m1·θ + m2) − m3)``; m1 = 1, m2 = 0.3, m3 = 0.2 by default.

The margin can be ramped up from 0 over the first steps (``set_margin_scale``): from scratch on a few thousand
photos, a full margin from the first step keeps every target logit low and training barely starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class Head(nn.Module):
    """Maps (embeddings, labels) to logits for cross-entropy; ``margin_scale`` in [0, 1] scales the margin."""

    margin_scale: float = 1.0

    def set_margin_scale(self, value: float) -> None:
        self.margin_scale = min(max(value, 0.0), 1.0)

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        """Logits without the margin (what a test-time classifier would see)."""
        raise NotImplementedError


class SoftmaxHead(Head):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(emb)
        return out

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.logits(emb)


class MarginHead(Head):
    """``s·(cos(m1·θ + m2) − m3)`` on the target class, ``s·cos θ`` elsewhere."""

    def __init__(self, dim: int, classes: int, s: float, m1: float, m2: float, m3: float, init: str = "small") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, dim))
        nn.init.normal_(self.weight, std=0.01)
        if init == "unit":
            # The logits see only the centres' direction, so the gradient is orthogonal to them and scales with
            # 1/length: from std 0.01 (length ~0.1) the first steps are huge and the centres grow ~20x. On fixed,
            # separable features that stalls a margin head (tests/test_train.py); on real from-scratch training a
            # partial run with unit centres did not learn faster (docs/results/train/README.md).
            with torch.no_grad():
                self.weight.copy_(F.normalize(self.weight))
        elif init != "small":
            raise ValueError(f"head init must be one of {HEAD_INITS}, got {init!r}")
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(emb.float()), F.normalize(self.weight.float())).clamp(-1.0, 1.0)

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        return self.s * self.cosine(emb)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(emb)
        target = cos.gather(1, labels[:, None]).squeeze(1)
        k = self.margin_scale
        m1, m2, m3 = 1.0 + (self.m1 - 1.0) * k, self.m2 * k, self.m3 * k
        if m1 == 1.0 and m2 == 0.0:
            changed = target - m3
        else:
            theta = torch.acos(target.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
            changed = torch.cos(m1 * theta + m2) - m3
            # past θ = (π − m2) / m1 the curve turns back up: continue it linearly instead (monotone in θ)
            limit = (math.pi - m2) / m1
            fallback = target - m3 - m2 * math.sin(m2)
            changed = torch.where(theta <= limit, changed, fallback)
        out = cos.scatter(1, labels[:, None], changed[:, None].to(cos.dtype))
        return self.s * out


HEAD_INITS = ("small", "unit")  # class centres: arcface_torch's normal(std 0.01), or the same scaled to unit length


@dataclass(frozen=True)
class HeadKind:
    build: Callable[[int, int, float, float, str], Head]  # (dim, classes, s, m, init) -> head
    scale: float  # default s
    margin: float  # default m (for combined: m2; m3 = 0.2)
    note: str


HEADS: dict[str, HeadKind] = {
    "softmax": HeadKind(lambda d, c, s, m, i: SoftmaxHead(d, c), 1.0, 0.0, "plain softmax cross-entropy (baseline)"),
    "cosface": HeadKind(lambda d, c, s, m, i: MarginHead(d, c, s, 1.0, 0.0, m, i), 64.0, 0.35, "s·(cos θ − m)"),
    "arcface": HeadKind(lambda d, c, s, m, i: MarginHead(d, c, s, 1.0, m, 0.0, i), 64.0, 0.5, "s·cos(θ + m)"),
    "combined": HeadKind(lambda d, c, s, m, i: MarginHead(d, c, s, 1.0, m, 0.2, i), 64.0, 0.3, "s·(cos(θ + m) − 0.2)"),
}


def build_head(
    kind: str, dim: int, classes: int, scale: float | None, margin: float | None, init: str = "small"
) -> Head:
    spec = HEADS[kind]
    s = spec.scale if scale is None else scale
    return spec.build(dim, classes, s, spec.margin if margin is None else margin, init)
