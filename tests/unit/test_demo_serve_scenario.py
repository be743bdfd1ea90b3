"""The ``demo --serve`` care home: falls rotate over the residents, none for the resident whose
hub is switched off, and the drifting residents are further along their decline on later days."""

from __future__ import annotations

from fallwatch.app.demo_serve import demo_residents, serve_scenario


def test_falls_rotate_and_spare_the_resident_whose_hub_is_off() -> None:
    scn = serve_scenario(3, 3600.0, 40.0, 60.0, ("r03", 150.0, 300.0), seed=7)
    falls = [e for e in scn.events if e.type == "fall"]
    assert {e.resident for e in falls} == {"r01", "r02", "r03"}
    assert [e.at_s for e in falls] == sorted(e.at_s for e in falls) and falls[0].at_s == 40.0
    assert not [e for e in falls if e.resident == "r03" and 150.0 - 60 <= e.at_s <= 300.0 + 30]
    assert all(e.cancelled is False for e in falls)  # nobody presses cancel: the carer sees every fall


def test_the_drifting_residents_decline_from_day_to_day() -> None:
    day0, day14 = demo_residents(4, seed=7, day=0), demo_residents(4, seed=7, day=14)
    for a, b in zip(day0, day14, strict=True):
        if a.drift is None:
            assert a.profile == b.profile
        else:
            assert b.profile.gait_speed_mps < a.profile.gait_speed_mps
            assert b.profile.sit_to_stand_s > a.profile.sit_to_stand_s
    assert sum(r.drift is not None for r in day0) == 2
