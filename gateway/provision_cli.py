"""``fallwatch device …`` and ``fallwatch resident …``: the technician's and team lead's
commands on the provisioning registry (docs/provisioning.md).

Every change is audited with the acting person (``--by``, default the login name), and every
change that alters who may connect (a gateway's credentials, revoke, retire, a redeemed or
``--now`` rotation) regenerates the broker's files and reloads it at once when
``provisioning.broker_dir`` (and ``broker_pid_file``) are configured, so "revoked" means
"cut off", not "cut off after someone remembers to reload".
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from fallwatch.config import FallwatchConfig

# the gateway commands' way to read --config: a bad file is its message on stderr and exit status 2
from fallwatch.gateway.cli import _load as _cfg


def _registry(cfg: FallwatchConfig) -> Any:
    from fallwatch.gateway.registry import Registry
    from fallwatch.gateway.state import StateStore

    store = StateStore(cfg.gateway.state_db, cfg.gateway.state_db_type)
    store.setup()
    reg = Registry(store)
    reg.setup()
    return reg


def _open(args: argparse.Namespace) -> tuple[FallwatchConfig, Any]:
    """The command's config (``--config``) and the registry in its state DB."""
    cfg = _cfg(args)
    return cfg, _registry(cfg)


def broker_files(cfg: FallwatchConfig) -> Any:
    """The broker-file settings of the config, None when the registry does not manage them."""
    from fallwatch.gateway.registry import BrokerFiles

    p = cfg.provisioning
    if p.broker_dir is None:
        return None
    return BrokerFiles(out=p.broker_dir, gateways=list(p.gateways), tls_dir=str(p.ca_dir.resolve()),
                       data_dir=p.broker_data_dir, plain_port=p.plain_port, tls_port=p.tls_port,
                       pid_file=p.broker_pid_file, client_certs=p.client_certs)


def _sync(reg: Any, cfg: FallwatchConfig) -> None:
    files = broker_files(cfg)
    if files is None:
        print("note: provisioning.broker_dir is not set: run `fallwatch device sync` where the broker lives",
              file=sys.stderr)
        return
    out = reg.sync_broker(files)
    state = f"broker reloaded (pid {out['reloaded_pid']})" if out["reloaded_pid"] else "broker not running here"
    print(f"broker files: {out['dir']} ({out['users']} users); {state}", file=sys.stderr)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config (gateway.state_db, [provisioning])")
    p.add_argument("--by", default=None, help="who acts (audited; default: your login name)")


def _actor(args: argparse.Namespace) -> str:
    return str(args.by or os.environ.get("FALLWATCH_ACTOR") or getpass.getuser())


def _private_file(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _ms(ms: int | None) -> str:
    return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000))


