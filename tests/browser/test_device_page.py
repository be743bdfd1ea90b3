"""The technician's device page, in a real headless Chromium against a real gateway and broker.

A technician signs in and sees every hub and sensor, the offline hub first; the page holds
no resident data (no name, no flat, no fall alert), and the API refuses the technician the
fall alert itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fallwatch.gateway.app import Gateway
from fallwatch.gateway.staff import StaffDirectory
from fallwatch.testing import publisher as t
from fallwatch.testing.browser import MISSING, api, chrome
from fallwatch.testing.services import Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def _get(gw: Gateway, path: str, token: str) -> tuple[int, Any]:
    return api(gw.http_url, path, token)


@pytest.fixture
def fleet_gateway(mosquitto: Mosquitto, tmp_path: Path, unique_name: str) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """Two flats: flat A's hub is fine and its resident (Greta Lind, 12B) has just fallen;
    flat B's hub has dropped off (its last will, ``lost``)."""
    site_a, site_b = f"a-{unique_name}"[:40], f"b-{unique_name}"[:40]
    users = StaffDirectory(tmp_path / "staff.toml")
    tokens = {"technician": users.add("Tom Tech", "technician", password="solder and flux 42"),
              "admin": users.add("Ada Admin", "admin"), "carer": users.add("Anna Carer", "carer"),
              "north": users.add("Nils North", "technician", team="north")}
    people = [{"id": "anna", "name": "anna", "contacts": [{"channel": "log"}]}]
    teams = [{"id": "north", "sites": [site_a], "shifts": [{"people": ["anna"]}], "quiet_hours": None}]
    cfg = t.make_cfg(mosquitto, None, tmp_path, unique_name, staff_users_file=str(tmp_path / "staff.toml"),
                     paging={"people": people, "teams": teams})
    gw = Gateway(cfg)
    gw.start()
    assert t.wait_until(lambda: gw.ready()[0])
    reg = gw.pager.registry
    reg.add_device("hub-a", "hub", actor="test", site_id=site_a)
    reg.add_device("wear-r01", "wearable", actor="test", hub_id="hub-a")
    reg.add_device("bed-r01", "sensor", actor="test", hub_id="hub-a", room="bedroom", sensor_kind="bed")
    reg.add_resident(site_a, "r07", actor="test", name="Greta Lind", flat="12B")
    reg.assign("wear-r01", "r07", actor="test")
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    pub.publish(*t.health(site_a, "hub-a", 1, outbox=2))
    pub.publish(*t.test_alarm(site_a, "hub-a", 2))
    pub.publish(*t.fall(site_a, "hub-a", 3, resident="r07"))
    pub.publish(*t.state(site_b, "hub-b", 1, "lost"))
    assert pub.wait(10)
    pub.close()
    assert t.wait_until(lambda: {d["device_id"] for d in gw.state.devices()} == {"hub-a", "hub-b"}
                        and len(gw.alerts()) >= 1)
    yield gw, tokens
    gw.stop()


