"""onnxruntime backend. Execution providers come from config; unavailable ones are logged and dropped (CPU last)."""

from __future__ import annotations

import logging

import numpy as np

from kiosk.errors import BackendUnavailableError, ModelIntegrityError
from kiosk.models.backends import RuntimeOptions
from kiosk.models.manifest import ModelSpec

log = logging.getLogger(__name__)


def select_providers(requested: tuple[str, ...], available: list[str]) -> list[str]:
    """Keep the requested providers that this onnxruntime build has, in order; always end with CPU."""
    chosen = [p for p in requested if p in available]
    dropped = [p for p in requested if p not in available]
    if dropped:
        log.warning("onnxruntime: providers %s unavailable in this build (have %s); falling back", dropped, available)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OnnxRunner:
    def __init__(self, spec: ModelSpec, options: RuntimeOptions) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - core dependency
            raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from exc
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # NOTE: dynamic-shape models warn on every run at level 2; errors still raise
        # onnxruntime session config entries ("session.intra_op.allow_spinning": "0", ...) pass through from
        # ``RuntimeOptions.extra``; other keys there belong to other backends.
        for key, value in sorted(options.extra.items()):
            if key.startswith("session."):
                so.add_session_config_entry(key, str(value))
        providers = select_providers(options.providers, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(str(spec.path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
            raise ModelIntegrityError(
                f"model '{spec.id}': onnxruntime cannot load {spec.path}: {str(exc).splitlines()[0][:200]}"
            ) from exc
        active = self._session.get_providers()
        log.info("model %s: onnxruntime providers %s", spec.id, active)
        self.providers: list[str] = list(active)
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self._session.run(self.output_names, inputs))
