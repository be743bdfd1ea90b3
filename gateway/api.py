"""The narrow interface the HTTP endpoints use: exactly what they read and do, nothing more.

:class:`GatewayReader` is what :mod:`fallwatch.gateway.http` depends on (so it can be
served — and tested — against anything that provides it); :class:`GatewayApi` is the
gateway's implementation, built by the composition root from the stages it reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from fallwatch.gateway.care import CareApi, CareReader, RiskReader
from fallwatch.gateway.channels import Action, AlertEvent, Notifier
from fallwatch.gateway.devices_view import DEFAULT_LIMITS, DeviceLimits, device_overview
from fallwatch.gateway.metrics import Metrics
from fallwatch.gateway.paging import AckResult, Pager
from fallwatch.gateway.privacy import Privacy
from fallwatch.gateway.state import StateStore
from fallwatch.gateway.workers import Workers

Row = dict[str, Any]
#: (site_id, resident_id) -> {"name": …, "flat": …} or None: how the console names a resident.
#: The provisioning registry (gateway/registry.py, when merged) plugs its lookup in here.
ResidentLookup = Callable[[str, str], "dict[str, str] | None"]


def no_registry(site_id: str, resident_id: str) -> dict[str, str] | None:
    """Without a resident registry the console can only show the id the hub sent."""
    return None


class GatewayReader(Protocol):
    def dead_workers(self) -> list[str]:
        """Names of worker threads that are not running (``/healthz``)."""
        ...

    def worker_problems(self) -> dict[str, str]:
        """Worker threads alive but stuck on one batch or crash-looping, and why (``/healthz``)."""
        ...

    def ready(self) -> tuple[bool, str]:
        """Whether the gateway takes messages, and why not (``/readyz``)."""
        ...

    def metrics_text(self) -> bytes:
        """Prometheus text exposition (``/metrics``)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Counters and gauges as JSON (``/stats``)."""
        ...

    def alerts(self, kind: str | None = None, status: str | None = None, open_only: bool = False) -> list[Row]:
        """Alerts, oldest first, optionally of one kind / status, or every open one (``/alerts``)."""
        ...

    def devices(self) -> list[Row]:
        """The device registry (``/devices``)."""
        ...

    def device_overview(self, now_ms: int) -> list[Row]:
        """Every hub and sensor for the technician's device page, what needs a visit first;
        device facts only, no resident data (``/devices/overview``, gateway/devices_view.py)."""
        ...

    def transition(self, alert_id: str, action: str, actor: str, now_ms: int, *, via: str | None = None,
                   outcome: str | None = None, note: str | None = None) -> Row | None:
        """``acknowledge`` or ``clear`` an alert as ``actor`` (a resolution with an outcome and a
        note); None if unknown; raises :class:`~fallwatch.gateway.state.StateError` for a
        transition the lifecycle forbids."""
        ...

    def ack_link(self, token: str, use: bool) -> AckResult:
        """Describe (GET) or use (POST) a message's acknowledge link."""
        ...

    def alert_history(self, alert_id: str) -> Row | None:
        """One alert with its audit trail and every delivery try (``/alerts/{id}``)."""
        ...

    def planning(self, since_ms: int) -> list[Row]:
        """Alerts that are never sent, for the day's planning list (``/planning``)."""
        ...

    def add_push_subscription(self, person: str, subscription: dict[str, Any]) -> int:
        """Keep a phone's Web Push subscription for a person of the roster: 200, or 404 if unknown."""
        ...

    def log_access(self, actor: str, role: str, method: str, path: str, status: int, client: str,
                   now_ms: int) -> None:
        """Append one request for staff data to the audit log."""
        ...

    def access_log(self) -> list[Row]:
        """The access audit log, newest first (``/audit``)."""
        ...

    def team_of_site(self, site_id: str) -> str | None:
        """The id of the ``[[gateway.paging.teams]]`` team answering for a site (None: no team):
        a member of staff with a team sees only that team's sites."""
        ...

    def site_timezone(self, site_id: str) -> str:
        """The time zone of the team answering for a site (times are shown as its clock reads)."""
        ...

    def resident(self, site_id: str, resident_id: str) -> dict[str, str] | None:
        """The resident's display name and flat from the registry (None: not registered), so
        staff read a name, never a bare id like ``r07``."""
        ...

    def release_thread(self) -> None:
        """Free what the calling (request) thread holds, e.g. its state-DB connection."""
        ...

    def care(self) -> CareReader:
        """Residents' risk pages, recorded actions, the planning list, an alert's "since"."""
        ...


