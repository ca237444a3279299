"""TFLite backend: ai-edge-litert, falling back to tflite_runtime. Imported only when a tflite model is loaded."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from kiosk.errors import BackendUnavailableError, ModelIntegrityError
from kiosk.models.backends import RuntimeOptions
from kiosk.models.manifest import ModelSpec

log = logging.getLogger(__name__)


def interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        log.info("tflite: ai-edge-litert missing, using tflite_runtime")
        return Interpreter
    except ImportError as exc:
        raise BackendUnavailableError(
            "the tflite backend needs ai-edge-litert: pip install 'face-kiosk[tflite]'"
        ) from exc


class TfliteRunner:
    def __init__(self, spec: ModelSpec, options: RuntimeOptions) -> None:
        interpreter_cls = interpreter_class()
        try:
            self._interp = interpreter_cls(model_path=str(spec.path), num_threads=options.tflite_threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelIntegrityError(f"model '{spec.id}': TFLite cannot load {spec.path}: {exc}") from exc
        self._inputs = self._interp.get_input_details()
        self._outputs = self._interp.get_output_details()
        self.input_names = [d["name"] for d in self._inputs]
        self.output_names = [d["name"] for d in self._outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        resized = False
        for detail in self._inputs:
            value = inputs[detail["name"]]
            if tuple(value.shape) != tuple(detail["shape"]):
                self._interp.resize_tensor_input(detail["index"], value.shape)
                resized = True
        if resized:  # e.g. a batch of N faces after batches of 1, and back: the cached shapes must follow
            self._interp.allocate_tensors()
            self._inputs = self._interp.get_input_details()
            self._outputs = self._interp.get_output_details()
        for detail in self._inputs:
            self._interp.set_tensor(detail["index"], inputs[detail["name"]].astype(detail["dtype"], copy=False))
        self._interp.invoke()
        return [self._interp.get_tensor(d["index"]).copy() for d in self._outputs]
