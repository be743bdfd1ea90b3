"""Debian's headless Chromium driven by Selenium, for the console's browser tests."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
#: why a browser test cannot run here (None: it can)
MISSING = None if CHROMIUM and CHROMEDRIVER else \
    "needs Debian's chromium + chromium-driver (scripts/ensure-services.sh installs them)"


def chrome(profile_dir: Path, lang: str = "en-US,en") -> Any:
    """A fresh headless Chromium with its own profile (cookies, storage) and browser language."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile_dir}", f"--lang={lang}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"intl.accept_languages": lang})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER or "chromedriver"), options=opts)


def api(base_url: str, path: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """One API call as a script would make it (bearer token; JSON body: POST): status and JSON,
    for checking what the page's own calls would get."""
    req = urllib.request.Request(f"{base_url}{path}", data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
