"""InfluxDB 2.x / 3.x through influxdb-client: synchronous writes to bucket ``database/retention_policy``."""

from __future__ import annotations

from typing import Any, Literal

from fallwatch.config import InfluxConfig
from fallwatch.gateway.points import SeriesPoint, influx_point
from fallwatch.gateway.sinks import SINKS, SeriesSink, SinkError, risk_row
from fallwatch.plugins import PluginConfig


class InfluxClientSinkConfig(PluginConfig):
    type: Literal["influxdb-client"] = "influxdb-client"


@SINKS.register(InfluxClientSinkConfig)
def _make(_: InfluxClientSinkConfig, cfg: InfluxConfig) -> SeriesSink:
    return InfluxClientSink(cfg)


class InfluxClientSink:
    """InfluxDB 2.x / 3.x via influxdb-client, synchronous writes to bucket ``db/rp``."""

    def __init__(self, cfg: InfluxConfig) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.cfg = cfg
        self.name = f"influxdb-v{cfg.version}"
        token = cfg.token or (f"{cfg.username}:{cfg.password or ''}" if cfg.username else None)
        # "" and None both mean "no token" to the client (it tests truthiness)
        self.client = InfluxDBClient(url=cfg.url, token=token or "", org=cfg.org, timeout=int(cfg.timeout_s * 1000))
        self.api = self.client.write_api(write_options=SYNCHRONOUS)

    def setup(self) -> None:
        """Buckets are provisioned by the operator (docs/storage.md); nothing to create here."""

    def write(self, points: list[SeriesPoint]) -> None:
        if not points:
            return
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self.api.write(bucket=self.cfg.bucket, org=self.cfg.org, record=[influx_point(p) for p in points])
        except ApiException as exc:
            status = int(exc.status or 0)
            raise SinkError(
                f"write HTTP {status}: {exc.reason}", retryable=status >= 500 or status in (0, 404, 408, 429)
            ) from None
        except (HTTPError, OSError) as exc:
            raise SinkError(f"write failed: {exc}", retryable=True) from None

    def count(self, measurement: str) -> int:
        tables = self.client.query_api().query(
            f'from(bucket: "{self.cfg.bucket}") |> range(start: 0) '
            f'|> filter(fn: (r) => r._measurement == "{measurement}") |> group() |> count()',
            org=self.cfg.org,
        )
        return max((int(r.get_value()) for t in tables for r in t.records),
                   default=0)

    def risk_points(self, since_ms: int, site_id: str | None = None,
                    resident_id: str | None = None) -> list[dict[str, Any]]:
        import json

        flux = (f'from(bucket: {json.dumps(self.cfg.bucket)}) |> range(start: time(v: {int(since_ms) * 1_000_000})) '
                '|> filter(fn: (r) => r._measurement == "risk")')
        if site_id is not None:
            flux += f" |> filter(fn: (r) => r.site_id == {json.dumps(site_id)})"
        flux += ' |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")'
        if resident_id is not None:
            flux += f" |> filter(fn: (r) => r.resident_id == {json.dumps(resident_id)})"
        try:
            tables = self.client.query_api().query(flux, org=self.cfg.org)
        except Exception as exc:  # the client raises its own and urllib3's errors
            raise SinkError(f"risk query failed: {exc}", retryable=True) from None
        rows = [risk_row(r.values, r.values, int(r.get_time().timestamp() * 1000)) for t in tables for r in t.records
                if r.values.get("score") is not None]
        return sorted(rows, key=lambda r: r["ts_ms"])

    def close(self) -> None:
        self.client.close()
