"""The one description of the machine a figure was measured on: CPU model, the SIMD flags that matter for inference,
cores, OS, load average, package versions. Every results JSON records it next to its figures."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# x86: AVX2/FMA (fp32 kernels), AVX-512, VNNI (int8 dot products: without it U8S8 saturates, see
# tools/models/quantize.py); Arm: NEON (reported as "asimd") and its int8 dot product ("asimddp").
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "neon", "asimddp")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


def parse_cpuinfo(text: str) -> dict[str, str]:
    """``/proc/cpuinfo`` as ``{key: value}``, keys lower-cased, the first processor's value of each key (x86 lists
    ``model name`` and ``flags`` per processor; Arm lists ``Features`` per processor and ``Hardware`` once)."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip().lower(), value.strip())
    return info


def read_cpuinfo(path: Path = CPUINFO) -> dict[str, str]:
    """``parse_cpuinfo`` of ``path``; empty where it cannot be read (not Linux)."""
    try:
        return parse_cpuinfo(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return {}


def cpu_name(info: dict[str, str]) -> str:
    """The CPU model from parsed cpuinfo (``model name``; on Arm ``Hardware``/``Model``), else what platform says."""
    name = info.get("model name") or info.get("hardware") or platform.processor() or platform.machine()
    if "model name" not in info and info.get("model"):
        name = f"{info['model']} ({name})"
    return name


def cpu_flags(info: dict[str, str]) -> list[str]:
    """The ``CPU_FLAGS`` present, in ``CPU_FLAGS`` order (Arm's ``asimd`` reported as ``neon``)."""
    words = set((info.get("flags") or info.get("features") or "").split())
    if "asimd" in words:
        words.add("neon")
    return [f for f in CPU_FLAGS if f in words]


def has_vnni(info: dict[str, str]) -> bool | None:
    """Whether the CPU has an int8 VNNI dot product (AVX512-VNNI or AVX-VNNI); None when cpuinfo is unreadable."""
    if not info:
        return None
    return bool(VNNI_FLAGS & set(cpu_flags(info)))


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, rounded to 0.01; None where the OS has none."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def describe(info: dict[str, str] | None = None) -> dict[str, Any]:
    """CPU model, cores, the SIMD flags that matter for inference, OS, and the load average now (``loadavg_start``;
    a tool adds ``loadavg_end`` when it finishes). ``info``: parsed cpuinfo, read from this machine when None."""
    info = read_cpuinfo() if info is None else info
    return {
        "cpu": cpu_name(info),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "flags": cpu_flags(info),
        "arch": platform.machine(),
        "os": platform.platform(),
        "loadavg_start": loadavg(),
    }


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Python and the inference packages behind a figure (OpenCV and numpy as imported: their wheels have several
    distribution names)."""
    import cv2
    import numpy as np

    return {
        "python": platform.python_version(),
        "onnxruntime": package_version("onnxruntime"),
        "opencv": str(cv2.__version__),
        "numpy": str(np.__version__),
        "ai_edge_litert": package_version("ai-edge-litert"),
        "tflite_runtime": package_version("tflite-runtime"),
        "face_kiosk": package_version("face-kiosk"),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB: ``VmHWM`` from /proc/self/status where there is one (it starts
    afresh at exec), else ``getrusage`` ru_maxrss (KiB on Linux, bytes on macOS). On Linux ru_maxrss survives
    fork+exec, so a child started by a big parent would report at least the parent's size at the fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        pass
    return ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    """``getrusage`` ru_maxrss in MB (KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0, 1)