class GatewayApi:
    """:class:`GatewayReader` over the gateway's state store, workers, metrics and stats."""

    def __init__(self, state: StateStore, workers: Workers, metrics: Metrics, notifier: Notifier,
                 stats: Callable[[], dict[str, Any]], ready: Callable[[], tuple[bool, str]],
                 pager: Pager | None = None, residents: ResidentLookup = no_registry,
                 series: Callable[[], RiskReader] | None = None,
                 device_limits: DeviceLimits = DEFAULT_LIMITS, privacy: Privacy | None = None) -> None:
        self._state = state
        self._pager = pager
        self._notifier = notifier
        self._workers = workers
        self._metrics = metrics
        self._stats = stats
        self._ready = ready
        self._residents = residents
        self._device_limits = device_limits
        self._privacy = privacy
        self._default_tz = "Europe/Stockholm"  # a site no team answers for (config Team.timezone's default)
        self._care = CareApi(state, lambda: pager.registry if pager is not None else None, series,
                             pager.store.deliveries if pager is not None else lambda alert_id: [],
                             lambda pid: getattr(pager.roster.people.get(pid), "name", None) if pager else None)

    def dead_workers(self) -> list[str]:
        return self._workers.dead()

    def worker_problems(self) -> dict[str, str]:
        return self._workers.problems()

    def ready(self) -> tuple[bool, str]:
        return self._ready()

    def metrics_text(self) -> bytes:
        return self._metrics.render()

    def stats(self) -> dict[str, Any]:
        return self._stats()

    def alerts(self, kind: str | None = None, status: str | None = None, open_only: bool = False) -> list[Row]:
        return self._state.alerts(kind=kind, status=status, open_only=open_only)

    def devices(self) -> list[Row]:
        return self._state.devices()

    def device_overview(self, now_ms: int) -> list[Row]:
        registry = self._pager.registry if self._pager is not None else None
        registered = registry.devices() if registry is not None else []
        device_alerts = [a for a in self._state.alerts(open_only=True) if a["kind"] != "fall"]
        return device_overview(self._state.devices(), registered, device_alerts, now_ms, self._device_limits)

    def transition(self, alert_id: str, action: str, actor: str, now_ms: int, *, via: str | None = None,
                   outcome: str | None = None, note: str | None = None) -> Row | None:
        alert = self._state.transition(alert_id, action, actor, now_ms, via=via, outcome=outcome, note=note)
        if alert is not None:
            done = Action.ACKNOWLEDGED if action == "acknowledge" else Action.RESOLVED
            self._notifier.notify(AlertEvent.from_alert(alert, done, now_ms, actor))
        return alert

    def ack_link(self, token: str, use: bool) -> AckResult:
        if self._pager is None or not self._pager.enabled:
            return AckResult(404, "acknowledge links are not enabled on this gateway")
        return self._pager.use_link(token) if use else self._pager.describe_link(token)

    def alert_history(self, alert_id: str) -> Row | None:
        alert = self._state.alert(alert_id)
        if alert is None:
            return None
        out = dict(alert)
        out["log"] = self._state.audit(alert_id)
        out["deliveries"] = self._pager.store.deliveries(alert_id) if self._pager is not None else []
        out["page"] = self._pager.store.page(alert_id) if self._pager is not None else None
        return out

    def planning(self, since_ms: int) -> list[Row]:
        return self._pager.planning(since_ms) if self._pager is not None else []

    def add_push_subscription(self, person: str, subscription: dict[str, Any]) -> int:
        if self._pager is None or self._pager.roster.recipient(person) is None:
            return 404
        self._pager.store.add_subscription(person, subscription, int(time.time() * 1000))
        return 200

    def log_access(self, actor: str, role: str, method: str, path: str, status: int, client: str,
                   now_ms: int) -> None:
        self._state.log_access(actor, role, method, path, status, client, now_ms)

    def access_log(self) -> list[Row]:
        return self._state.access_log()

    def team_of_site(self, site_id: str) -> str | None:
        team = self._pager.roster.team_for(site_id) if self._pager is not None else None
        return team.id if team is not None else None

    def site_timezone(self, site_id: str) -> str:
        team = self._pager.roster.team_for(site_id) if self._pager is not None else None
        return team.timezone if team is not None else self._default_tz

    def resident(self, site_id: str, resident_id: str) -> dict[str, str] | None:
        return self._residents(site_id, resident_id)

    def release_thread(self) -> None:
        self._care.release_thread()
        self._state.release_thread()

    def care(self) -> CareReader:
        return self._care

    def privacy_service(self) -> Privacy | None:
        """Export, erasure and the audit logs for an admin (gateway/privacy_routes.py)."""
        return self._privacy
