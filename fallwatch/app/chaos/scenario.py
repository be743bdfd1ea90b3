"""A chaos scenario: the care home, its falls and the fault schedule (a TOML file).

The shipped ones are ``ci`` (the test command runs it), ``long`` and ``soak``
(``fallwatch/app/chaos/scenarios/*.toml``); any other path is read as a TOML file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCENARIO_DIR = Path(__file__).parent / "scenarios"

FaultName = Literal[
    "broker_restart", "broker_kill", "gateway_kill", "influx_stop", "edge_kill", "flood",
    "network_cut", "spool_full", "clock_jump",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FaultSpec(_Strict):
    """One fault: what, when (seconds after the hubs started), for how long, on which part."""

    name: FaultName
    at_s: float = Field(ge=0)
    duration_s: float = Field(default=0.0, ge=0)  # the time the part stays broken (0 = at once back)
    target: str | None = None  # hub index ("3"), replica ("gw-a"); default the first
    rate: float = Field(default=300.0, gt=0)  # flood: messages per second
    jump_s: float = 3600.0  # clock_jump: the hub's wall clock steps by this (negative: back), then back again


class ChaosScenario(_Strict):
    name: str = "chaos"
    seed: int = 17
    hubs: int = Field(default=10, ge=1, le=100)
    duration_s: float = Field(default=150.0, gt=0)  # simulated (= wall, at real-time pace) span
    falls_per_hub: int = Field(default=2, ge=0)
    falls_from_s: float = 20.0  # the staggered falls fall between these times
    falls_to_s: float | None = None  # default duration_s - 40
    burst_at_s: float | None = None  # every hub's resident falls at this time (±0.5 s)
    state: Literal["postgresql", "sqlite"] = "postgresql"
    replicas: int = Field(default=2, ge=1, le=2)
    cancel_window_s: float = Field(default=10.0, ge=0, le=60)
    telemetry_window_s: float = Field(default=5.0, gt=0)
    settle_s: float = Field(default=90.0, gt=0)  # after the run, how long to wait for everything to drain
    recover_timeout_s: float = Field(default=90.0, gt=0)
    soak: bool = False  # report per-process memory, fds and latency drift
    sample_every_s: float = Field(default=10.0, gt=0)
    faults: list[FaultSpec] = []


def load(name_or_path: str) -> ChaosScenario:
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SCENARIO_DIR / f"{name_or_path}.toml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")))
        raise ValueError(f"no chaos scenario {name_or_path!r} (shipped: {known}; or give a TOML path)")
    return ChaosScenario.model_validate(tomllib.loads(path.read_text()))


def to_toml(sections: Mapping[str, object]) -> str:
    """TOML for a config: each top-level key a [section] (nested dicts become sub-sections),
    everything below as inline values. Enough for fallwatch configs and sim scenarios; None
    values are left out (TOML has no null)."""
    out: list[str] = []

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str | Path):
            s = str(v).replace("\\", "\\\\").replace('"', '\\"')
            return f'"{s}"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v if x is not None) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items() if x is not None) + "}"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def section(name: str, body: Mapping[str, object]) -> None:
        subs = {k: v for k, v in body.items() if isinstance(v, Mapping)}
        if name:
            out.append(f"[{name}]")
        out.extend(f"{k} = {value(v)}" for k, v in body.items() if v is not None and not isinstance(v, dict))
        out.append("")
        for k, v in subs.items():
            section(f"{name}.{k}" if name else k, v)

    section("", sections)
    return "\n".join(out)
