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

import pytest
from hypothesis import settings

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
