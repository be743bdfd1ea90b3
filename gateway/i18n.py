"""Staff-facing text in the staff's language (gettext catalogs, read with Babel).

Every sentence a carer reads — e-mails, push notifications, SMS, the acknowledge page —
is written in English in the code, marked with ``_()`` (or ``N_()`` in a table, translated
where it is shown), and translated from ``gateway/locale/<lang>.po``. The ``.po`` file is
the only source: it is compiled in memory when first used (no generated ``.mo`` file to
forget), so what the catalog says is what the staff see. A message the catalog does not
hold is shown in English — ``tests/unit/test_i18n.py`` fails the build if any marked
message lacks a Swedish translation.

Swedish (``sv``) is the default for a gateway (``gateway.locale``); a team or a person can
choose ``en``. Times are shown in the site's time zone.
"""

from __future__ import annotations

import gettext
import io
from collections.abc import Callable
from datetime import datetime
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

LOCALES = ("sv", "en")
_DIR = Path(__file__).with_name("locale")


def N_(message: str) -> str:
    """Mark a message for extraction without translating it here (tables)."""
    return message


@cache
def translations(lang: str) -> gettext.NullTranslations:
    """The catalog of ``lang`` ("en", or an unknown language: the English in the code)."""
    po = _DIR / f"{lang}.po"
    if lang == "en" or not po.exists():
        return gettext.NullTranslations()
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with po.open("rb") as f:
        catalog = read_po(f, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def gettext_for(lang: str | None) -> Callable[[str], str]:
    """``_`` for one language."""
    return translations(lang or "en").gettext


def local_time(ms: int, tz: str | None, lang: str | None) -> str:
    """A time as staff read it: local to the site, with its zone's abbreviation."""
    zone = ZoneInfo(tz) if tz else ZoneInfo("UTC")
    t = datetime.fromtimestamp(ms / 1000, zone)
    return t.strftime("%Y-%m-%d %H:%M:%S ") + (t.tzname() or "")
