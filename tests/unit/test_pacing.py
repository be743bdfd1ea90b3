"""The one pacing helper holds source time to the wall clock, catching up after a slow step."""

from __future__ import annotations

from fallwatch.pacing import Pacer


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(round(s, 9))
        self.now += s


def test_paces_against_the_start_not_per_step() -> None:
    clk = _Clock()
    p = Pacer(10.0, start_s=5.0, clock=clk, sleep=clk.sleep)
    p.wait(6.0)  # 1 source second at 10x = 0.1 s wall
    assert clk.slept == [0.1]
    clk.now += 0.5  # a slow step: 0.4 s behind
    p.wait(7.0)
    assert clk.slept == [0.1] and round(p.lag_s(7.0), 9) == -0.4
    p.wait(12.0)  # catches up: due at 0.7 s, now at 0.6 s
    assert clk.slept == [0.1, 0.1]


def test_speed_zero_or_none_never_sleeps() -> None:
    for speed in (0.0, None):
        clk = _Clock()
        p = Pacer(speed, clock=clk, sleep=clk.sleep)
        p.wait(1e6)
        assert clk.slept == [] and p.lag_s(1e6) == 0.0
