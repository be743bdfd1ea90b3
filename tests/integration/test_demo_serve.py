"""``fallwatch demo --serve`` as a newcomer runs it: a printed URL and sign-ins, a fall that
shows up for the carer with the resident's name, and a clean stop on Ctrl-C with nothing lost."""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SIGNIN = re.compile(r"^\s+(carer|team lead|technician):\s+(.+?) / (\S+)$")


class _Session:
    """One signed-in person: the session cookie, and nothing else (as the console holds it)."""

    def __init__(self, url: str, name: str, password: str) -> None:
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        body = json.dumps({"name": name, "password": password}).encode()
        with self.opener.open(urllib.request.Request(f"{url}/session", data=body, headers={
                "Content-Type": "application/json"}), timeout=10) as r:
            self.me = json.loads(r.read())

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with self.opener.open(f"{self.url}{path}", timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, None


def test_demo_serve_runs_a_care_home_until_ctrl_c(tmp_path: Path) -> None:
    # no cancel window (the wearer's 15 s to press cancel): the test waits for the plumbing, not the wearer
    config = tmp_path / "fallwatch.toml"
    config.write_text("[edge]\ncancel_window_s = 0.0\n")
    proc = subprocess.Popen([sys.executable, "-m", "fallwatch.cli", "demo", "--serve", "--hours", "0.25",
                             "--first-fall", "6", "--fall-every", "60", "--history-days", "1",
                             "--config", str(config), "--workdir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.lstrip().startswith("technician:"):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(90), "\n".join(lines)
        url = next(m.group(1) for m in (re.search(r"console:\s+(\S+)/staff$", x) for x in lines) if m)
        assert re.match(r"http://127\.0\.0\.1:\d+$", url), url  # loopback only
        signins = {m.group(1): (m.group(2), m.group(3)) for m in map(SIGNIN.match, lines) if m}
        assert set(signins) == {"carer", "team lead", "technician"}
        assert len({pw for _, pw in signins.values()}) == 3  # one password each, made for this run
        seeded = next(m for m in (re.search(r"risk history SEEDED: 1 past days.*\((\d+) scores", x)
                                  for x in lines) if m)
        assert int(seeded.group(1)) >= 1  # the edge scored the seeded day (and the text says it is seeded)
        carer = _Session(url, *signins["carer"])
        assert carer.me["role"] == "carer"
        assert _Session(url, *signins["team lead"]).me["role"] == "lead"
        tech = _Session(url, *signins["technician"])
        code, devices = tech.get("/devices/overview")
        assert code == 200 and {d["kind"] for d in devices} >= {"hub", "wearable", "sensor"}
        assert carer.get("/devices/overview")[0] == 403
        t0 = time.monotonic()
        falls: list[dict[str, Any]] = []
        while not falls and time.monotonic() - t0 < 90:
            code, alerts = carer.get("/alerts")
            assert code == 200
            falls = [a for a in alerts if a["kind"] == "fall"]
            time.sleep(0.5)
        print(f"first fall on the carer's list {time.monotonic() - t0:.1f} s after signing in")  # a figure
        assert falls, "no fall alert reached the carer"
        assert falls[0]["resident_name"] and falls[0]["flat"]  # from the provisioning registry
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    assert rc == 0, "\n".join(lines)
    summary = json.loads(lines[-1])
    assert summary["lost"] == 0 and summary["alerts_stored"] >= 1, summary
    # every seeded risk score reached the series store (the embedded one, in the work dir)
    with contextlib.closing(sqlite3.connect(tmp_path / "series.sqlite")) as db:
        risk_points = db.execute("SELECT count(*) FROM points WHERE measurement = 'risk'").fetchone()[0]
    assert risk_points >= int(seeded.group(1))
