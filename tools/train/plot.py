"""The training run's picture: loss and validation accuracy by epoch, drawn with OpenCV (no plotting library)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

W, H = 900, 380
PANEL_W = 420
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 60, 20, 40, 50
COLOURS = [(200, 90, 20), (40, 140, 40), (30, 30, 200), (140, 0, 140)]
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _panel(
    img: npt.NDArray[np.uint8],
    x0: int,
    title: str,
    series: Sequence[tuple[str, list[tuple[float, float]]]],
    y_range: tuple[float, float] | None,
) -> None:
    left, right, top, bottom = x0 + MARGIN_L, x0 + PANEL_W - MARGIN_R, MARGIN_T, H - MARGIN_B
    cv2.putText(img, title, (left, 25), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    points = [p for _, s in series for p in s]
    if not points:
        cv2.putText(img, "no data", (left + 10, top + 40), FONT, 0.5, (90, 90, 90), 1, cv2.LINE_AA)
        return
    xs = [p[0] for p in points]
    x_lo, x_hi = min(xs), max(max(xs), min(xs) + 1)
    if y_range is None:
        ys = [p[1] for p in points]
        pad = (max(ys) - min(ys)) * 0.05 or 0.5
        y_lo, y_hi = min(ys) - pad, max(ys) + pad
    else:
        y_lo, y_hi = y_range

    def to_px(x: float, y: float) -> tuple[int, int]:
        px = left + (x - x_lo) / (x_hi - x_lo) * (right - left)
        py = bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)
        return round(px), round(py)

    cv2.rectangle(img, (left, top), (right, bottom), (120, 120, 120), 1)
    for k in range(5):
        y = y_lo + (y_hi - y_lo) * k / 4
        _, py = to_px(x_lo, y)
        cv2.line(img, (left, py), (right, py), (225, 225, 225), 1)
        cv2.putText(img, f"{y:.2f}", (x0 + 8, py + 4), FONT, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
    for e in sorted({int(x) for x in xs}):
        px, _ = to_px(e, y_lo)
        cv2.putText(img, str(e), (px - 4, bottom + 16), FONT, 0.38, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.putText(img, "epoch", ((left + right) // 2 - 20, bottom + 36), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    for k, (name, pts) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        px_pts = [to_px(x, y) for x, y in pts]
        for a, b in itertools.pairwise(px_pts):
            cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
        for p in px_pts:
            cv2.circle(img, p, 3, colour, -1, cv2.LINE_AA)
        cv2.putText(img, name, (left + 8, top + 18 + 18 * k), FONT, 0.42, colour, 1, cv2.LINE_AA)


def plot_training(path: Path, log: dict[str, Any]) -> None:
    """Left: training loss by epoch. Right: validation accuracy by epoch (epoch 0 = before training)."""
    epochs = log.get("epochs", [])
    loss = [(float(e["epoch"]), float(e["loss"])) for e in epochs if "loss" in e]
    acc: dict[str, list[tuple[float, float]]] = {}
    for e in epochs:
        val = e.get("val", {})
        if "pairs" in val and val["pairs"].get("accuracy") is not None:
            acc.setdefault(f"{val['pairs']['file']} accuracy", []).append((e["epoch"], val["pairs"]["accuracy"]))
        held = val.get("heldout", {})
        if "pairs" in held:
            acc.setdefault("held-out identities accuracy", []).append((e["epoch"], held["pairs"]["accuracy"]))
    img = np.full((H, W, 3), 255, dtype=np.uint8)
    _panel(img, 0, f"training loss ({log.get('head', {}).get('loss', '')})", [("loss", loss)], None)
    _panel(img, W - PANEL_W - 40, "validation accuracy", list(acc.items()), (0.5, 1.0))
    arch = log.get("backbone", {}).get("arch", "")
    cv2.putText(img, arch, (W - 200, H - 10), FONT, 0.4, (90, 90, 90), 1, cv2.LINE_AA)
    tmp = path.with_suffix(".tmp.png")
    cv2.imwrite(str(tmp), img)
    tmp.replace(path)
