"""Real receiving ends for staff notifications, for tests and benchmarks: an SMTP server
(aiosmtpd, in-process), an HTTP receiver that records every POST, and a Web Push service
endpoint that checks the VAPID signature and decrypts the payload with the subscription's
private key (RFC 8291, as a browser would)."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from email import message_from_bytes, policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mailbox:
    """An aiosmtpd handler that keeps every message it accepted, with its arrival time."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.arrived_ns: list[int] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.arrived_ns.append(time.time_ns())
        return "250 OK"

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def to(self, address: str) -> list[Message]:
        with self._lock:
            return [m for m, (_, rcpt) in zip(self.messages, self.envelopes, strict=True) if address in rcpt]


class SmtpServer:
    """A real SMTP server on a loopback port (``start``/``stop`` any number of times)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.mailbox = Mailbox()
        self.controller: Any = None

    def start(self) -> SmtpServer:
        from aiosmtpd.controller import Controller

        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


class Receiver:
    """A real HTTP server in a thread that records every POST (path, headers, body, arrival)."""

    def __init__(self, status: int = 200) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.arrived_ns: list[int] = []
        self.status = status
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code = outer.handle(self.path, dict(self.headers.items()), raw)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> int:
        with self._lock:
            self.requests.append((path, headers, raw))
            self.arrived_ns.append(time.time_ns())
        return self.status

    def at(self, path: str) -> list[tuple[str, dict[str, str], bytes]]:
        with self._lock:
            return [r for r in self.requests if r[0] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class PushService(Receiver):
    """A Web Push service endpoint and the browser behind it: :meth:`subscribe` makes a
    subscription (P-256 key pair + auth secret, held here), and every push is checked
    (VAPID JWT signed by the key it names, audience = this origin, not expired) and
    decrypted (aes128gcm). ``pushes`` holds ``(subscriber, decrypted JSON)``; a push that
    fails a check is answered 401/400 and kept in ``refused``."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[Any, bytes]] = {}
        self.pushes: list[tuple[str, dict[str, Any]]] = []
        self.refused: list[tuple[str, str]] = []
        super().__init__()

    def subscribe(self, name: str) -> dict[str, Any]:
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        priv = ec.generate_private_key(ec.SECP256R1())
        auth = os.urandom(16)
        self.keys[name] = (priv, auth)
        pub = priv.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return {"endpoint": f"{self.url}/push/{name}", "keys": {"p256dh": _b64(pub), "auth": _b64(auth)}}

    def _check_vapid(self, headers: dict[str, str]) -> str | None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        auth = headers.get("Authorization", "")
        if not auth.startswith("vapid "):
            return "no VAPID authorization"
        parts = dict(p.strip().split("=", 1) for p in auth[6:].split(","))
        try:
            head, body, sig = parts["t"].split(".")
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unb64(parts["k"]))
            raw = _unb64(sig)
            der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
            key.verify(der, f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
        except (KeyError, ValueError, InvalidSignature):
            return "VAPID signature does not verify"
        claims = json.loads(_unb64(body))
        if claims.get("aud") != self.url:
            return f"VAPID audience {claims.get('aud')!r} is not {self.url}"
        if int(claims.get("exp", 0)) < time.time():
            return "VAPID token expired"
        return None

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> int:
        import http_ece

        super().handle(path, headers, raw)
        name = path.rsplit("/", 1)[-1]
        if name not in self.keys:
            return 410
        why = self._check_vapid(headers)
        if why is not None:
            with self._lock:
                self.refused.append((name, why))
            return 401
        priv, auth = self.keys[name]
        try:
            plain = http_ece.decrypt(raw, private_key=priv, auth_secret=auth, version="aes128gcm")
        except Exception as exc:
            with self._lock:
                self.refused.append((name, f"cannot decrypt: {exc}"))
            return 400
        with self._lock:
            self.pushes.append((name, json.loads(plain)))
        return 201
