"""The admin's audit log in the console (Swedish), in a real headless Chromium against a real gateway:
visible to an admin only, filtered by who did it, downloadable with the same filter."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_staff_page import CHROMEDRIVER, CHROMIUM, _api, _chrome

from fallwatch.gateway.app import Gateway
from fallwatch.gateway.privacy_routes import PRIVACY_MESSAGES
from fallwatch.gateway.staff import StaffDirectory
from fallwatch.testing import publisher as t
from fallwatch.testing.services import Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture
def gateway(mosquitto: Mosquitto, tmp_path: Path, unique_name: str) -> Iterator[tuple[Gateway, dict[str, str]]]:
    users = StaffDirectory(tmp_path / "staff.toml")
    tokens = {"carer": users.add("Anna Carer", "carer"), "admin": users.add("Ada Admin", "admin")}
    cfg = t.make_cfg(mosquitto, None, tmp_path, unique_name, staff_users_file=str(tmp_path / "staff.toml"))
    gw = Gateway(cfg)
    gw.start()
    yield gw, tokens
    gw.stop()


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="needs Debian's chromium + chromium-driver (scripts/ensure-services.sh installs them)")
def test_the_admin_reads_and_filters_the_audit_log_in_swedish(gateway: tuple[Gateway, dict[str, str]],
                                                             tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from fallwatch.gateway.i18n import gettext_for

    gw, tokens = gateway
    for path in ("/alerts", "/me"):
        assert _api(gw, path, tokens["carer"])[0] == 200
    assert _api(gw, "/audit/entries", tokens["carer"])[0] == 403
    driver = _chrome(tmp_path, lang="sv-SE,sv;q=0.9")
    try:
        wait = WebDriverWait(driver, 15)
        driver.get(f"{gw.http_url}/staff")
        wait.until(ec.visibility_of_element_located((By.ID, "token"))).send_keys(tokens["admin"])
        driver.find_element(By.ID, "signin").click()
        section = wait.until(ec.visibility_of_element_located((By.ID, "privacy")))
        assert "Granskningslogg" in section.text and "Radera överallt" in section.text
        wait.until(lambda d: "Anna Carer" in d.find_element(By.ID, "audit-rows").text)
        driver.find_element(By.ID, "audit-actor").send_keys("Anna Carer")
        driver.find_element(By.CSS_SELECTOR, "#audit-filter button[type=submit]").click()
        wait.until(lambda d: "Ada Admin" not in d.find_element(By.ID, "audit-rows").text)
        rows = driver.find_elements(By.CSS_SELECTOR, "#audit-rows tbody tr")
        assert rows and all(r.find_elements(By.TAG_NAME, "td")[1].text == "Anna Carer" for r in rows)
        assert any("/audit/entries" in r.text for r in rows)  # her refused look at the audit log is in it
        href = driver.find_element(By.ID, "audit-csv").get_attribute("href") or ""
        assert "format=csv" in href and "actor=Anna+Carer" in href
        # no English privacy text on the Swedish page
        sv = gettext_for("sv")
        english = [m for m in PRIVACY_MESSAGES if sv(m) != m and len(m) > 4 and m.split("{")[0] in section.text]
        assert english == [], english
    finally:
        driver.quit()
    req = urllib.request.Request(href, headers={"Authorization": f"Bearer {tokens['admin']}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        csv_text = r.read().decode()
        assert r.headers["Content-Disposition"].startswith("attachment")
    lines = csv_text.strip().splitlines()
    assert lines[0] == "log,id,at_ms,actor,action,subject,detail" and len(lines) > 2
    assert all(",Anna Carer," in line for line in lines[1:])
