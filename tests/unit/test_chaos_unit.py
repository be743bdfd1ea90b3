"""The chaos suite's own parts that need no services: scenario files and the TOML writer."""

from __future__ import annotations

import tomllib

import pytest

from fallwatch.app.bench.e2e import paging_overrides
from fallwatch.app.chaos import scenario as scn
from fallwatch.config import load_config


@pytest.mark.parametrize("name", ["ci", "long", "soak"])
def test_shipped_scenarios_load(name: str) -> None:
    sc = scn.load(name)
    assert sc.hubs >= 10  # the care home: at least ten hubs
    assert all(f.at_s + f.duration_s < sc.duration_s for f in sc.faults)  # every fault ends inside the run


def test_ci_scenario_has_every_fault_kind_the_ci_build_checks() -> None:
    names = {f.name for f in scn.load("ci").faults}
    assert names >= {"broker_restart", "broker_kill", "gateway_kill", "influx_stop", "edge_kill", "flood",
                     "clock_jump"}
    assert scn.load("ci").burst_at_s is not None
    assert {f.name for f in scn.load("long").faults} >= names | {"network_cut", "spool_full"}


def test_unknown_scenario_names_the_shipped_ones() -> None:
    with pytest.raises(ValueError, match="ci, long, soak"):
        scn.load("nope")


def test_to_toml_writes_a_gateway_config_the_loader_reads_back(tmp_path) -> None:
    raw = {"mqtt": {"url": "mqtt://127.0.0.1:1883", "username": "gw-a", "password": None},
           "gateway": {"gateway_id": "gw-a", "shared_group": None, "http_port": 0,
                       **paging_overrides(2525, "http://127.0.0.1:9/h")}}
    text = scn.to_toml(raw)
    assert tomllib.loads(text)["gateway"]["paging"]["people"][0]["contacts"][1]["channel"] == "hook"
    (tmp_path / "gw.toml").write_text(text)
    cfg = load_config(tmp_path / "gw.toml")
    assert cfg.gateway.gateway_id == "gw-a" and cfg.gateway.shared_group is None and cfg.mqtt.password is None
    assert [c.type for c in cfg.gateway.channels] == ["log", "smtp", "webhook"]
    assert tomllib.loads(scn.to_toml({"a": {"s": 'say "hi" \\ bye'}})) == {"a": {"s": 'say "hi" \\ bye'}}
