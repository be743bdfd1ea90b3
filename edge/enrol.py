"""``fallwatch edge enrol BUNDLE|TOKEN``: install a hub from its enrolment bundle (docs/provisioning.md).

The technician brings either the bundle file (``fallwatch device enrol-bundle`` wrote it) or
the short token printed next to it (``fwenrol1:CODE@URL``, small enough for a QR code). Both
hold a one-time code; redeeming it at the enrolment server is what makes the bundle's
credential live, so a copied, used or expired bundle is refused there and its password never
works. Then everything is written owner-only (directory 0700, files 0600: the password and
keys are in them) and the hub connects once with the new credential to prove it works, so the
technician leaves a home knowing the hub is on line, not hoping.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from fallwatch.config import MqttConfig, load_config
from fallwatch.protocol.enrolment import TOKEN_PREFIX, BundleError, parse_token, unseal


class EnrolError(RuntimeError):
    pass


__all__ = ["EnrolError", "enrol", "install", "register"]


def load_bundle(path: Path) -> dict[str, Any]:
    try:
        bundle: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise EnrolError(f"cannot read the bundle {path}: {exc}") from exc
    if bundle.get("fallwatch_bundle") != 1:
        raise EnrolError(f"{path} is not a fallwatch enrolment bundle")
    return bundle


def redeem(enrol_url: str, code: str, ca_pem: str | None = None, pin: str | None = None,
           timeout: float = 15.0) -> dict[str, Any]:
    """Use the one-time code; returns the server's answer (with the sealed bundle).

    Over HTTPS the server is verified with the site CA from the bundle (``ca_pem``) or, for a
    token-only enrolment that has no CA yet, by the SHA-256 ``pin`` of its certificate carried
    in the token: whoever can see the LAN must not be able to pose as the server and take the
    code (the code decrypts the bundle)."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(enrol_url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise EnrolError(f"bad enrolment URL {enrol_url!r}")
    body = json.dumps({"code": code}).encode()
    conn: http.client.HTTPConnection
    if u.scheme == "https":
        if ca_pem:
            ctx = ssl.create_default_context(cadata=ca_pem)
        elif pin:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # verified below, against the pin, before anything is sent
        else:
            ctx = ssl.create_default_context()
        conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        conn.connect()
        if u.scheme == "https" and pin and not ca_pem:
            import hashlib

            der = conn.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
            if der is None or hashlib.sha256(der).hexdigest() != pin.lower():
                raise EnrolError(f"enrolment server {enrol_url} is not the one in the token (certificate pin)")
        conn.request("POST", (u.path.rstrip("/") or "") + "/enrol", body=body,
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read(1 << 20)
    except (OSError, http.client.HTTPException) as exc:
        raise EnrolError(f"enrolment server {enrol_url} unreachable: {exc}") from exc
    finally:
        conn.close()
    try:
        answer: dict[str, Any] = json.loads(raw)
    except ValueError:
        answer = {"error": raw[:200].decode(errors="replace")}
    if r.status != 200:
        raise EnrolError(f"enrolment refused ({r.status}): {answer.get('error', '?')}")
    return answer


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string (same escapes)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(doc: dict[str, dict[str, Any]]) -> str:
    """The small TOML subset a hub config needs: tables, sub-tables, arrays of tables, scalars."""
    lines: list[str] = []

    def table(name: str, body: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        subs = []
        for k, v in body.items():
            if v is None:
                continue
            if isinstance(v, dict) or (isinstance(v, list) and v and isinstance(v[0], dict)):
                subs.append((k, v))
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
        for k, v in subs:
            if isinstance(v, dict):
                table(f"{name}.{k}", v)
            else:
                for item in v:
                    lines.append(f"[[{name}.{k}]]")
                    lines.extend(f"{ik} = {_toml_value(iv)}" for ik, iv in item.items() if iv is not None)
                    lines.append("")

    for name, body in doc.items():
        table(name, body)
    return "\n".join(lines)


def _private(path: Path, text: str) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def install(bundle: dict[str, Any], dest: Path, append: str = "") -> Path:
    """Write the hub's config, CA and (if any) client certificate into ``dest`` (0700, files
    0600); returns the config path. ``append``: local TOML (e.g. ``[edge.source]`` for this
    hub's hardware) added to the generated file."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o700)
    mqtt: dict[str, Any] = {"url": bundle["broker_url"], "username": bundle["username"],
                            "password": bundle["password"]}
    tls: dict[str, Any] = {}
    if bundle.get("ca_pem"):
        _private(dest / "ca.crt", bundle["ca_pem"])
        tls["ca_file"] = str(dest / "ca.crt")
    if bundle.get("client_cert_pem"):
        _private(dest / "client.crt", bundle["client_cert_pem"])
        _private(dest / "client.key", bundle["client_key_pem"])
        tls["cert_file"], tls["key_file"] = str(dest / "client.crt"), str(dest / "client.key")
    if tls:
        mqtt["tls"] = tls
    edge = dict(bundle["edge"])
    keys = list(bundle.get("model_pubkeys") or [])
    edge.update({
        "outbox_path": str(dest / "outbox.sqlite"),
        "model_dir": str(dest / "models"),
        **({"model_pubkey": keys[0], "model_pubkeys": keys[1:]} if keys else {}),
    })
    text = (f"# written by `fallwatch edge enrol` from the bundle of {bundle['device_id']} "
            "(owner-only: it holds the hub's password)\n")
    text += to_toml({"mqtt": mqtt, "edge": edge}) + ("\n" + append if append else "")
    cfg_path = dest / "edge.toml"
    _private(cfg_path, text)
    load_config(cfg_path)  # refuse to leave a config behind that the agent would refuse
    (dest / "enrolled.json").unlink(missing_ok=True)
    _private(dest / "enrolled.json", json.dumps({"device_id": bundle["device_id"], "site_id": bundle["site_id"],
                                                 "at": time.time()}))
    return cfg_path


def check_connect(cfg: MqttConfig, timeout: float = 15.0) -> None:
    """Connect once with the installed credentials; retries until ``timeout`` (the broker
    reloads its password file a moment after the code is redeemed)."""
    from fallwatch.mqtt import make_client

    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        done = threading.Event()
        result: dict[str, Any] = {}

        def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None, result: dict[str, Any] = result,
                       done: threading.Event = done) -> None:
            result["rc"] = rc
            done.set()

        client = make_client(cfg, "enrol-check", clean_start=True)
        client.on_connect = on_connect
        try:
            from urllib.parse import urlparse

            u = urlparse(cfg.url)
            client.connect(u.hostname or "localhost", u.port or (8883 if cfg.use_tls else 1883), 10)
            client.loop_start()
            if done.wait(5) and "rc" in result and not result["rc"].is_failure:
                client.disconnect()
                client.loop_stop()
                return
            last = str(result.get("rc", "no CONNACK"))
        except (OSError, ssl.SSLError) as exc:
            last = str(exc)
        finally:
            client.loop_stop()
        if time.monotonic() > deadline:
            raise EnrolError(f"the hub cannot connect to {cfg.url} with its new credentials: {last}")
        time.sleep(0.5)


def enrol(source: str, dest: Path, *, append: str = "", check: bool = True, timeout: float = 15.0) -> dict[str, Any]:
    """The whole of `fallwatch edge enrol`: redeem, install, check. Returns a summary."""
    if source.startswith(TOKEN_PREFIX):
        try:
            code, url = parse_token(source)
            url, _, pin = url.partition("#")
            answer = redeem(url, code, pin=pin or None)
            bundle = unseal(code, answer["sealed"])
        except BundleError as exc:
            raise EnrolError(str(exc)) from exc
    else:
        bundle = load_bundle(Path(source))
        if bundle["expires_ms"] <= time.time() * 1000:
            raise EnrolError(f"bundle of {bundle['device_id']} expired: ask for a new one "
                             f"(`fallwatch device enrol-bundle {bundle['device_id']}`)")
        redeem(bundle["enrol_url"], bundle["code"], bundle.get("ca_pem"))
    cfg_path = install(bundle, dest, append)
    if check:
        check_connect(load_config(cfg_path).mqtt, timeout)
    return {"device_id": bundle["device_id"], "site_id": bundle["site_id"], "config": str(cfg_path),
            "connected": check}


def register(esub: Any) -> None:
    import argparse

    p = esub.add_parser("enrol", help="install this hub from its enrolment bundle (or QR token) and check it connects")
    p.add_argument("bundle", help="bundle file from `fallwatch device enrol-bundle`, or its fwenrol1: token")
    p.add_argument("--dir", type=Path, default=Path("/etc/fallwatch"), help="where to install (made 0700)")
    p.add_argument("--append", type=Path, help="local TOML to add (e.g. this hub's [edge.source])")
    p.add_argument("--no-check", action="store_true", help="do not test the broker connection")
    p.add_argument("--timeout", type=float, default=15.0)

    def run(args: argparse.Namespace) -> int:
        try:
            out = enrol(args.bundle, args.dir, append=args.append.read_text() if args.append else "",
                        check=not args.no_check, timeout=args.timeout)
        except EnrolError as exc:
            print(f"error: {exc}", file=__import__("sys").stderr)
            return 1
        print(f"enrolled {out['device_id']} at site {out['site_id']}: config {out['config']}"
              + (", broker connection ok" if out["connected"] else ""))
        return 0

    p.set_defaults(func=run)

