"""A small site CA for the broker's TLS listener (``cryptography``; docs/provisioning.md).

One CA per deployment, kept on the gateway host (``provisioning.ca_dir``, key 0600): it
signs the broker's server certificate and, optionally, one client certificate per hub whose
CN is the device id (Mosquitto's ``use_identity_as_username``). Hubs get only the CA
certificate in their bundle, so they trust this broker and no other, and an attacker with a
certificate from any public CA cannot pose as it. ECDSA P-256 keys: small, fast on a Pi, and
accepted by every OpenSSL Mosquitto links against.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 825
CLIENT_DAYS = 825


class PkiError(RuntimeError):
    pass


def _write_private(path: Path, data: bytes) -> None:
    """Create a private key file owner-only from its first byte (never chmod after the fact)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_ca(ca_dir: Path, name: str, *, days: int = CA_DAYS) -> Path:
    """Create ``ca.key`` (0600) and ``ca.crt`` in ``ca_dir``; refuses to overwrite a CA (every
    hub trusts it: replacing it by accident would cut the fleet off)."""
    ca_dir = Path(ca_dir)
    ca_dir.mkdir(parents=True, exist_ok=True)
    if (ca_dir / "ca.key").exists():
        raise PkiError(f"{ca_dir / 'ca.key'} exists: refusing to replace the site CA")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fallwatch site CA {name}")])
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(ca_dir / "ca.key", _key_pem(key))
    (ca_dir / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca_dir / "ca.crt"


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((Path(ca_dir) / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((Path(ca_dir) / "ca.key").read_bytes(), None)
    except FileNotFoundError as exc:
        raise PkiError(f"no site CA in {ca_dir}: run `fallwatch device ca init` first") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("the site CA key is not an EC key")
    return cert, key


def _issue(ca_dir: Path, cn: str, days: int, *, server_names: list[str] | None = None
           ) -> tuple[bytes, bytes, dt.datetime]:
    ca_cert, ca_key = _load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    b = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server_names is not None:
        sans: list[x509.GeneralName] = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), not_after


def server_cert(ca_dir: Path, names: list[str], out_dir: Path | None = None, *, days: int = SERVER_DAYS) -> Path:
    """``server.crt``/``server.key`` (0600) for the broker, valid for ``names`` (DNS or IP),
    next to ``ca.crt`` unless ``out_dir`` says otherwise (the generated mosquitto.conf's tls_dir)."""
    if not names:
        raise PkiError("a server certificate needs at least one host name or address")
    out = Path(out_dir or ca_dir)
    out.mkdir(parents=True, exist_ok=True)
    crt, key, _ = _issue(ca_dir, names[0], days, server_names=names)
    _write_private(out / "server.key", key)
    with contextlib.suppress(KeyError, PermissionError):  # Debian's broker reads it as group mosquitto
        os.chown(out / "server.key", -1, grp.getgrnam("mosquitto").gr_gid)
        (out / "server.key").chmod(0o640)
    (out / "server.crt").write_bytes(crt)
    if out != Path(ca_dir):
        (out / "ca.crt").write_bytes((Path(ca_dir) / "ca.crt").read_bytes())
    return out / "server.crt"


def client_cert(ca_dir: Path, device_id: str, *, days: int = CLIENT_DAYS) -> tuple[str, str, dt.datetime]:
    """A hub's client certificate (CN = device id), its key and its expiry, for its bundle."""
    crt, key, not_after = _issue(ca_dir, device_id, days)
    return crt.decode(), key.decode(), not_after


def ca_pem(ca_dir: Path) -> str:
    return (Path(ca_dir) / "ca.crt").read_text()


def expiry(pem: str | bytes) -> dt.datetime:
    data = pem.encode() if isinstance(pem, str) else pem
    return x509.load_pem_x509_certificate(data).not_valid_after_utc


def serial(pem: str | bytes) -> str:
    """A certificate's serial number (hex), as the registry and the CRL know it."""
    data = pem.encode() if isinstance(pem, str) else pem
    return format(x509.load_pem_x509_certificate(data).serial_number, "x")


def crl(ca_dir: Path, serials: list[str], *, days: int = 30) -> bytes:
    """A CRL (PEM) of the site CA revoking ``serials`` (hex). Regenerated at every broker sync,
    so its ``next_update`` never lapses on a gateway that is in use."""
    ca_cert, ca_key = _load_ca(ca_dir)
    now = _now()
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
         .last_update(now - dt.timedelta(minutes=5)).next_update(now + dt.timedelta(days=days)))
    for s in serials:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(int(s, 16))
                                      .revocation_date(now - dt.timedelta(minutes=5)).build())
    return b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def fingerprint(pem: str | bytes) -> str:
    """SHA-256 of a certificate's DER form (hex): what a token-only enrolment pins."""
    data = pem.encode() if isinstance(pem, str) else pem
    return x509.load_pem_x509_certificate(data).fingerprint(hashes.SHA256()).hex()


def report(ca_dir: Path, tls_dir: Path | None = None) -> list[dict[str, object]]:
    """Expiry of the CA and the server certificate, for `fallwatch device ca status` and health."""
    out: list[dict[str, object]] = []
    now = _now()
    for label, path in (("ca", Path(ca_dir) / "ca.crt"), ("server", Path(tls_dir or ca_dir) / "server.crt")):
        if path.exists():
            na = expiry(path.read_bytes())
            out.append({"cert": label, "path": str(path), "not_after": na.isoformat(),
                        "days_left": round((na - now).total_seconds() / 86400, 1)})
    return out
