"""The resident page, the planning list and an alert's "since", in a real headless Chromium
against a real gateway and broker, over a simulated care home (fallwatch/testing/carehome.py):
six registered residents, six weeks of daily risk scores from the shipped model published
over MQTT, old falls with outcomes and two of today's falls.

With ``FALLWATCH_SCREENSHOT_DIR`` set, the tests also write the README's screenshots (phone-
and desktop-sized) there; nothing depends on it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_staff_page import CHROMEDRIVER, CHROMIUM, _api, _chrome  # the browser and HTTP helpers

from fallwatch.gateway.app import Gateway
from fallwatch.gateway.care import WEEK_MS
from fallwatch.gateway.privacy import pseudonym
from fallwatch.gateway.sinks import make_sink
from fallwatch.gateway.staff import StaffDirectory
from fallwatch.protocol import contract
from fallwatch.testing import carehome as home
from fallwatch.testing import publisher as t
from fallwatch.testing.services import Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.browser,
              pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium + chromium-driver "
                                 "(scripts/ensure-services.sh installs them)")]

SITE, OTHER = "solgarden", "ekbacken"
SIZES = {"phone": (390, 844), "desktop": (1280, 860)}
SHOTS = os.environ.get("FALLWATCH_SCREENSHOT_DIR")


def _shoot(driver: Any, name: str, element: Any = None, desktop_height: int = 860) -> None:
    """Phone- and desktop-sized pictures of what is on screen (only when asked for)."""
    if not SHOTS:
        return
    driver.execute_script("window.scrollTo(0, 0)")
    for size, (w, h) in SIZES.items():
        driver.set_window_size(w, desktop_height if size == "desktop" else h)
        time.sleep(0.3)  # the plot redraws for the new width
        target = Path(SHOTS) / f"carehome-{name}-sv-{size}.png"
        if element is not None:
            element.screenshot(str(target))
        else:
            driver.save_screenshot(str(target))
    driver.set_window_size(1280, 860)


@pytest.fixture(scope="module")
def care_home(mosquitto: Mosquitto,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """Team "norr" answers for Solgården (Lena leads, Amir is a carer), team "syd" for Ekbacken (Olle)."""
    tmp = Path(tmp_path_factory.mktemp("carehome"))
    users = StaffDirectory(tmp / "staff.toml")
    tokens = {"lead": users.add("Lena Andersson", "lead", team="norr", password="lena har ett långt lösenord"),
              "carer": users.add("Amir Haddad", "carer", team="norr", password="amir har ett långt lösenord"),
              "other": users.add("Olle Other", "carer", team="syd"), "tech": users.add("Tom Tech", "technician"),
              "admin": users.add("Ada Admin", "admin")}
    people = [{"id": "lena", "name": "Lena Andersson", "contacts": [{"channel": "log"}]},
              {"id": "amir", "name": "Amir Haddad", "contacts": [{"channel": "log"}]},
              {"id": "olle", "name": "Olle Other", "contacts": [{"channel": "log"}]}]
    teams = [{"id": "norr", "name": "Hemtjänst Norr", "sites": [SITE], "shifts": [{"people": ["amir", "lena"]}],
              "lead": "lena", "quiet_hours": None},
             {"id": "syd", "sites": [OTHER], "shifts": [{"people": ["olle"]}], "quiet_hours": None}]
    cfg = t.make_cfg(mosquitto, None, tmp, "carehome", staff_users_file=str(tmp / "staff.toml"),
                     paging={"people": people, "teams": teams})
    gw = Gateway(cfg)
    gw.start()
    assert t.wait_until(lambda: gw.ready()[0])
    home.register(gw.pager.registry, SITE, "norr")
    now = contract.now_ms()
    pub = t.Publisher("127.0.0.1", mosquitto.port, "pub-carehome")
    risk = home.risk_messages(SITE, now)
    for topic, payload in risk:
        pub.publish(topic, payload)
    # the history: falls of earlier weeks, resolved with outcomes (recorded as the gateway did then)
    astrid, karl, margareta = home.RESIDENTS[0], home.RESIDENTS[1], home.RESIDENTS[2]
    for r, back, room, outcome, note in ((margareta, (23, 5), "badrum", "no_injury", "satt på golvet, oskadd"),
                                         (astrid, (9, 2), "vardagsrum", "injury", "blåmärke på höften"),
                                         (astrid, (4, 9), "sovrum", "false_alarm", "")):
        days, hours = back
        at = now - days * home.DAY_MS - hours * 3_600_000
        _, aid = gw.state.record_fall(contract.decode(*home.fall_message(SITE, r, 500 + days, at, room)), at)
        gw.state.transition(aid, "acknowledge", "Amir Haddad", at + 140_000, via="console")
        gw.state.transition(aid, "clear", "Amir Haddad", at + 900_000, outcome=outcome, note=note or None)
    # today: Karl-Erik fell in the bathroom a moment ago, Astrid in the bedroom earlier (acknowledged)
    pub.publish(*home.fall_message(SITE, astrid, 900, now - 600_000, "sovrum", lying_s=80.0))
    pub.publish(*home.fall_message(SITE, karl, 901, now - 60_000, "badrum", lying_s=35.0,
                                   reasons=("impact", "lying", "bathroom", "no_room_motion")))
    assert pub.wait(15)
    pub.close()
    assert t.wait_until(lambda: len(gw.state.alerts(kind="fall", open_only=True)) == 2)
    astrid_now = next(a for a in gw.state.alerts(kind="fall", open_only=True) if a["resident_id"] == "r01")
    # the pager has told the carer on call about both (what the cards' "since" lists)
    assert t.wait_until(lambda: all(gw.pager.store.deliveries(a["alert_id"])
                                    for a in gw.state.alerts(kind="fall", open_only=True)))
    assert _api(gw, f"/alerts/{astrid_now['alert_id']}/ack", tokens["carer"], {})[0] == 200
    assert t.wait_until(lambda: gw.storage.count_points("risk") == len(risk))
    yield gw, tokens
    gw.stop()


def _english_on_screen(driver: Any) -> list[str]:
    """Catalog messages whose English (differing from the Swedish) shows on the Swedish page."""
    from babel.messages.pofile import read_po
    from selenium.webdriver.common.by import By

    with (Path(__file__).resolve().parents[2] / "gateway/locale/sv.po").open("rb") as f:
        catalog = {str(m.id): str(m.string) for m in read_po(f) if m.id}
    shown = driver.find_element(By.TAG_NAME, "body").text + " ".join(
        f"{e.get_attribute('placeholder') or ''} {e.get_attribute('aria-label') or ''}"
        for e in driver.find_elements(By.CSS_SELECTOR, "input, select"))
    return [m for m, sv in catalog.items()
            if sv != m and len(m.split("{")[0].strip(" :–,.…")) > 3 and m.split("{")[0].strip(" :–,.…") in shown]


def _sign_in(driver: Any, gw: Gateway, name: str, password: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 15)
    driver.set_window_size(1280, 860)
    driver.get(f"{gw.http_url}/staff")
    wait.until(ec.visibility_of_element_located((By.ID, "name"))).send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "signin").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "who"), name))
    return wait


def test_a_lead_sees_whom_to_visit_ranked_by_the_weeks_rise_in_risk(care_home: tuple[Gateway, dict[str, str]],
                                                                   tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    gw, _ = care_home
    # what the store holds, read independently: each resident's change over the week
    sink = make_sink(gw.cfg.influx)
    try:
        points = sink.risk_points(contract.now_ms() - 10 * home.DAY_MS, SITE)
    finally:
        sink.close()
    change = {}
    for r in home.RESIDENTS:
        mine = [p for p in points if p["resident_id"] == r.resident_id]
        ref = [p for p in mine if p["ts_ms"] <= mine[-1]["ts_ms"] - WEEK_MS + home.DAY_MS // 2][-1]
        change[r.resident_id] = mine[-1]["score"] - ref["score"]
    expected = sorted(change, key=lambda rid: -change[rid])
    print("risk change over the week:", {rid: round(v, 3) for rid, v in change.items()})

    driver = _chrome(tmp_path, lang="sv-SE,sv")
    try:
        wait = _sign_in(driver, gw, "Lena Andersson", "lena har ett långt lösenord")
        visits = driver.find_element(By.ID, "nav-visits")
        assert visits.is_displayed() and visits.text == "Vilka ska besökas i dag"
        visits.click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#v-list li[data-resident]")) == 6)
        cards = driver.find_elements(By.CSS_SELECTOR, "#v-list li[data-resident]")
        assert [c.get_attribute("data-resident") for c in cards] == expected
        text = driver.find_element(By.ID, "visits").text
        for r in home.RESIDENTS:
            assert r.name in text and r.flat in text  # names from the registry, never a bare id
        assert "procentenheter på en vecka" in text and "senaste fall" in text and "Varför:" in text
        # worsening walking ranks above improving walking
        assert expected.index("r01") < expected.index("r04")
        assert _english_on_screen(driver) == []
        _shoot(driver, "planning")
    finally:
        driver.quit()


def test_a_carer_reads_the_resident_page_and_records_an_action(care_home: tuple[Gateway, dict[str, str]],
                                                                tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select

    gw, tokens = care_home
    driver = _chrome(tmp_path, lang="sv-SE,sv")
    try:
        wait = _sign_in(driver, gw, "Amir Haddad", "amir har ett långt lösenord")
        assert not driver.find_element(By.ID, "nav-visits").is_displayed()  # planning is the lead's
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.raised, .card.acknowledged")) >= 2)
        # what has happened since: who was told on which channel, who acknowledged
        wait.until(ec.text_to_be_present_in_element((By.ID, "alerts"), "kvitterat av Amir Haddad"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "alerts"), "aviserad via personalloggen"))
        inbox = driver.find_element(By.ID, "alerts").text
        assert "Karl-Erik Johansson, lgh 1102" in inbox and "ligger fortfarande ner" in inbox
        assert "i badrummet" in inbox  # the reasons in words
        assert _english_on_screen(driver) == []
        _shoot(driver, "inbox")
        card = driver.find_element(By.CSS_SELECTOR, ".card.raised")
        _shoot(driver, "alert", card)
        driver.find_element(By.LINK_TEXT, "Astrid Lindqvist, lgh 1101").click()
        wait.until(lambda d: d.execute_script("return window.fallwatchResident && window.fallwatchResident.resident_id")
                   == "r01")
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#r-plot svg polyline")))
        page = driver.execute_script("return window.fallwatchResident")
        assert len(page["trend"]) == 42 and page["factors"] and page["suggested"]
        npoints = driver.execute_script(
            "return document.querySelector('#r-plot svg polyline').getAttribute('points').split(' ').length")
        assert npoints == 42
        factors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#r-factors li")]
        assert factors and all(f and "_" not in f for f in factors), factors  # words, not codes
        text = driver.find_element(By.ID, "resident").text
        assert "Astrid Lindqvist" in text and "fall med skada" in text  # the history with outcomes
        assert _english_on_screen(driver) == []
        Select(driver.find_element(By.ID, "r-action")).select_by_value("walker")
        driver.find_element(By.ID, "r-note").send_keys("rollator beställd via arbetsterapeut")
        driver.find_element(By.ID, "r-record").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "r-taken"), "Gånghjälpmedel (rollator)"))
        assert "av Amir Haddad" in driver.find_element(By.ID, "r-taken").text
        _shoot(driver, "resident", desktop_height=1500)
    finally:
        driver.quit()
    taken = gw.api.care().resident_page(SITE, "r01", contract.now_ms())
    assert taken is not None and taken["taken"][0]["action"] == "walker"
    assert taken["taken"][0]["actor"] == "Amir Haddad" and taken["taken"][0]["note"].startswith("rollator")
    code, audit = _api(gw, "/audit", tokens["admin"])  # as the admin reads it
    assert code == 200
    steps = {(e["actor"], e["method"], e["path"], e["status"]) for e in audit}
    who = pseudonym(gw.state, SITE, "r01")  # the audit log names a resident by pseudonym only (docs/privacy.md)
    assert ("Amir Haddad", "POST", f"/residents/{SITE}/{who}/actions?action=walker", 200) in steps
    assert ("Amir Haddad", "GET", f"/residents/{SITE}/{who}", 200) in steps
    assert not any("/r01" in e["path"] for e in audit)


def test_another_team_and_other_roles_are_refused(care_home: tuple[Gateway, dict[str, str]]) -> None:
    gw, tokens = care_home
    fall = gw.state.alerts(kind="fall", open_only=True)[0]["alert_id"]
    for path in (f"/residents/{SITE}/r01", f"/alerts/{fall}/since"):
        assert _api(gw, path, tokens["other"])[0] == 403, path  # a carer of team syd
        assert _api(gw, path, tokens["tech"])[0] == 403, path  # technicians see no residents
        assert _api(gw, path, tokens["carer"])[0] == 200, path
    code, _ = _api(gw, f"/residents/{SITE}/r01/actions", tokens["other"], {"action": "walker"})
    assert code == 403
    assert _api(gw, f"/residents/{SITE}/r01/actions", tokens["carer"], {"action": "rug"})[0] == 400
    assert _api(gw, f"/residents/{SITE}/nobody", tokens["carer"])[0] == 404
    assert _api(gw, f"/residents/{SITE}/nobody/actions", tokens["carer"], {"action": "walker"})[0] == 404
    assert _api(gw, "/visits", tokens["carer"])[0] == 403  # planning is for leads and admins
    code, seen = _api(gw, "/visits", tokens["other"])
    assert code == 403
    code, seen = _api(gw, "/visits", tokens["lead"])
    assert code == 200 and {v["site_id"] for v in seen} == {SITE} and len(seen) == 6
    code, seen = _api(gw, "/visits", tokens["admin"])
    assert code == 200 and len(seen) == 6
    steps = {(e["actor"], e["path"], e["status"]) for e in gw.state.access_log()}
    who = pseudonym(gw.state, SITE, "r01")  # the audit log names a resident by pseudonym only (docs/privacy.md)
    assert ("Olle Other", f"/residents/{SITE}/{who}", 403) in steps and ("Amir Haddad", "/visits", 403) in steps