def _command(parent: argparse._SubParsersAction[argparse.ArgumentParser], func: Any, name: str,
             help: str) -> argparse.ArgumentParser:
    """A subcommand run by ``func``, with the options every command here takes (``--config``,
    ``--by``); the caller adds its own."""
    p = parent.add_parser(name, help=help)
    _common(p)
    p.set_defaults(func=func)
    return p


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("device", help="provisioning: hubs, wearables, room sensors, gateways (docs/provisioning.md)")
    dsub = p.add_subparsers(dest="device_command", metavar="DEVICE_COMMAND", required=True)

    a = _command(dsub, _add, "add",
                 help="register a hub (at a site/home), a wearable or sensor (on a hub), or a gateway")
    a.add_argument("device_id")
    a.add_argument("--kind", required=True, choices=("hub", "wearable", "sensor", "gateway"))
    a.add_argument("--site")
    a.add_argument("--home", help="home (flat, house) at the site; default: the site")
    a.add_argument("--hub", help="the hub a wearable or sensor talks to")
    a.add_argument("--room", help="a sensor's room")
    a.add_argument("--sensor-kind", choices=("pir", "bed", "chair", "door", "bathroom"))
    a.add_argument("--resident", help="a wearable's wearer (same as `device assign`)")
    a.add_argument("--out", type=Path, help="a gateway's credentials file (written 0600)")

    ls = _command(dsub, _list, "list", help="list devices")
    ls.add_argument("--site")
    ls.add_argument("--kind")
    ls.add_argument("--json", action="store_true")

    sh = _command(dsub, _show, "show",
                  help="one device: parts, broker users, wearer history, enrolment codes, audit")
    sh.add_argument("device_id")

    mv = _command(dsub, _move, "move",
                  help="a hub to another site/home, a wearable/sensor to another hub or room")
    mv.add_argument("device_id")
    mv.add_argument("--site")
    mv.add_argument("--home")
    mv.add_argument("--hub")
    mv.add_argument("--room")

    asg = _command(dsub, _assign, "assign", help="give a wearable to a resident (history kept)")
    asg.add_argument("device_id")
    asg.add_argument("resident_id", nargs="?")
    asg.add_argument("--none", action="store_true", help="take it back (no wearer)")
    asg.add_argument("--push", action="store_true", help="tell the hub now (its retained config; see push-config)")

    rv = _command(dsub, _revoke, "revoke",
                  help="cut a hub or gateway off the broker now (lost, stolen, compromised)")
    rv.add_argument("device_id")
    rv.add_argument("--reason", default="")

    ro = _command(dsub, _rotate, "rotate",
                  help="new credentials: a hub gets a new bundle (old one works until it is redeemed, or stops now "
                       "with --now), a gateway a new credentials file")
    ro.add_argument("device_id")
    ro.add_argument("--out", type=Path, required=True, help="bundle (hub) or credentials (gateway) file, 0600")
    ro.add_argument("--now", action="store_true", help="hub: revoke the current credential at once")
    ro.add_argument("--client-cert", action="store_true", help="hub: include a client certificate")

    rt = _command(dsub, _retire, "retire",
                  help="take a device out of service for good (history kept, id never reused)")
    rt.add_argument("device_id")

    eb = _command(dsub, _bundle, "enrol-bundle",
                  help="one file (and a QR-printable one-time token) with all a hub needs")
    eb.add_argument("device_id")
    eb.add_argument("--out", type=Path, required=True, help="bundle file (written 0600)")
    eb.add_argument("--client-cert", action="store_true", help="include a client certificate (CN = device id)")
    eb.add_argument("--ttl-h", type=float, help="hours until the code expires (default provisioning.bundle_ttl_s)")

    pc = _command(dsub, _push_config, "push-config",
                  help="put the registry's wearer assignments into a hub's retained config "
                       "(user {gateway}-config, FALLWATCH_MQTT_CONFIG_PASSWORD)")
    pc.add_argument("device_id", help="the hub")

    _command(dsub, _sync_cmd, "sync",
             help="write the broker's passwd, acl and mosquitto.conf from the registry, reload it")

    im = _command(dsub, _import, "import", help="add or move many devices from a CSV (see docs/provisioning.md)")
    im.add_argument("csv", type=Path)
    im.add_argument("--dry-run", action="store_true", help="show what would change; change nothing")

    es = _command(dsub, _enrol_server, "enrol-server",
                  help="serve one-time enrolment codes to hubs (POST /enrol)")
    es.add_argument("--host", default="0.0.0.0")
    es.add_argument("--port", type=int, default=8181)
    es.add_argument("--tls", action="store_true", help="serve HTTPS with the site CA's server certificate")

    lg = _command(dsub, _log, "log", help="the registry's audit log (optionally of one device)")
    lg.add_argument("subject", nargs="?")

    ca = dsub.add_parser("ca", help="the site CA: init, server certificate, expiry")
    csub = ca.add_subparsers(dest="ca_command", required=True)

    ci = _command(csub, _ca_init, "init", help="create the site CA in provisioning.ca_dir")
    ci.add_argument("--name", required=True, help="site or deployment name (in the CA's subject)")

    cs = _command(csub, _ca_server, "server", help="issue the broker's server certificate")
    cs.add_argument("names", nargs="+", help="host names / addresses hubs use for the broker")

    cst = _command(csub, _ca_status, "status",
                   help="certificate expiry: CA, server, hubs' client certificates")
    cst.add_argument("--within-days", type=float, default=30.0)

    r = sub.add_parser("resident", help="residents (personal data: team lead / admin)")
    rsub = r.add_subparsers(dest="resident_command", metavar="RESIDENT_COMMAND", required=True)

    ra = _command(rsub, _r_add, "add", help="add a resident at a site")
    ra.add_argument("resident_id")
    ra.add_argument("--site", required=True)
    ra.add_argument("--home")
    ra.add_argument("--name", help="display name")
    ra.add_argument("--flat", help="flat or address")
    ra.add_argument("--team", help="the staff team that looks after them (on-call routing)")
    ra.add_argument("--next-of-kin", help="who to escalate to (name and number)")

    rl = _command(rsub, _r_list, "list",
                  help="list residents (ids and teams; --personal for names, audited)")
    rl.add_argument("--site")
    rl.add_argument("--team")
    rl.add_argument("--personal", action="store_true", help="include name, flat, next of kin (audited)")
    rl.add_argument("--json", action="store_true")

    rm = _command(rsub, _r_move, "move", help="another site, flat or team")
    rm.add_argument("resident_id")
    rm.add_argument("--site", required=True, help="the site they are at now")
    rm.add_argument("--to-site")
    rm.add_argument("--flat")
    rm.add_argument("--team")

    rr = _command(rsub, _r_remove, "remove",
                  help="a resident leaves: personal data erased, wearables taken back")
    rr.add_argument("resident_id")
    rr.add_argument("--site", required=True)


