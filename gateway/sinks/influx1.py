"""InfluxDB 1.x over its HTTP API (``/write`` + ``/query``); line protocol from influxdb-client's serializer.

Writes and queries go over kept-alive connections (:class:`~fallwatch.gateway.httppost.Poster`)
instead of a ``requests`` session (issue 16: ~1.3 ms of CPU per POST against ~0.16 ms, and
the gateway makes ~19 writes a second at 200 msg/s; and ``requests`` is ~7 MB of every
gateway process's memory); a proxy configured for the store's URL keeps the ``requests`` path.
"""

from __future__ import annotations

import http.client
import json
from typing import Any, Literal
from urllib.parse import urlencode

from fallwatch.config import InfluxConfig
from fallwatch.gateway.httppost import Poster, basic_auth
from fallwatch.gateway.points import SeriesPoint, to_line
from fallwatch.gateway.sinks import SINKS, SeriesSink, SinkError, risk_row
from fallwatch.plugins import PluginConfig


class Influx1SinkConfig(PluginConfig):
    type: Literal["influxdb-v1"] = "influxdb-v1"


@SINKS.register(Influx1SinkConfig)
def _make(_: Influx1SinkConfig, cfg: InfluxConfig) -> SeriesSink:
    return Influx1Sink(cfg)


class Influx1Sink:
    """InfluxDB 1.x over its HTTP API; line protocol from influxdb-client's serializer."""

    name = "influxdb-v1"

    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        self.base = cfg.url.rstrip("/")
        self._params = {"db": cfg.database, "precision": "ms"}
        if cfg.retention_policy != "autogen":
            self._params["rp"] = cfg.retention_policy
        auth = {"Authorization": basic_auth(cfg.username, cfg.password)} if cfg.username else {}
        self._writer = Poster.for_url(f"{self.base}/write?{urlencode(self._params)}", cfg.timeout_s,
                                      {"Content-Type": "text/plain; charset=utf-8", **auth})
        self._querier = Poster.for_url(f"{self.base}/query", cfg.timeout_s, auth) if self._writer else None
        #: a ``requests`` session, only when the environment routes the store through a proxy
        self._session: Any = None

    def _requests(self) -> Any:
        if self._session is None:
            import requests  # only behind a proxy: requests knows how to go through it

            self._session = requests.Session()
            if self.cfg.username:
                self._session.auth = (self.cfg.username, self.cfg.password or "")
        return self._session

    def query(self, q: str, *, db: bool = True) -> list[dict[str, Any]]:
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = self.cfg.database
        if self._querier is not None:
            try:
                status, text = self._querier.post(b"", path=f"{self._querier.path}?{urlencode(params)}")
            except (OSError, http.client.HTTPException) as exc:
                raise SinkError(f"query failed: {type(exc).__name__}: {exc}", retryable=True) from None
        else:
            import requests

            try:
                r = self._requests().post(f"{self.base}/query", params=params, timeout=self.cfg.timeout_s)
            except requests.RequestException as exc:
                raise SinkError(f"query failed: {exc}", retryable=True) from None
            status, text = r.status_code, r.text
        if status >= 300:
            raise SinkError(f"query HTTP {status}: {text[:300]}", retryable=status >= 500)
        try:
            res = json.loads(text)["results"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise SinkError(f"query: unexpected answer {text[:300]!r}", retryable=True) from None
        if "error" in res:
            raise SinkError(f"query error: {res['error']}", retryable=False)
        return list(res.get("series", []))

    def setup(self) -> None:
        """Create the database and (if not autogen) a 30-day raw retention policy."""
        self.query(f'CREATE DATABASE "{self.cfg.database}"', db=False)
        rp = self.cfg.retention_policy
        if rp != "autogen":
            existing = self.query(f'SHOW RETENTION POLICIES ON "{self.cfg.database}"', db=False)
            names = {row[0] for s in existing for row in s.get("values", [])}
            if rp not in names:
                self.query(
                    f'CREATE RETENTION POLICY "{rp}" ON "{self.cfg.database}" DURATION 30d REPLICATION 1',
                    db=False,
                )

    def write(self, points: list[SeriesPoint]) -> None:
        if not points:
            return
        body = "\n".join(line for line in map(to_line, points) if line).encode()
        if self._writer is not None:
            try:
                status, text = self._writer.post(body)
            except (OSError, http.client.HTTPException) as exc:
                raise SinkError(f"write failed: {type(exc).__name__}: {exc}", retryable=True) from None
        else:  # a proxy is configured for the store: requests knows how to go through it
            import requests

            try:
                r = self._requests().post(f"{self.base}/write", params=self._params, data=body,
                                          timeout=self.cfg.timeout_s)
            except requests.RequestException as exc:
                raise SinkError(f"write failed: {type(exc).__name__}: {exc}", retryable=True) from None
            status, text = r.status_code, r.text
        if status == 204:
            return
        retryable = status >= 500 or status in (404, 408, 429)  # 404: database not yet there
        raise SinkError(f"write HTTP {status}: {text[:300]}", retryable=retryable)

    def count(self, measurement: str) -> int:
        series = self.query(f'SELECT count(*) FROM "{measurement}"')
        best = 0
        for s in series:
            for row in s.get("values", []):
                best = max(best, *(int(v) for v in row[1:] if isinstance(v, int | float)))
        return best

    def risk_points(self, since_ms: int, site_id: str | None = None,
                    resident_id: str | None = None) -> list[dict[str, Any]]:
        rp = self.cfg.retention_policy  # where the gateway writes (not necessarily the default policy)
        where = '"risk"' if rp == "autogen" else f'"{self.cfg.database}"."{rp}"."risk"'
        q = f"SELECT * FROM {where} WHERE time >= {int(since_ms)}ms"
        for key, value in (("site_id", site_id), ("resident_id", resident_id)):
            if value is not None:  # an InfluxQL string literal: backslash and quote escaped
                q += f" AND \"{key}\" = '" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        out = []
        for series in self.query(q + " ORDER BY time"):
            cols = series["columns"]
            for values in series.get("values", []):
                row = dict(zip(cols, values, strict=True))
                if row.get("score") is not None:
                    out.append(risk_row(row, row, int(row["time"])))
        return out

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
        for poster in (self._writer, self._querier):
            if poster is not None:
                poster.close()
