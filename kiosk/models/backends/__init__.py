"""Inference backends as an explicit table: ``BACKENDS[format] -> Runner class``.

A backend whose runtime is not installed raises ``BackendUnavailableError`` naming the extra to install, only when a
model that needs it is loaded; importing this package never imports a runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from kiosk.errors import ModelError
from kiosk.models.manifest import ModelSpec


@dataclass(frozen=True)
class RuntimeOptions:
    """Backend settings from config (``runtime.*``)."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 2
    inter_op_threads: int = 1
    tflite_threads: int = 2
    extra: dict[str, str] = field(default_factory=dict)


class Runner(Protocol):
    """A loaded model: named float32 inputs in, outputs (in the model's output order) out."""

    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def _onnx(spec: ModelSpec, options: RuntimeOptions) -> Runner:
    from kiosk.models.backends.onnx import OnnxRunner

    return OnnxRunner(spec, options)


def _tflite(spec: ModelSpec, options: RuntimeOptions) -> Runner:
    from kiosk.models.backends.tflite import TfliteRunner

    return TfliteRunner(spec, options)


BACKENDS: dict[str, Callable[[ModelSpec, RuntimeOptions], Runner]] = {
    "onnx": _onnx,
    "tflite": _tflite,
}


def load_runner(spec: ModelSpec, options: RuntimeOptions | None = None) -> Runner:
    """Verify the model file's hash, then open it with the backend its manifest format names."""
    factory = BACKENDS.get(spec.format)
    if factory is None:
        raise ModelError(f"model '{spec.id}': no backend for format {spec.format!r} (known: {sorted(BACKENDS)})")
    spec.verify()
    return factory(spec, options or RuntimeOptions())