#: who may run what when staff accounts exist (``gateway.staff_users_file``): devices are the
#: technicians' (and admins'); residents' personal data is read by carers and admins, written
#: by admins (the team lead's account)
TECH = frozenset({"technician", "admin"})
READ_PERSONAL = frozenset({"carer", "lead", "admin"})
ADMIN = frozenset({"admin"})
_NEEDS: dict[str, frozenset[str]] = {"_r_add": ADMIN, "_r_move": ADMIN, "_r_remove": ADMIN,
                                     "_r_list": TECH | READ_PERSONAL}
#: run by the service manager, not a person (the enrolment server only redeems one-time codes)
_SERVICES = frozenset({"_enrol_server"})


def _authorise(args: argparse.Namespace, command: str) -> str | None:
    """With staff accounts configured, the caller proves who they are with their personal
    token (``FALLWATCH_STAFF_TOKEN``): the account, not ``--by``, is the actor in the audit
    log, and its role must allow the command. Without accounts (a single-operator host) the
    actor is ``--by``. Returns why not, or None."""
    path = _cfg(args).gateway.staff_users_file
    if path is None or command in _SERVICES:
        return None
    from fallwatch.gateway.staff import StaffDirectory, StaffError

    try:
        user = StaffDirectory(Path(path)).authenticate(os.environ.get("FALLWATCH_STAFF_TOKEN"))
    except StaffError as exc:
        return f"staff accounts file: {exc}"
    if user is None:
        return "staff accounts are configured: set FALLWATCH_STAFF_TOKEN to your personal token"
    need = _NEEDS.get(command, TECH)
    if command == "_r_list" and getattr(args, "personal", False):
        need = READ_PERSONAL
    if user.role not in need:
        return f"{user.name} ({user.role}) may not do this (needs {' or '.join(sorted(need))})"
    if args.by and args.by != user.name:
        return f"--by {args.by}: you are {user.name}"
    args.by = user.name
    return None


