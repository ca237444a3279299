"""Score histograms and ROC as a PNG, drawn with OpenCV (no plotting library on an edge box)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from kiosk.errors import InputError
from kiosk.lab.metrics import F64, ArrayLike, Histogram, histogram

log = logging.getLogger(__name__)

_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_GREY = (225, 225, 225)
_GREEN = (40, 150, 40)
_RED = (40, 40, 210)
_MARK_COLOURS = ((160, 70, 0), (0, 110, 200), (150, 0, 150), (90, 90, 90), (0, 140, 140))
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(
    img: npt.NDArray[np.uint8],
    text: str,
    org: tuple[int, int],
    scale: float = 0.45,
    *,
    colour: tuple[int, int, int] = _BLACK,
    anchor: str = "left",
) -> None:
    (w, _), _ = cv2.getTextSize(text, _FONT, scale, 1)
    x, y = org
    if anchor == "center":
        x -= w // 2
    elif anchor == "right":
        x -= w
    cv2.putText(img, text, (int(x), int(y)), _FONT, scale, colour, 1, cv2.LINE_AA)


def _nice_ticks(lo: float, hi: float, target: int = 6) -> F64:
    span = hi - lo if hi > lo else 1.0
    raw = span / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return np.arange(math.ceil(lo / step - 1e-9) * step, hi + step * 1e-6, step)


def _tick_labels(ticks: F64) -> list[str]:
    """Labels with just enough decimals to tell the ticks apart (0.995 / 0.996, not 1 / 1)."""
    step = float(ticks[1] - ticks[0]) if ticks.size > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(round(step, decimals) - step) > step * 1e-6:
        decimals += 1  # steps like 0.25
    return [f"{0.0 if abs(t) < step * 1e-6 else t:.{decimals}f}" for t in ticks]


def _as_histogram(data: Histogram | ArrayLike) -> Histogram:
    return data if isinstance(data, Histogram) else histogram(data)


def _display_bins(hist: Histogram, lo: float, hi: float, n_bins: int) -> tuple[F64, F64]:
    """Regroup a fine histogram into about ``n_bins`` bins over ``[lo, hi]``; returns (edges, density)."""
    edges = hist.edges
    first = int(np.searchsorted(edges, lo, side="right")) - 1
    last = int(np.searchsorted(edges, hi, side="left"))
    first, last = max(first, 0), min(max(last, first + 1), hist.counts.size)
    group = max(1, math.ceil((last - first) / n_bins))
    counts = hist.counts[first:last]
    pad = (-counts.size) % group
    grouped = np.concatenate([counts, np.zeros(pad, np.int64)]).reshape(-1, group).sum(axis=1)
    width = (edges[1] - edges[0]) * group
    new_edges = edges[first] + width * np.arange(grouped.size + 1)
    total = max(hist.total, 1)
    return new_edges, grouped / (total * width)


def plot(
    path: Path,
    genuine: Histogram | ArrayLike,
    impostor: Histogram | ArrayLike,
    roc_curve: tuple[ArrayLike, ArrayLike],
    marks: Mapping[str, float] | None = None,
    *,
    log_y: bool = False,
    title: str = "",
) -> None:
    """Write a 1200x500 PNG: score histograms (left) and ROC as TAR vs FAR on a log axis (right).

    ``genuine``/``impostor`` are raw scores or :class:`Histogram`; histograms are density-normalised (each has
    area 1), genuine in green, impostor in red. ``roc_curve`` is ``(fmr, tpr)``. ``marks`` maps a label to a
    threshold drawn as a vertical line on the histograms. Raises InputError when the file cannot be written.
    """
    width, height = 1200, 500
    img = np.full((height, width, 3), 255, np.uint8)
    if title:
        _text(img, title, (width // 2, 22), 0.55, anchor="center")
    gen_hist, imp_hist = _as_histogram(genuine), _as_histogram(impostor)
    _plot_histograms(img, (70, 50, 570, 440), gen_hist, imp_hist, marks or {}, log_y)
    fmr, tpr = (np.asarray(v, dtype=np.float64).ravel() for v in roc_curve)
    _plot_roc(img, (690, 50, 1170, 440), fmr, tpr)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ok = cv2.imwrite(str(path), img)
    except (OSError, cv2.error) as err:
        raise InputError(f"cannot write plot {path}: {err}") from err
    if not ok:
        raise InputError(f"cannot write plot {path} (is the extension .png and the folder writable?)")
    log.info("wrote plot %s", path)


def _plot_histograms(
    img: npt.NDArray[np.uint8],
    box: tuple[int, int, int, int],
    gen: Histogram,
    imp: Histogram,
    marks: Mapping[str, float],
    log_y: bool,
) -> None:
    x0, y0, x1, y1 = box
    occupied = [float(v) for v in marks.values() if np.isfinite(v)]
    for h in (gen, imp):
        nonzero = np.flatnonzero(h.counts)
        if nonzero.size:
            occupied += [float(h.edges[nonzero[0]]), float(h.edges[nonzero[-1] + 1])]
    lo = max(-1.0, min(occupied, default=-1.0))
    hi = min(1.0, max(occupied, default=1.0))
    pad = max(0.02, (hi - lo) * 0.03)
    lo, hi = max(-1.0, lo - pad), min(1.0, hi + pad)
    if hi <= lo:
        lo, hi = -1.0, 1.0
    series = [(_display_bins(h, lo, hi, 90), colour) for h, colour in ((imp, _RED), (gen, _GREEN)) if h.total]
    peak = max((float(d.max()) for (_, d), _ in series), default=1.0) or 1.0
    floor = min((float(d[d > 0].min()) for (_, d), _ in series if (d > 0).any()), default=peak / 1e3)
    shown_marks = [(k, v) for k, v in sorted(marks.items(), key=lambda kv: kv[1]) if np.isfinite(v) and lo <= v <= hi]
    legend_lines = [f"genuine (n={gen.total:,})", f"impostor (n={imp.total:,})"]
    legend_lines += [f"{label}: {value:.3f}" for label, value in shown_marks]
    legend_w = max(cv2.getTextSize(t, _FONT, 0.45, 1)[0][0] for t in legend_lines) + 40
    legend_h = 8 + 18 * 2 + 17 * len(shown_marks)
    # Headroom so the tallest bar stays below the legend box instead of hiding behind it.
    free = max(0.3, 1.0 - (legend_h + 12) / (y1 - y0))
    if log_y:
        y_lo = math.log10(floor) - 0.1
        y_hi = y_lo + (math.log10(peak) - y_lo) / free
    else:
        y_lo, y_hi = 0.0, peak / free

    def px(v: float) -> int:
        return round(x0 + (v - lo) / (hi - lo) * (x1 - x0))

    def py(d: float) -> int:
        v = (math.log10(d) if d > 0 else y_lo) if log_y else d
        v = min(max(v, y_lo), y_hi)
        return round(y1 - (v - y_lo) / (y_hi - y_lo) * (y1 - y0))

    x_ticks = _nice_ticks(lo, hi, 8)
    for t, label in zip(x_ticks, _tick_labels(x_ticks), strict=True):
        cv2.line(img, (px(t), y0), (px(t), y1), _GREY, 1)
        cv2.line(img, (px(t), y1), (px(t), y1 + 5), _BLACK, 1)
        _text(img, label, (px(t), y1 + 20), anchor="center")
    if log_y:
        exponents = range(math.ceil(y_lo), math.floor(y_hi) + 1)
        y_ticks = [(10.0**e, f"1e{e}") for e in exponents]
    else:
        linear = _nice_ticks(0.0, y_hi, 5)
        y_ticks = list(zip((float(t) for t in linear), _tick_labels(linear), strict=True))
    for t, label in y_ticks:
        cv2.line(img, (x0, py(t)), (x1, py(t)), _GREY, 1)
        cv2.line(img, (x0 - 5, py(t)), (x0, py(t)), _BLACK, 1)
        _text(img, label, (x0 - 8, py(t) + 5), anchor="right")

    overlay = img.copy()
    for (edges, density), colour in series:
        for k, d in enumerate(density):
            if d > 0:
                cv2.rectangle(overlay, (px(edges[k]), py(float(d))), (px(edges[k + 1]), y1), colour, -1)
    cv2.addWeighted(overlay, 0.35, img, 0.65, 0, dst=img)
    for (edges, density), colour in series:
        points = [(px(lo), y1)]
        for k, d in enumerate(density):
            points += [(px(edges[k]), py(float(d))), (px(edges[k + 1]), py(float(d)))]
        points.append((px(float(edges[-1])), y1))
        cv2.polylines(img, [np.asarray(points, np.int32)], False, colour, 2, cv2.LINE_AA)

    for n, (_, value) in enumerate(shown_marks):
        colour = _MARK_COLOURS[n % len(_MARK_COLOURS)]
        for y in range(y0, y1, 10):  # dashed
            cv2.line(img, (px(value), y), (px(value), min(y + 5, y1)), colour, 1)
    cv2.rectangle(img, (x0 + 3, y0 + 3), (x0 + 3 + legend_w, y0 + 3 + legend_h), _WHITE, -1)
    cv2.rectangle(img, (x0 + 3, y0 + 3), (x0 + 3 + legend_w, y0 + 3 + legend_h), _GREY, 1)
    for n, (label, value) in enumerate(shown_marks):
        colour = _MARK_COLOURS[n % len(_MARK_COLOURS)]
        cv2.line(img, (x0 + 8, y0 + 54 + 17 * n), (x0 + 26, y0 + 54 + 17 * n), colour, 2)
        _text(img, f"{label}: {value:.3f}", (x0 + 32, y0 + 58 + 17 * n), colour=colour)

    cv2.rectangle(img, (x0, y0), (x1, y1), _BLACK, 1)
    for n, (name, h, colour) in enumerate((("genuine", gen, _GREEN), ("impostor", imp, _RED))):
        y = y0 + 16 + 18 * n
        cv2.rectangle(img, (x0 + 8, y - 10), (x0 + 26, y), colour, -1)
        _text(img, f"{name} (n={h.total:,})", (x0 + 32, y), colour=colour)
    _text(img, "similarity score", ((x0 + x1) // 2, y1 + 42), 0.5, anchor="center")
    _text(img, "density (log)" if log_y else "density", (x0 - 60, y0 - 12), 0.5)
    _text(img, "score distributions", ((x0 + x1) // 2, y0 - 12), 0.5, anchor="center")


def _plot_roc(img: npt.NDArray[np.uint8], box: tuple[int, int, int, int], fmr: F64, tpr: F64) -> None:
    x0, y0, x1, y1 = box
    decades = (-6, 0)
    shown = fmr >= 10.0 ** decades[0]
    tar_floor = float(tpr[shown].min()) if shown.any() else 0.0
    # Zoom the TAR axis onto where the curve is (good models live above 0.99), with a little margin below.
    margin = max(1.25 * (1 - tar_floor), 0.01)
    y_lo = max(c for c in (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99) if 1 - c >= margin - 1e-12)

    def px(f: float) -> int:
        v = math.log10(max(f, 10.0 ** decades[0]))
        return round(x0 + (v - decades[0]) / (decades[1] - decades[0]) * (x1 - x0))

    def py(t: float) -> int:
        return round(y1 - (max(t, y_lo) - y_lo) / (1.0 - y_lo) * (y1 - y0))

    for e in range(decades[0], decades[1] + 1):
        cv2.line(img, (px(10.0**e), y0), (px(10.0**e), y1), _GREY, 1)
        cv2.line(img, (px(10.0**e), y1), (px(10.0**e), y1 + 6), _BLACK, 1)
        _text(img, f"1e{e}" if e else "1", (px(10.0**e), y1 + 20), anchor="center")
        if e < decades[1]:
            for m in range(2, 10):
                cv2.line(img, (px(m * 10.0**e), y1), (px(m * 10.0**e), y1 + 3), _BLACK, 1)
    tar_ticks = _nice_ticks(y_lo, 1.0, 5)
    for t, label in zip(tar_ticks, _tick_labels(tar_ticks), strict=True):
        cv2.line(img, (x0, py(float(t))), (x1, py(float(t))), _GREY, 1)
        cv2.line(img, (x0 - 5, py(float(t))), (x0, py(float(t))), _BLACK, 1)
        _text(img, label, (x0 - 8, py(float(t)) + 5), anchor="right")
    measured = fmr[fmr > 0]
    if measured.size and measured.min() > 10.0 ** decades[0]:
        # Below one impostor in n the FAR cannot be measured: grey that part out instead of implying a curve.
        edge = px(float(measured.min()))
        overlay = img.copy()
        cv2.rectangle(overlay, (x0, y0), (edge, y1), (200, 200, 200), -1)
        cv2.addWeighted(overlay, 0.35, img, 0.65, 0, dst=img)
        if edge - x0 > 90:
            _text(img, "too few impostors", ((x0 + edge) // 2, y1 - 24), 0.4, colour=(90, 90, 90), anchor="center")
            _text(img, "to measure", ((x0 + edge) // 2, y1 - 10), 0.4, colour=(90, 90, 90), anchor="center")
    if fmr.size:
        order = np.lexsort((tpr, fmr))
        points = [(px(float(f)), py(float(t))) for f, t in zip(fmr[order], tpr[order], strict=True)]
        # Step shape: TAR only changes where FAR does, so draw horizontal-then-vertical segments.
        steps = [points[0]]
        for p in points[1:]:
            steps += [(p[0], steps[-1][1]), p]
        cv2.polylines(img, [np.asarray(steps, np.int32)], False, (150, 60, 0), 2, cv2.LINE_AA)
    cv2.rectangle(img, (x0, y0), (x1, y1), _BLACK, 1)
    _text(img, "FAR (false match rate, log scale)", ((x0 + x1) // 2, y1 + 42), 0.5, anchor="center")
    _text(img, "TAR", (x0 - 55, y0 - 12), 0.5)
    _text(img, "ROC", ((x0 + x1) // 2, y0 - 12), 0.5, anchor="center")
