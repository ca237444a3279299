"""The onnxruntime session every tool checks its exports with: CPU only, fixed thread counts, warnings off."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def session(path: Path, threads: int = 2) -> Any:
    """An onnxruntime CPU session for ``path`` with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
