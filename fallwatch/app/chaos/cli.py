"""``fallwatch chaos SCENARIO [--json]``: a simulated care home through the whole system
under a fault schedule, every fall accounted for against the simulator's ground truth.

Exit status 0 only when nothing was lost, nothing reached staff twice and every fault
recovered by itself (docs/chaos.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("chaos", help="the whole system under a fault schedule, counted against ground truth",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", metavar="SCENARIO", help="ci | long | soak | a scenario TOML file")
    p.add_argument("--state", choices=("postgresql", "sqlite"), help="override the scenario's state store")
    p.add_argument("--replicas", type=int, choices=(1, 2), help="override the number of gateway replicas")
    p.add_argument("--workdir", type=Path, help="keep every log, journal and config here (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.set_defaults(func=_cmd)


def ok(r: dict[str, Any]) -> bool:
    return (r["lost"] == 0 and r["duplicates_to_staff"] == 0 and r["settled"] and not r["crashed"]
            and all(f.get("recovered_s") is not None and "error" not in f for f in r["faults"]))


def run(scenario: str, *, state: str | None = None, replicas: int | None = None, workdir: Path | None = None,
        progress: bool = True) -> dict[str, Any]:
    from fallwatch.app.chaos import scenario as scn
    from fallwatch.app.chaos.accounting import account
    from fallwatch.app.chaos.runner import Harness

    sc = scn.load(scenario)
    upd: dict[str, Any] = {k: v for k, v in (("state", state), ("replicas", replicas)) if v is not None}
    sc = sc.model_copy(update=upd)
    t_wall = time.monotonic()
    with contextlib.ExitStack() as stack:
        wd = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fw-chaos-")))
        h = Harness(sc, Path(wd), progress=progress)
        try:
            h.start()
            h.run()
            settled = h.settle()
            report = account(h, settled)
            (Path(wd) / "report.json").write_text(json.dumps(report, sort_keys=True, default=str))
        finally:
            h.stop()
    report["wall_s"] = round(time.monotonic() - t_wall, 1)
    report["ok"] = ok(report)
    return report


def _cmd(args: argparse.Namespace) -> int:
    try:
        r = run(args.scenario, state=args.state, replicas=args.replicas, workdir=args.workdir)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print_table(r, sys.stdout)
    if args.json:
        print(json.dumps(r, sort_keys=True, default=str))
    return 0 if r["ok"] else 1


def print_table(r: dict[str, Any], out: Any) -> None:
    rows = [
        ("falls injected (ground truth)", r["falls_injected"]),
        ("falls detected by the edge", r["falls_detected"]),
        ("alerts raised (edge journals)", r["alerts_raised"]),
        ("alerts stored (InfluxDB + state DB)", r["alerts_stored"]),
        ("alerts notified (e-mail + web hook, at the receiver)", r["alerts_notified"]),
        ("duplicates to staff", r["duplicates_to_staff"]),
        ("reminders to staff (unacknowledged)", r["reminders_to_staff"]),
        ("alerts acknowledged (ack link)", r["alerts_acknowledged"]),
        ("telemetry points expected / stored", f"{r['telemetry_expected']} / {r['telemetry_stored']}"),
        ("outbox rows left", r["outbox_left"]),
        ("flood messages sent / rejected by gateways", f"{r['flood_sent']} / {r['rejected_by_gateways']}"),
        ("dead letters received (at the receiver)", r.get("dead_letters_received")),
        ("telemetry stored at a clamped time (clock ahead)", r.get("telemetry_clamped")),
        ("decision → notify p50 / p99 / max s", f"{r['decision_to_notify_p50_s']} / "
                                                f"{r['decision_to_notify_p99_s']} / {r['decision_to_notify_max_s']}"),
        ("decision → e-mail p50 / p99 s", f"{r['decision_to_email_p50_s']} / {r['decision_to_email_p99_s']}"),
        ("decision → web hook p50 / p99 s", f"{r['decision_to_webhook_p50_s']} / {r['decision_to_webhook_p99_s']}"),
        ("LOST", r["lost"]),
    ]
    print(f"\nfallwatch chaos {r['scenario']}: {r['hubs']} hubs, {r['replicas']} gateway replica(s), "
          f"state {r['state']}, {r['wall_s']} s", file=out)
    for k, v in rows:
        print(f"  {k:<52} {v}", file=out)
    print("  faults:", file=out)
    for f in r["faults"]:
        extra = f" ERROR {f['error']}" if "error" in f else ""
        shown = ("at_s", "duration_s", "recovered_s", "name", "error", "target")
        more = ", ".join(f"{k} {v}" for k, v in f.items() if k not in shown and v is not None)
        print(f"    {f['name']:<16} at {f['at_s']:>6} s for {f['duration_s']:>4} s  recovered in "
              f"{f.get('recovered_s')} s{extra}  ({more})", file=out)
    if r.get("flood_delay"):
        print(f"  flood: {r['flood_delay']}", file=out)
    if r["crashed"]:
        print(f"  CRASHED (died by themselves, at s): {r['crashed']}", file=out)
    if r["lost_alerts"]:
        print(f"  lost alerts: {r['lost_alerts']}", file=out)
    if "soak" in r:
        print(f"  soak: {json.dumps(r['soak'])}", file=out)
    print(f"  {'OK' if r['ok'] else 'FAILED'}", file=out)
