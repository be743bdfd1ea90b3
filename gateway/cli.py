"""``fallwatch gateway …``: run the gateway, inspect and act on alerts, generate broker config."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fallwatch.config import ConfigError, FallwatchConfig, load_config
from fallwatch.gateway.staff import ROLES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("gateway", help="ingest MQTT into InfluxDB, track devices and alerts")
    gsub = p.add_subparsers(dest="gateway_command", metavar="SUBCOMMAND", required=True)

    run = gsub.add_parser("run", help="run the gateway until SIGTERM/SIGINT")
    run.add_argument("--config", type=Path, help="TOML config file")
    run.add_argument("--validate-config", action="store_true", help="check the config and exit")
    run.add_argument("--workers", type=int, default=None, metavar="N",
                     help="gateway processes on one shared subscription, one HTTP endpoint for all "
                          "(default: the number of cores; 1 = this process only)")
    run.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)  # set by the pool
    run.set_defaults(func=_run)

    al = gsub.add_parser("alerts", help="list alerts from the state DB")
    al.add_argument("--config", type=Path)
    al.add_argument("--status", help="raised|acknowledged|cleared|cancelled")
    al.add_argument("--kind", help="fall|device_offline|test_overdue")
    al.set_defaults(func=_alerts)

    for action in ("ack", "clear", "resolve"):
        a = gsub.add_parser(action, help=f"{action} an alert (writes the audit log; a running gateway's pager "
                                         f"stops paging and tells those paged within a second)")
        a.add_argument("alert_id")
        a.add_argument("--by", required=True, help="who acts (recorded)")
        a.add_argument("--config", type=Path)
        if action != "ack":
            from fallwatch.gateway.state import OUTCOMES

            a.add_argument("--outcome", choices=OUTCOMES, help="what happened")
            a.add_argument("--note", help="free text, e.g. what was done")
        a.set_defaults(func=_transition, action="acknowledge" if action == "ack" else "clear")

    at = gsub.add_parser("answer-times", help="answer times of urgent alerts per team and shift (TSA: 97.5 %% "
                                              "within 60 s)")
    at.add_argument("--config", type=Path)
    at.add_argument("--days", type=float, default=30.0, help="look back this many days (default 30)")
    at.add_argument("--json", action="store_true")
    at.set_defaults(func=_answer_times)

    hi = gsub.add_parser("history", help="one alert's lifecycle: every step and every delivery try")
    hi.add_argument("alert_id")
    hi.add_argument("--config", type=Path)
    hi.set_defaults(func=_history)

    ps = gsub.add_parser("push-subscribe", help="register a phone's Web Push subscription (JSON file) for a person")
    ps.add_argument("person")
    ps.add_argument("subscription", type=Path)
    ps.add_argument("--config", type=Path)
    ps.set_defaults(func=_push_subscribe)

    ds = gsub.add_parser("downsample", help="aggregate recent raw series into a long-retention policy (1.x)")
    ds.add_argument("--config", type=Path)
    ds.add_argument("--every", default="5m", help="bucket width (default 5m)")
    ds.add_argument("--since", default="2h", help="window to (re)aggregate (default 2h)")
    ds.add_argument("--into", default="agg_1y", help="target retention policy (default agg_1y, 400 d)")
    ds.set_defaults(func=_downsample)

    bc = gsub.add_parser("broker-config", help="generate a production Mosquitto config, per-device passwords and ACLs")
    bc.add_argument("--out", type=Path, required=True, help="directory to write into")
    bc.add_argument("--devices", required=True, help="file with one 'site_id device_id' per line (hubs to provision)")
    bc.add_argument("--gateways", default="gw-1", help="comma-separated gateway user names")
    bc.add_argument(
        "--tls-dir",
        default="/etc/mosquitto/certs",
        help="where ca.crt, server.crt, server.key live on the broker host",
    )
    bc.add_argument("--data-dir", default="/var/lib/mosquitto")
    bc.set_defaults(func=_broker_config)

    av = gsub.add_parser("audit-verify", help="recompute the audit logs' hash chains (exit 1 if one was altered)")
    av.add_argument("--config", type=Path)
    av.set_defaults(func=_audit_verify)

    _register_resident(gsub)

    st = gsub.add_parser("staff", help="staff accounts for the alert page and API (roles, personal tokens)")
    ssub = st.add_subparsers(dest="staff_command", required=True)
    sa = ssub.add_parser("add", help="create an account; its token is printed once and stored only as a hash")
    sa.add_argument("name")
    sa.add_argument("--role", required=True, choices=ROLES)
    sa.add_argument("--config", type=Path, help="TOML config whose gateway.staff_users_file is used")
    sa.add_argument("--file", type=Path, help="accounts file (overrides the config)")
    sa.add_argument("--team", help="the [[gateway.paging.teams]] id whose sites they see (default: every site)")
    sa.add_argument("--password", action="store_true",
                    help="also set a console password (asked for, or read from standard input; never an argument)")
    sa.set_defaults(func=_staff_add)
    sl = ssub.add_parser("list", help="list accounts (names and roles)")
    sl.add_argument("--config", type=Path)
    sl.add_argument("--file", type=Path)
    sl.set_defaults(func=_staff_list)


def _register_resident(gsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``gateway resident export|erase``: a resident's data on request (docs/privacy.md)."""
    r = gsub.add_parser("resident", help="export or erase one resident's data (GDPR requests; audited)")
    rsub = r.add_subparsers(dest="resident_command", required=True)
    ex = rsub.add_parser("export", help="everything the gateway holds about a resident, as one JSON file")
    er = rsub.add_parser("erase", help="erase a resident everywhere: series store, state store, spool")
    for p in (ex, er):
        p.add_argument("resident_id")
        p.add_argument("--site", help="the resident's site (needed only when the id exists at several)")
        p.add_argument("--config", type=Path)
        p.add_argument("--actor", default=os.environ.get("USER", "cli"), help="who asks (the audit log's actor)")
    ex.add_argument("-o", "--output", type=Path, help="the file to write (default: standard output)")
    ex.set_defaults(func=_resident_export)
    er.add_argument("--yes", action="store_true", help="really erase (it cannot be undone)")
    er.set_defaults(func=_resident_erase)


