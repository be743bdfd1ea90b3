"""The ``sim`` edge source: one hub's frames from a simulated fleet.

It lives in the composition layer because the edge must not import the simulator
(they are independent layers); the composition roots (the ``fallwatch`` command) call
:func:`register`, which adds it to :data:`fallwatch.edge.sources.SOURCES` and adds the
``fallwatch edge record`` alias of ``fallwatch sim record``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fallwatch.config import EdgeConfig
from fallwatch.edge import cli as edge_cli
from fallwatch.edge.sources import SOURCES
from fallwatch.plugins import PluginConfig
from fallwatch.protocol.frames import SensorFrame
from fallwatch.sim import cli as sim_cli

if TYPE_CHECKING:
    from fallwatch.sim.fleet import SensorInfo


class SimSourceConfig(PluginConfig):
    type: Literal["sim"] = "sim"
    path: Path | None = None  # scenario TOML (None = a one-flat demo)
    speed: float = Field(default=1.0, ge=0)  # sim seconds per wall second; 0 = flat out


class SimSource:
    """This hub's frames from a simulated fleet, paced at ``speed`` (0 = as fast as possible)."""

    def __init__(self, cfg: SimSourceConfig, edge: EdgeConfig, *, duration_s: float | None = None,
                 step_s: float = 0.5, seed: int | None = None, hub_id: str | None = None) -> None:
        """``hub_id``: which hub to serve (default ``edge.device_id``; a one-hub scenario's hub
        is taken whatever its id)."""
        # imported here: every ``fallwatch`` command registers this source, few run it
        from fallwatch.sim.fleet import Fleet
        from fallwatch.sim.scenario import demo_scenario, load_scenario

        scn = load_scenario(cfg.path) if cfg.path else demo_scenario(residents=1, duration_s=600.0)
        self.fleet = Fleet(scn, seed=seed)
        hubs = {h.hub_id: h for h in self.fleet.hubs}
        want = hub_id or edge.device_id
        if want in hubs:
            self.hub_id = want
        elif len(hubs) == 1 and hub_id is None:
            self.hub_id = next(iter(hubs))
        else:
            raise ValueError(f"hub {want!r} is not in the scenario (hubs: {sorted(hubs)[:10]})")
        self.site_id = hubs[self.hub_id].site_id
        self.speed = cfg.speed
        self.duration_s = duration_s
        self.step_s = step_s
        self.start_epoch_ms = self.fleet.start_epoch_ms

    @property
    def sensors(self) -> list[SensorInfo]:
        return [s for s in self.fleet.sensors if s.hub_id == self.hub_id]

    def batches(self) -> Iterator[tuple[list[SensorFrame], float]]:
        for chunk in self.fleet.run(duration_s=self.duration_s, step_s=self.step_s, speed=self.speed or None):
            yield [f for f in chunk.frames if f.hub_id == self.hub_id], chunk.t_s

    def close(self) -> None:
        pass


def _edge_record(edge_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rec = edge_sub.add_parser("record", help="record a simulated hub's frames for replay (= 'fallwatch sim record')")
    sim_cli.add_record_arguments(rec)
    rec.set_defaults(func=sim_cli.cmd_record)


def register() -> None:
    """Add the ``sim`` source and the ``edge record`` command (idempotent)."""
    SOURCES.register(SimSourceConfig)(SimSource)
    edge_cli.add_command(_edge_record)
