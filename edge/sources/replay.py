"""``replay``: frames recorded earlier (``fallwatch sim record``), fed again at ``speed``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from fallwatch.config import EdgeConfig
from fallwatch.edge.sources._base import SOURCES, HubFromConfig
from fallwatch.pacing import Pacer
from fallwatch.plugins import PluginConfig
from fallwatch.protocol.framelog import FrameLogReader
from fallwatch.protocol.frames import SensorFrame


class ReplayConfig(PluginConfig):
    type: Literal["replay"] = "replay"
    path: Path  # the recorded frame log
    speed: float = Field(default=1.0, ge=0)  # source seconds per wall second; 0 = flat out


class FrameReplaySource(HubFromConfig):
    """A frame log (:mod:`fallwatch.protocol.framelog`) replayed at ``speed`` (0 = flat out),
    in batches of ``step_s`` of the recorded hub clock.

    A line that does not parse is counted and skipped (``bad_lines``), never fatal.
    """

    def __init__(self, cfg: ReplayConfig, edge: EdgeConfig, *, duration_s: float | None = None,
                 step_s: float = 0.5) -> None:
        self.path = cfg.path
        self.speed = cfg.speed
        self.step_s = step_s
        self.hub_id = edge.device_id
        self._log = FrameLogReader(self.path, strict=False)

    @property
    def bad_lines(self) -> int:
        return self._log.bad_lines

    def batches(self) -> Iterator[tuple[list[SensorFrame], float]]:
        pacer = Pacer(self.speed)
        batch: list[SensorFrame] = []
        edge = self.step_s
        for f in self._log:
            while f.rx_t_s > edge:
                pacer.wait(edge)
                yield batch, edge
                batch = []
                edge += self.step_s
            batch.append(f)
        pacer.wait(edge)
        yield batch, edge

    def close(self) -> None:
        pass


SOURCES.register(ReplayConfig)(FrameReplaySource)

