"""Shared fixtures: a real Mosquitto and a real InfluxDB 1.x on free loopback ports.

Shared instances serve tests that only publish and read; tests that stop or
restart a service ask for their own through the ``*_factory`` fixtures so they never
disturb other tests.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from fallwatch.testing.publisher import Publisher, wait_until
from fallwatch.testing.receivers import Receiver, SmtpServer
from fallwatch.testing.services import InfluxDB1, Mosquitto

# CI runs the property tests on a fixed set of examples (the same every run, so a landing is
# never decided by the luck of the draw); developers' runs keep exploring new ones and
# remember failures in .hypothesis/.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

SISFALL_DIR = Path(
    os.environ.get("FALLWATCH_SISFALL", Path(__file__).resolve().parents[2] / "shared/data/sisfall")
)


#: the longest test modules (by the sum of their tests' durations, ``--durations``), longest
#: first. ``scripts/test.sh`` hands whole modules to parallel workers in collection order
#: (``--dist loadfile --no-loadscope-reorder``): starting the long ones first keeps one 3-minute
#: module from starting last and holding up the end of the run. Order only; a module missing
#: here just runs later.
LONGEST_FIRST = (
    "integration/test_chaos.py",
    "integration/test_gateway_durability.py",
    "integration/test_models_eval.py",
    "integration/test_gateway_registry.py",
    "integration/test_sim_physics.py",
    "integration/test_provisioning_broker.py",
    "integration/test_hardening_alerts.py",
    "integration/test_bench_gateway.py",
    "browser/test_staff_page.py",
    "browser/test_console_care.py",
    "integration/test_demo_serve.py",
    "integration/test_privacy.py",
    "integration/test_paging.py",
    "integration/test_edge_sim.py",
    "integration/test_sim_scenarios.py",
    "integration/test_gateway_fuzz.py",
    "integration/test_edge_pacing.py",
    "integration/test_api_schemathesis.py",
)


#: CPU-bound modules that share one worker, one after the other, under ``--dist loadfile``: run
#: side by side on two cores they starved each other (a model-training test passed its timeout).
CPU_HEAVY = ("integration/test_chaos.py", "integration/test_models_eval.py")


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist", None) != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class OneWorkerForTheCpuHeavy(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "cpu-heavy" if any(path.endswith(m) for m in CPU_HEAVY) else path

    return OneWorkerForTheCpuHeavy(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.as_posix()
        return next((i for i, m in enumerate(LONGEST_FIRST) if path.endswith("/tests/" + m)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the order within a module, and of the other modules, stays


@pytest.fixture(scope="module")
def mosquitto() -> Iterator[Mosquitto]:
    # One broker per test module (it starts in ~50 ms): persistent sessions and retained
    # messages left by one module's clients can never reach another module's tests.
    with Mosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def influxdb() -> Iterator[InfluxDB1]:
    with InfluxDB1() as db:
        yield db


@pytest.fixture
def mosquitto_factory() -> Iterator[Callable[..., Mosquitto]]:
    started: list[Mosquitto] = []

    def make(**kwargs: object) -> Mosquitto:
        broker = Mosquitto(**kwargs).start()
        started.append(broker)
        return broker

    yield make
    for b in started:
        b.close()


@pytest.fixture
def influxdb_factory() -> Iterator[Callable[..., InfluxDB1]]:
    started: list[InfluxDB1] = []

    def make(**kwargs: object) -> InfluxDB1:
        db = InfluxDB1(**kwargs).start()
        started.append(db)
        return db

    yield make
    for d in started:
        d.close()


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A [a-z0-9-] id made from the test's name, so tests never see each other's topics/databases."""
    return re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:50]


@pytest.fixture
def sisfall_dir() -> Path:
    if not SISFALL_DIR.is_dir():
        pytest.skip(f"SisFall recordings not found at {SISFALL_DIR} (set FALLWATCH_SISFALL)")
    return SISFALL_DIR


@pytest.fixture
def smtpd() -> Iterator[SmtpServer]:
    """A real SMTP server (aiosmtpd) on a free loopback port that keeps what it accepted."""
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A local HTTP server that records every POST (web hooks, push endpoints)."""
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def start_gateway(request: pytest.FixtureRequest, unique_name: str) -> Iterator[Callable[..., tuple[Any, Publisher]]]:
    """``start_gateway(cfg, broker=None, **kw)``: an in-process gateway on ``cfg`` (``kw`` to
    :class:`Gateway`) and a QoS 1 publisher on ``broker`` (default: the module's Mosquitto), once
    the gateway says it is ready. Both are stopped after the test, publisher first."""
    from fallwatch.gateway.app import Gateway

    gateways: list[Any] = []
    publishers: list[Publisher] = []

    def start(cfg: Any, broker: Any = None, **kw: Any) -> tuple[Any, Publisher]:
        broker = broker or request.getfixturevalue("mosquitto")
        gw = Gateway(cfg, **kw)
        gateways.append(gw)
        gw.start()
        # one client id per publisher: a second one under the same id would take the first's session
        pub = Publisher("127.0.0.1", broker.port, f"pub-{unique_name}" + (f"-{len(publishers)}" if publishers else ""))
        publishers.append(pub)
        assert wait_until(lambda: gw.ready()[0], 120), gw.ready()  # returns once ready
        return gw, pub

    yield start
    for pub in publishers:
        pub.close()
    for gw in reversed(gateways):
        gw.stop()