def _privacy(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The privacy service over the config's stores, and the resident's site (None: unknown).
    Raises PrivacyError when the id exists at several sites and --site was not given."""
    from fallwatch.gateway.privacy import Privacy
    from fallwatch.gateway.registry import Registry
    from fallwatch.gateway.state import StateStore

    cfg = _load(args)
    st = StateStore(cfg.gateway.state_db, cfg.gateway.state_db_type)
    st.setup()
    Registry(st).setup()
    spool = Path(cfg.gateway.spool_dir)  # and the spools of `gateway run --workers N` (gateway/pool.py)
    priv = Privacy(st, cfg.influx, [spool, *sorted(spool.glob("worker-w*"))])
    priv.setup()
    return priv, priv.site_of(args.resident_id, args.site)


def _resident_export(args: argparse.Namespace) -> int:
    from fallwatch.gateway.privacy import PrivacyError

    try:
        priv, site = _privacy(args)
        if site is None:
            raise PrivacyError(f"the gateway holds nothing about resident {args.resident_id!r}")
        doc = priv.export(site, args.resident_id, args.actor)
    except PrivacyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(doc, indent=2, sort_keys=True, default=str, ensure_ascii=False) + "\n"
    if args.output:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # personal data: owner only
        os.fchmod(fd, 0o600)  # also when the file was there before
        with os.fdopen(fd, "w") as f:
            f.write(text)
        print(f"wrote {args.output}: {len(doc['alerts'])} alerts, {len(doc['risk_scores'])} risk scores "
              f"(audited as {doc['pseudonym']})", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _resident_erase(args: argparse.Namespace) -> int:
    from fallwatch.gateway.privacy import PrivacyError

    if not args.yes:
        print("erasing cannot be undone: add --yes (export first: fallwatch gateway resident export)",
              file=sys.stderr)
        return 2
    try:
        priv, site = _privacy(args)
        if site is None:  # idempotent: nothing left to erase is not an error
            print(json.dumps({"resident_id": args.resident_id, "erased": "nothing held (already erased?)"}))
            return 0
        report = priv.erase(site, args.resident_id, args.actor)
    except PrivacyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, sort_keys=True))
    return 0


def _load(args: argparse.Namespace) -> FallwatchConfig:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


def _run(args: argparse.Namespace) -> int:
    from fallwatch.gateway.app import Gateway, check_plugins

    cfg = _load(args)
    try:
        check_plugins(cfg)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.validate_config:
        print("config ok")
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.worker_index is not None:
        from fallwatch.gateway.pool import run_worker

        run_worker(cfg, args.worker_index, stop, sys.stdout)
        return 0
    from fallwatch.gateway.pool import Pool, default_workers

    n = args.workers if args.workers is not None else default_workers()
    if n < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    if n > 1:
        pool = Pool(cfg, n, args.config)
        pool.start()
        print(f"gateway {cfg.gateway.gateway_id} running, {n} workers; http {pool.http_url}", file=sys.stderr,
              flush=True)
        try:
            pool.supervise(stop)
        finally:
            pool.stop()
        return 0
    gw = Gateway(cfg)
    gw.start()
    from fallwatch.gateway.runtime import settle

    settle()  # this process is the gateway: its interpreter is tuned for the alert path
    print(f"gateway {cfg.gateway.gateway_id} running; http {gw.http_url}", file=sys.stderr, flush=True)
    while not stop.wait(1.0):
        pass
    gw.stop()
    return 0


def _alerts(args: argparse.Namespace) -> int:
    from fallwatch.gateway.state import StateStore

    cfg = _load(args)
    st = StateStore(cfg.gateway.state_db, cfg.gateway.state_db_type)
    st.setup()
    for a in st.alerts(kind=args.kind, status=args.status):
        print(json.dumps(a, default=str))
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from fallwatch.gateway.state import StateStore

    cfg = _load(args)
    st = StateStore(cfg.gateway.state_db, cfg.gateway.state_db_type)
    st.setup()
    from fallwatch.gateway.registry import LOG_FIELDS, Registry

    Registry(st).setup()  # the provisioning registry's audit trail is checked too
    try:
        report = st.verify_audit({"reg_log": LOG_FIELDS})
    finally:
        st.close()
    ok = True
    for table, r in report.items():
        if r["broken_at"] is None:
            print(f"{table}: ok, {r['rows']} rows ({r['unchained_legacy_rows']} from before the chain), "
                  f"head {r['head']}")
        else:
            ok = False
            print(f"{table}: ALTERED at row {json.dumps(r['broken_at'], default=str)} "
                  f"({r['rows']} rows): the chain does not verify from here on")
    return 0 if ok else 1


def _staff_dir(args: argparse.Namespace) -> Any:
    from fallwatch.gateway.staff import StaffDirectory

    path = args.file
    if path is None:
        path = load_config(args.config).gateway.staff_users_file
    if path is None:
        raise SystemExit("no accounts file: pass --file or set gateway.staff_users_file in the config")
    return StaffDirectory(Path(path))


def _staff_add(args: argparse.Namespace) -> int:
    from fallwatch.gateway.staff import StaffError

    password = None
    if getattr(args, "password", False):
        import getpass

        password = getpass.getpass("console password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        if len(password) < 10:
            print("error: a console password needs at least 10 characters", file=sys.stderr)
            return 2
    try:
        token = _staff_dir(args).add(args.name, args.role, team=getattr(args, "team", None), password=password)
    except StaffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"created {args.name} ({args.role}); personal token (shown once, give it to them privately):",
          file=sys.stderr)
    print(token)
    return 0


def _staff_list(args: argparse.Namespace) -> int:
    for u in _staff_dir(args).users():
        print(f"{u.name}\t{u.role}")
    return 0


def _transition(args: argparse.Namespace) -> int:
    from fallwatch.gateway.state import StateError, StateStore

    cfg = _load(args)
    st = StateStore(cfg.gateway.state_db, cfg.gateway.state_db_type)
    st.setup()
    try:
        alert = st.transition(args.alert_id, args.action, args.by, time.time_ns() // 1_000_000,
                              via="cli" if args.action == "acknowledge" else None,
                              outcome=getattr(args, "outcome", None), note=getattr(args, "note", None))
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if alert is None:
        print(f"error: no alert {args.alert_id!r}", file=sys.stderr)
        return 1
    print(json.dumps(alert, default=str))
    return 0


def _answer_times(args: argparse.Namespace) -> int:
    from fallwatch.gateway.paging.report import answer_times
    from fallwatch.gateway.paging.store import PagingStore
    from fallwatch.gateway.state import StateStore

    cfg = _load(args)
    st = StateStore(cfg.gateway.state_db, cfg.gateway.state_db_type)
    st.setup()
    PagingStore(st).setup()
    rows = answer_times(st, cfg.gateway.paging, time.time_ns() // 1_000_000 - int(args.days * 86_400_000))
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'team':<14}{'shift':<14}{'alerts':>7}{'answered':>9}{'p50 s':>8}{'p90 s':>8}{'≤60 s':>8}{'≤180 s':>8}")
    for r in rows:
        p50 = "-" if r["p50_s"] is None else r["p50_s"]
        p90 = "-" if r["p90_s"] is None else r["p90_s"]
        print(f"{r['team']:<14}{r['shift']:<14}{r['alerts']:>7}{r['answered']:>9}{p50:>8}"
              f"{p90:>8}{r['within_60s_pct']:>7}%{r['within_180s_pct']:>7}%")
    return 0


def _history(args: argparse.Namespace) -> int:
    from fallwatch.gateway.paging.store import PagingStore
    from fallwatch.gateway.state import StateStore

    cfg = _load(args)
    st = StateStore(cfg.gateway.state_db, cfg.gateway.state_db_type)
    st.setup()
    ps = PagingStore(st)
    ps.setup()
    alert = st.alert(args.alert_id)
    if alert is None:
        print(f"error: no alert {args.alert_id!r}", file=sys.stderr)
        return 1
    print(json.dumps({"alert": alert, "page": ps.page(args.alert_id), "log": st.audit(args.alert_id),
                      "deliveries": ps.deliveries(args.alert_id)}, default=str, indent=1))
    return 0


def _push_subscribe(args: argparse.Namespace) -> int:
    from fallwatch.gateway.paging.store import PagingStore
    from fallwatch.gateway.state import StateStore

    cfg = _load(args)
    try:
        sub = json.loads(args.subscription.read_text())
        if not str(sub["endpoint"]).startswith(("https://", "http://")) or not sub["keys"]["p256dh"] \
                or not sub["keys"]["auth"]:
            raise ValueError("endpoint, keys.p256dh and keys.auth are required")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: not a Web Push subscription: {exc}", file=sys.stderr)
        return 1
    if args.person not in {p.id for p in cfg.gateway.paging.people}:
        print(f"error: {args.person!r} is not in [[gateway.paging.people]]", file=sys.stderr)
        return 1
    st = StateStore(cfg.gateway.state_db, cfg.gateway.state_db_type)
    st.setup()
    ps = PagingStore(st)
    ps.setup()
    ps.add_subscription(args.person, sub, time.time_ns() // 1_000_000)
    print(f"subscription for {args.person} stored ({len(ps.subscriptions(args.person))} in all)")
    return 0


def _broker_config(args: argparse.Namespace) -> int:
    from fallwatch.gateway.brokerconf import generate

    pairs = []
    for line in Path(args.devices).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            site, device = line.split()
            pairs.append((site, device))
    out = generate(
        args.out,
        pairs,
        [g.strip() for g in args.gateways.split(",") if g.strip()],
        tls_dir=args.tls_dir,
        data_dir=args.data_dir,
    )
    for p in out:
        print(p)
    return 0


def _downsample(args: argparse.Namespace) -> int:
    from fallwatch.gateway.downsample import downsample
    from fallwatch.gateway.sinks import SinkError

    cfg = _load(args)
    try:
        written = downsample(cfg.influx, every=args.every, since=args.since, into=args.into)
    except (SinkError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(written))
    return 0