def test_the_api_lists_devices_offline_first_without_residents(fleet_gateway: tuple[Gateway, dict[str, str]]) -> None:
    gw, tokens = fleet_gateway
    code, rows = _get(gw, "/devices/overview", tokens["technician"])
    assert code == 200
    assert rows[0]["device_id"] == "hub-b" and rows[0]["offline"] and rows[0]["problems"][0] == "offline"
    by = {r["device_id"]: r for r in rows}
    assert by["hub-a"]["outbox_depth"] == 2 and by["hub-a"]["model_version"] == "1.0.0" and not by["hub-a"]["offline"]
    assert by["wear-r01"]["kind"] == "wearable" and by["wear-r01"]["battery_pct"] == 64.0
    assert by["bed-r01"]["problems"] == ["never_heard"]  # registered; its hub has not reported it
    text = json.dumps(rows)
    assert "Greta" not in text and "12B" not in text and "r07" not in text and "fall" not in text
    fall_id = next(a["alert_id"] for a in gw.alerts() if a["kind"] == "fall")
    assert _get(gw, f"/alerts/{fall_id}", tokens["technician"])[0] == 403
    code, listed = _get(gw, "/alerts", tokens["technician"])
    assert code == 200 and all(a["kind"] != "fall" for a in listed)
    assert _get(gw, "/devices/overview", tokens["carer"])[0] == 403  # carers see residents, not devices
    code, north = _get(gw, "/devices/overview", tokens["north"])  # a team's technician: its sites only
    assert code == 200 and {r["site_id"] for r in north} == {by["hub-a"]["site_id"]}
    assert by["hub-a"]["timezone"] == "Europe/Stockholm"
    code, audit = _get(gw, "/audit", tokens["admin"])
    assert ("Tom Tech", "/devices/overview", 200) in {(e["actor"], e["path"], e["status"]) for e in audit}


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
def test_a_technician_sees_the_offline_hub_first_and_no_resident(fleet_gateway: tuple[Gateway, dict[str, str]],
                                                                  tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    gw, _ = fleet_gateway
    fall_id = next(a["alert_id"] for a in gw.alerts() if a["kind"] == "fall")
    driver = chrome(tmp_path / "chromium")
    try:
        wait = WebDriverWait(driver, 15)
        driver.get(f"{gw.http_url}/staff")
        wait.until(ec.visibility_of_element_located((By.ID, "name"))).send_keys("Tom Tech")
        driver.find_element(By.ID, "password").send_keys("solder and flux 42")
        driver.find_element(By.ID, "signin").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#device-list .device")))
        cards = driver.find_elements(By.CSS_SELECTOR, "#device-list .device")
        first = cards[0]
        assert first.get_attribute("data-device-id") == "hub-b", [c.text for c in cards]
        assert "needs-visit" in (first.get_attribute("class") or "") and "offline" in first.text
        ids = [c.get_attribute("data-device-id") for c in cards]
        assert {"hub-a", "wear-r01", "bed-r01"} <= set(ids)
        hub_a = cards[ids.index("hub-a")].text
        assert "last seen" in hub_a and "ago" in hub_a and "outbox 2" in hub_a and "model version 1.0.0" in hub_a
        assert "battery 64 %" in cards[ids.index("wear-r01")].text
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "Greta" not in body and "12B" not in body and "r07" not in body and "Fall" not in body, body
        assert driver.find_elements(By.CSS_SELECTOR, f'.card[data-alert-id="{fall_id}"]') == []
        offline_card = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, ".card.raised")))
        assert [b for b in offline_card.find_elements(By.TAG_NAME, "button") if b.is_displayed()] == []
        # the technician's own session is refused the fall alert
        status = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0], {credentials: 'same-origin'}).then(r => done(r.status));",
            f"/alerts/{fall_id}")
        assert status == 403
        # the same page in Swedish (the person's language setting): none of the device page's English
        from babel.messages.pofile import read_po
        from selenium.webdriver.support.ui import Select

        from fallwatch.gateway.device_routes import DEVICE_MESSAGES

        with (Path(__file__).resolve().parents[2] / "gateway/locale/sv.po").open("rb") as f:
            sv = {str(m.id): str(m.string) for m in read_po(f) if m.id}
        Select(driver.find_element(By.ID, "lang")).select_by_value("sv")
        wait.until(ec.text_to_be_present_in_element((By.ID, "device-list"), "ur drift"))
        shown = driver.find_element(By.ID, "devices").text
        words = [(m, m.split("{")[0].strip()) for m in DEVICE_MESSAGES if sv[m] != m]
        # whole words, not inside ids such as hub-b or a site named after this test
        english = [m for m, w in words if len(w) > 3 and re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", shown)]
        assert english == [], (english, shown)
        assert "senast hörd" in shown and "Enheter" in shown
    finally:
        driver.quit()
