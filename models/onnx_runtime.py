"""One way to open an ONNX model for a small edge device, shared by every model we ship.

A Pi-class hub runs many residents' streams on one core: single-threaded, sequential
execution without spin-waiting keeps inference from stealing the core from stream
handling, and full graph optimisation is free at load time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def edge_session(path: str | Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