def _guard(fn: Any) -> Any:
    """Authorise (:func:`_authorise`); RegistryError → ``error: …`` on stderr and exit status 1,
    never a traceback."""
    def run(args: argparse.Namespace) -> int:
        from fallwatch.gateway.pki import PkiError
        from fallwatch.gateway.registry import RegistryError

        if why := _authorise(args, fn.__name__):
            print(f"error: {why}", file=sys.stderr)
            return 2
        try:
            return int(fn(args) or 0)
        except (RegistryError, PkiError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return run


def _print_device(d: dict[str, Any]) -> None:
    where = d["site_id"] if d["kind"] == "gateway" else f"{d['site_id']}/{d['home_id']}"
    extra = f" hub={d['hub_id']}" if d.get("hub_id") else ""
    extra += f" room={d['room']} ({d['sensor_kind']})" if d.get("room") else ""
    print(f"{d['device_id']:<16} {d['kind']:<8} {d['status']:<8} {where}{extra}")


@_guard
def _add(args: argparse.Namespace) -> int:
    cfg, reg = _open(args)
    d = reg.add_device(args.device_id, args.kind, actor=_actor(args), site_id=args.site, home_id=args.home,
                       hub_id=args.hub, room=args.room, sensor_kind=args.sensor_kind)
    _print_device(d)
    if args.resident:
        reg.assign(args.device_id, args.resident, actor=_actor(args))
        print(f"  worn by {args.resident}")
    if args.kind == "gateway":
        if args.out is None:
            raise SystemExit("a gateway needs --out for its credentials file")
        _write_gateway_creds(args.out, reg.gateway_credentials(args.device_id, actor=_actor(args)))
        _sync(reg, cfg)
    elif args.kind == "hub":
        print(f"  next: fallwatch device enrol-bundle {args.device_id} --out {args.device_id}.bundle")
    return 0


def _write_gateway_creds(path: Path, creds: dict[str, str]) -> None:
    users = list(creds)
    _private_file(path, f"# gateway broker credentials (hand over, then delete)\n"
                        f"FALLWATCH_MQTT_PASSWORD={creds[users[0]]}\nFALLWATCH_MQTT_ALERT_PASSWORD={creds[users[1]]}\n"
                        f"# for `fallwatch device push-config` / `assign --push` (user {users[2]})\n"
                        f"FALLWATCH_MQTT_CONFIG_PASSWORD={creds[users[2]]}\n")
    print(f"  credentials of users {', '.join(users)} written to {path} (0600)")


@_guard
def _list(args: argparse.Namespace) -> int:
    _, reg = _open(args)
    rows = reg.devices(site_id=args.site, kind=args.kind)
    for d in rows:
        if args.json:
            print(json.dumps(d, default=str))
        else:
            _print_device(d)
    return 0


@_guard
def _show(args: argparse.Namespace) -> int:
    _, reg = _open(args)
    d = reg.show(args.device_id)
    _print_device(d)
    if d["kind"] in ("hub", "gateway"):
        print(f"  broker users: {', '.join(d['broker_users']) or '(none: cannot connect)'}")
    if d.get("cert_not_after_ms"):
        print(f"  client certificate expires {_ms(d['cert_not_after_ms'])} ({d['cert_expires_in_days']} days)")
    for p in d.get("parts", []):
        print(f"  part: {p['device_id']} {p['kind']}" + (f" room={p['room']} ({p['sensor_kind']})" if p["room"] else "")
              + ("" if p["status"] == "active" else f" [{p['status']}]"))
    for a in d.get("assignments", []):
        print(f"  worn by {a['resident_id']} from {_ms(a['from_ms'])} to {_ms(a['to_ms']) if a['to_ms'] else 'now'}")
    for b in d["enrolment_codes"]:
        print(f"  enrolment code made {_ms(b['created_ms'])}, expires {_ms(b['expires_ms'])}: {b['state']}")
    for e in d["log"]:
        print(f"  {_ms(e['at_ms'])} {e['actor']}: {e['action']} {e['detail'] or ''}".rstrip())
    return 0


@_guard
def _move(args: argparse.Namespace) -> int:
    cfg, reg = _open(args)
    before = reg.device(args.device_id)
    d = reg.move(args.device_id, actor=_actor(args), site_id=args.site, home_id=args.home, hub_id=args.hub,
                 room=args.room)
    _print_device(d)
    if before and before["kind"] == "hub" and before["site_id"] != d["site_id"]:
        _sync(reg, cfg)  # its ACL block carries the literal site
        print(f"  its topics are now under site {d['site_id']}: re-enrol it "
              f"(fallwatch device rotate {d['device_id']} --out …) so its config says so")
    return 0


@_guard
def _assign(args: argparse.Namespace) -> int:
    if bool(args.resident_id) == bool(args.none):
        raise SystemExit("give a resident id or --none")
    cfg, reg = _open(args)
    d = reg.assign(args.device_id, None if args.none else args.resident_id, actor=_actor(args))
    who = args.resident_id or "nobody"
    print(f"{args.device_id} now worn by {who} ({len(d['assignments'])} assignments in its history)")
    if args.push:
        return _push(reg, cfg, d["hub_id"], _actor(args))
    print(f"  tell the hub: fallwatch device push-config {d['hub_id']} (or assign with --push)")
    return 0


def _push(reg: Any, cfg: FallwatchConfig, hub_id: str, actor: str) -> int:
    from fallwatch.gateway.hubconfig import PushError, push_wearers
    from fallwatch.gateway.registry import config_user

    hub = reg._need(hub_id, "hub")
    wearers = {w["id"]: w.get("resident_id") for w in reg.hub_config(hub_id)["wearables"]}
    password = os.environ.get("FALLWATCH_MQTT_CONFIG_PASSWORD")
    if not cfg.mqtt.url or password is None:
        print("error: set mqtt.url and FALLWATCH_MQTT_CONFIG_PASSWORD (user "
              f"{config_user(cfg.gateway.gateway_id)}, from the gateway's credentials file)", file=sys.stderr)
        return 1
    mq = cfg.mqtt.model_copy(update={"username": config_user(cfg.gateway.gateway_id), "password": password,
                                     "client_id": None})
    try:
        doc = push_wearers(mq, hub["site_id"], hub_id, wearers)
    except PushError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    reg.note(actor, "device.push-config", hub_id, {"wearers": wearers, "version": doc["version"]})
    print(f"  pushed to {hub_id}: wearers {json.dumps(wearers, sort_keys=True)} (config version {doc['version']})")
    return 0


@_guard
def _push_config(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    return _push(_registry(cfg), cfg, args.device_id, _actor(args))


@_guard
def _revoke(args: argparse.Namespace) -> int:
    cfg, reg = _open(args)
    d = reg.revoke(args.device_id, actor=_actor(args), reason=args.reason)
    _print_device(d)
    _sync(reg, cfg)
    return 0


@_guard
def _retire(args: argparse.Namespace) -> int:
    cfg, reg = _open(args)
    d = reg.retire(args.device_id, actor=_actor(args))
    _print_device(d)
    _sync(reg, cfg)
    return 0


def _make_bundle(reg: Any, cfg: FallwatchConfig, args: argparse.Namespace, device_id: str,
                 ttl_s: float | None = None) -> str:
    from fallwatch.gateway import pki
    from fallwatch.protocol.enrolment import make_token

    p = cfg.provisioning
    ca = pki.ca_pem(p.ca_dir) if (p.ca_dir / "ca.crt").exists() else None
    client = None
    if getattr(args, "client_cert", False):
        crt, key, _ = pki.client_cert(p.ca_dir, device_id)
        client = (crt, key)
    bundle, code = reg.create_bundle(device_id, actor=_actor(args), broker_url=p.hub_broker_url,
                                     enrol_url=p.enrol_url, ttl_s=ttl_s or p.bundle_ttl_s, ca_pem=ca,
                                     model_pubkeys=tuple(p.model_pubkeys), client_cert=client)
    _private_file(args.out, json.dumps(bundle, indent=1) + "\n")
    if client is not None:
        _sync(reg, cfg)  # the CRL keeps the new certificate dead until the code is redeemed
    token = make_token(code, p.enrol_url)
    if p.enrol_url.startswith("https:") and (p.ca_dir / "server.crt").exists():
        # a hub with only the token has no CA yet: it checks the server by this pin
        token += "#" + pki.fingerprint((p.ca_dir / "server.crt").read_bytes())
    print(f"bundle for {device_id} (site {bundle['site_id']}) written to {args.out} (0600), "
          f"expires {_ms(bundle['expires_ms'])}")
    if ca is None:
        print("  warning: no site CA in provisioning.ca_dir: the hub cannot verify the broker "
              "(fallwatch device ca init)", file=sys.stderr)
    print("  one-time token (print as QR, or type on the hub):")
    print(f"  {token}")
    return token


@_guard
def _bundle(args: argparse.Namespace) -> int:
    cfg, reg = _open(args)
    _make_bundle(reg, cfg, args, args.device_id, args.ttl_h * 3600 if args.ttl_h else None)
    return 0


@_guard
def _rotate(args: argparse.Namespace) -> int:
    cfg, reg = _open(args)
    d = reg._need(args.device_id, "hub", "gateway")
    if d["kind"] == "gateway":
        _write_gateway_creds(args.out, reg.gateway_credentials(args.device_id, actor=_actor(args)))
        _sync(reg, cfg)
        print("  restart the gateway with the new passwords (the old ones stopped working)")
        return 0
    if args.now:
        reg.revoke(args.device_id, actor=_actor(args), reason="rotate --now")
        _sync(reg, cfg)
        print(f"  the old credential of {args.device_id} no longer works")
    _make_bundle(reg, cfg, args, args.device_id)
    if not args.now and d["status"] == "active":
        print("  the current credential keeps working until this bundle is redeemed on the hub")
    return 0


@_guard
def _sync_cmd(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    if broker_files(cfg) is None:
        raise SystemExit("set provisioning.broker_dir (and broker_pid_file) in the config")
    _sync(_registry(cfg), cfg)
    return 0


@_guard
def _log(args: argparse.Namespace) -> int:
    _, reg = _open(args)
    for e in reg.log(args.subject):
        print(f"{_ms(e['at_ms'])} {e['actor']}: {e['action']} {e['subject']} {e['detail'] or ''}".rstrip())
    return 0


@_guard
def _enrol_server(args: argparse.Namespace) -> int:
    import signal
    import threading

    from fallwatch.gateway.enrol_server import EnrolServer

    cfg, reg = _open(args)
    ca_dir = cfg.provisioning.ca_dir
    srv = EnrolServer(reg, broker_files(cfg), args.host, args.port,
                      tls_cert=ca_dir / "server.crt" if args.tls else None,
                      tls_key=ca_dir / "server.key" if args.tls else None).start()
    print(f"enrolment server on {srv.url}/enrol", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    srv.stop()
    return 0


@_guard
def _ca_init(args: argparse.Namespace) -> int:
    from fallwatch.gateway import pki

    cfg = _cfg(args)
    print(f"site CA: {pki.init_ca(cfg.provisioning.ca_dir, args.name)} (key ca.key, 0600: keep it on this host)")
    return 0


@_guard
def _ca_server(args: argparse.Namespace) -> int:
    from fallwatch.gateway import pki

    cfg = _cfg(args)
    crt = pki.server_cert(cfg.provisioning.ca_dir, args.names)
    print(f"server certificate: {crt} for {', '.join(args.names)}, expires {pki.expiry(crt.read_bytes()).date()}")
    return 0


@_guard
def _ca_status(args: argparse.Namespace) -> int:
    from fallwatch.gateway import pki

    cfg, reg = _open(args)
    for r in pki.report(cfg.provisioning.ca_dir):
        print(f"{r['cert']:<8} expires {r['not_after']} ({r['days_left']} days) {r['path']}")
    soon = reg.expiring_certs(args.within_days)
    for d in soon:
        print(f"hub {d['device_id']} (site {d['site_id']}): client certificate expires {_ms(d['cert_not_after_ms'])}")
    return 1 if soon else 0


# ---------------------------------------------------------------- residents


@_guard
def _r_add(args: argparse.Namespace) -> int:
    _, reg = _open(args)
    r = reg.add_resident(args.site, args.resident_id, actor=_actor(args), name=args.name, flat=args.flat,
                         team=args.team, next_of_kin=args.next_of_kin, home_id=args.home)
    print(f"resident {r['resident_id']} at site {r['site_id']} (team {r['team'] or '-'})")
    return 0


@_guard
def _r_list(args: argparse.Namespace) -> int:
    from fallwatch.gateway.registry import PERSONAL

    _, reg = _open(args)
    if args.personal:
        rows = reg.read_personal(_actor(args), team=args.team, site_id=args.site)
    else:
        rows = [{k: v for k, v in r.items() if k not in PERSONAL} for r in reg.residents(args.team, args.site)]
    for r in rows:
        if args.json:
            print(json.dumps(r, default=str))
        else:
            line = f"{r['site_id']}/{r['resident_id']:<10} team={r['team'] or '-'}"
            if args.personal:
                line += f"  {r['name'] or '-'} | {r['flat'] or '-'} | next of kin: {r['next_of_kin'] or '-'}"
            print(line)
    return 0


@_guard
def _r_move(args: argparse.Namespace) -> int:
    _, reg = _open(args)
    r = reg.move_resident(args.site, args.resident_id, actor=_actor(args), to_site=args.to_site, flat=args.flat,
                          team=args.team)
    print(f"resident {r['resident_id']} at site {r['site_id']} (team {r['team'] or '-'})")
    return 0


@_guard
def _r_remove(args: argparse.Namespace) -> int:
    _, reg = _open(args)
    reg.remove_resident(args.site, args.resident_id, actor=_actor(args))
    print(f"resident {args.resident_id} removed from site {args.site}: personal data erased, wearables taken back")
    return 0


# ---------------------------------------------------------------- bulk

CSV_COLUMNS = ("action", "device_id", "kind", "site", "home", "hub", "room", "sensor_kind", "resident")


@_guard
def _import(args: argparse.Namespace) -> int:
    from fallwatch.gateway.registry import bulk_apply

    cfg, reg = _open(args)
    try:
        with args.csv.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        print(f"error: cannot read {args.csv}: {exc}", file=sys.stderr)
        return 2
    report = bulk_apply(reg, rows, actor=_actor(args), dry_run=args.dry_run)
    for line in report["lines"]:
        print(line)
    print(f"{'dry run: ' if args.dry_run else ''}{report['ok']} rows ok, {report['errors']} rows with errors"
          + (" (nothing changed)" if args.dry_run or report["errors"] else ""))
    if report["changed"] and not args.dry_run:
        _sync(reg, cfg)
    return 1 if report["errors"] else 0
