"""Every staff-facing message has its Swedish translation, and a Swedish message carries no
English sentence (issue 14: "the page in Swedish shows no English staff-facing text")."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po

from fallwatch.gateway.channels import Action, AlertEvent
from fallwatch.gateway.channels._common import body, subject

ROOT = Path(__file__).resolve().parents[2]
#: every module with staff-facing text marked with _() / N_()
SOURCES = ["gateway/channels/_common.py", "gateway/paging/pager.py", "gateway/http.py", "gateway/care.py",
           "gateway/console_routes.py", "gateway/device_routes.py", "gateway/privacy_routes.py"]


def marked() -> list[str]:
    out: list[str] = []
    for f in SOURCES:
        for _lineno, msg, _comments, _ctx in extract_from_file("python", str(ROOT / f),
                                                              keywords={"_": None, "N_": None}):
            if isinstance(msg, str) and msg not in out:
                out.append(msg)
    return out


def catalog() -> dict[str, str]:
    with (ROOT / "gateway/locale/sv.po").open("rb") as f:
        return {str(m.id): str(m.string) for m in read_po(f) if m.id}


def test_every_marked_message_has_a_swedish_translation() -> None:
    sv = catalog()
    missing = [m for m in marked() if not sv.get(m)]
    assert missing == [], f"add these to gateway/locale/sv.po: {missing}"
    assert len(marked()) > 50


def test_a_swedish_alert_message_has_no_english_in_it() -> None:
    e = AlertEvent(kind="fall", action=Action.ESCALATED, alert_id="fall:s:h:e", site_id="lgh-1102", device_id="hub-1",
                   at_ms=1_764_555_200_000, resident_id="r07", room="sovrum", confidence=0.9, lying_s=40,
                   reasons=("impact", "lying", "no_room_motion"), raised_ms=1_764_555_200_000, escalations=2, level=1,
                   ack_url="https://gw/ack/x")
    text = subject(e, "sv") + "\n" + body(e, "sv", "Europe/Stockholm")
    sv = catalog()
    english = [m for m in marked() if len(m) > 4 and sv[m] != m and m.split("{")[0].strip(" :–,.") in text
               and m.split("{")[0].strip(" :–,.")]
    assert english == [], text
    assert "Boende: r07" in text and "Varför: en kraftig stöt, ligger ner efteråt" in text
    assert "CET" in text  # the site's time zone, not UTC
    assert "EJ KVITTERAT" in text and "Ta larmet" in text


def test_english_stays_available() -> None:
    e = AlertEvent(kind="device_offline", action=Action.RAISED, alert_id="a", site_id="s", device_id="h", at_ms=0,
                   detail="silent for 200 s")
    assert body(e, "en").startswith("Device offline alert, raised.")
    assert body(e, "sv").startswith("Larm: Enhet ur drift, utlöst.")


def test_every_console_text_is_in_the_catalog() -> None:
    """The console's page marks its texts ({{…}} in HTML, t("…") in script): each one is a
    catalog message, and the Swedish page is rendered without a marker left over."""
    import re

    from fallwatch.gateway.console_routes import MESSAGES as CARE_MESSAGES
    from fallwatch.gateway.http import CONSOLE_MESSAGES, render_page

    page = (ROOT / "gateway/static/staff.html").read_text()
    used = set(re.findall(r"\{\{(.+?)\}\}", page)) - {"lang"} | set(re.findall(r'\bt\("(.+?)"\)', page))
    known = set(CONSOLE_MESSAGES) | set(CARE_MESSAGES)
    assert used and used <= known, used - known
    sv = render_page(page, "sv")
    assert "{{" not in sv and "/*I18N*/{}" not in sv and '<html lang="sv">' in sv
    assert "Logga in" in sv and ">Sign in<" not in sv
