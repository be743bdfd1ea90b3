"""Signed model updates for tests: the shipped fall model re-labelled with another version (a
real ONNX file the hub can load) and a hub's model store over a test directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def model_bytes(version: str, *, threshold: str | None = None) -> bytes:
    """The shipped fall model with ``version`` (and ``threshold``) in its metadata."""
    import onnx

    from fallwatch.models.detector import DEFAULT_MODEL_PATH

    m = onnx.load(str(DEFAULT_MODEL_PATH))
    props = {p.key: p.value for p in m.metadata_props}
    props["version"] = version
    if threshold is not None:
        props["threshold"] = threshold
    onnx.helper.set_model_props(m, props)
    return bytes(m.SerializeToString())


def hub_model_store(model_dir: Path, **edge: Any) -> Any:
    """A hub's :class:`~fallwatch.edge.ota.ModelStore` in ``model_dir`` (``edge``: more edge
    settings, e.g. the trusted keys), running what is installed there or else the shipped model."""
    from fallwatch.config import load_config
    from fallwatch.edge import ota
    from fallwatch.models.detector import DEFAULT_MODEL_PATH, FallModel

    cfg = load_config(overrides={"edge": {"model_dir": str(model_dir), **edge}}).edge
    return ota.ModelStore(cfg, ota.load_installed(cfg) or FallModel(DEFAULT_MODEL_PATH))
