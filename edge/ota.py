"""Signed fall-model updates with self-test and rollback ("TUF-lite").

An update is one JSON document (retained on ``.../ota/model`` or given to
``fallwatch edge install-model``)::

    {"manifest": {"model": "fall", "version": "1.3.0", "sha256": "...", "size": 12345,
                  "expires_ms": 1795000000000, "url": "https://..."   (or inline below)},
     "signature": "<base64 ed25519 signature of the canonical manifest>",
     "model_b64": "<base64 ONNX bytes>"}

Canonical manifest = JSON with sorted keys and no spaces. The update is accepted only if
it is for the fall model (``manifest.model``, checked by the contract), the signature
verifies with one of the trusted keys (``edge.model_pubkey`` and ``edge.model_pubkeys``,
so the signing key can be rotated; no key: updates are disabled), the manifest has not
expired, the version is higher than the running one *and* than the highest version ever
installed on this hub (a version floor persisted in ``model_dir/version_floor``, so an
old, validly signed update cannot be replayed after a fall-back to ``previous.onnx`` or
the shipped model), the bytes — downloaded as a stream that stops at the manifest's size
and ``MAX_MODEL_BYTES``, never read whole into memory — match size and sha256, the model loads with metadata that
matches the feature code (:func:`fallwatch.models.detector.check_metadata`), and it passes the
golden self-test (:func:`fallwatch.edge.synth.golden_windows`). Only then is it moved into place
with ``os.replace`` (the previous file kept as ``previous.onnx``) and swapped in between
two ``feed()`` calls. On any failure the running model is untouched.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fallwatch.config import EdgeConfig
from fallwatch.protocol import contract as C

log = logging.getLogger(__name__)

MAX_MODEL_BYTES = C.MAX_MODEL_BYTES


class UpdateError(Exception):
    """A refused update. ``status`` is the OtaStatus status ("rejected" | "rolled_back")."""

    def __init__(self, status: str, message: str, version: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.version = version


def sign_update(
    private_key: Ed25519PrivateKey,
    model_bytes: bytes,
    version: str,
    *,
    expires_ms: int | None = None,
    inline: bool = True,
    url: str | None = None,
    announcement: tuple[C.KeyAnnouncement, str] | None = None,
) -> bytes:
    """Build a signed update document (``contract.ModelUpdate``; used by tooling and tests);
    ``announcement``: a key announcement and its signature (:func:`fallwatch.edge.keyring.announce`)
    introducing the key that signs this update."""
    manifest = C.ModelManifest(
        model="fall",
        version=version,
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        size=len(model_bytes),
        expires_ms=expires_ms or int(time.time() * 1000) + 30 * 86400 * 1000,
        url=url or None,
    )
    signature = base64.b64encode(private_key.sign(C.manifest_bytes(manifest))).decode()
    model_b64 = base64.b64encode(model_bytes).decode() if inline else None
    ann, ann_sig = announcement if announcement else (None, None)
    return C.encode_downlink(C.ModelUpdate(manifest=manifest, signature=signature, model_b64=model_b64,
                                           key_announcement=ann, announcement_signature=ann_sig))


def public_key_b64(private_key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def _version_tuple(v: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in v.split("-")[0].split("."))
    except ValueError:
        return None


def self_test(model: Any) -> str | None:
    """None if the model scores the golden vectors right, else why not."""
    from fallwatch.edge.synth import GOLDEN_ALARM, GOLDEN_NO_ALARM, GOLDEN_OUTRANKS, golden_windows

    windows, labels = golden_windows()
    try:
        p = np.asarray(model.predict(windows), dtype=np.float64)
    except Exception as exc:
        return f"inference failed: {exc}"
    if p.shape != labels.shape or not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        return f"bad output {p!r}"
    calm = max(float(pi) for pi, y in zip(p, labels, strict=True) if y == GOLDEN_NO_ALARM)
    wrong = [i for i, (pi, y) in enumerate(zip(p, labels, strict=True))
             if (y == GOLDEN_NO_ALARM and pi >= model.threshold) or (y == GOLDEN_ALARM and pi < model.threshold)
             or (y == GOLDEN_OUTRANKS and pi <= calm)]
    if wrong:
        return f"golden vectors {wrong} misclassified (p={np.round(p, 3).tolist()}, thr={model.threshold})"
    return None


class ModelStore:
    """Installed model files (``current.onnx``, ``previous.onnx``) and the update procedure."""

    def __init__(self, cfg: EdgeConfig, running: Any) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.model_dir)
        self.running = running
        from fallwatch.edge.keyring import Keyring, KeyringError

        try:
            # the configured keys plus those announced since under a trusted key (edge/keyring.py)
            self.keyring: Keyring | None = Keyring(self.dir, [k for k in (cfg.model_pubkey, *cfg.model_pubkeys) if k])
        except KeyringError as exc:
            log.error("model updates disabled: %s", exc)  # neither widen nor narrow trust on a guess
            self.keyring = None

    @property
    def floor_path(self) -> Path:
        return self.dir / "version_floor"

    def version_floor(self) -> tuple[int, ...] | None:
        """The highest version ever installed here (survives restarts and fall-backs)."""
        try:
            return _version_tuple(self.floor_path.read_text().strip())
        except FileNotFoundError:
            return None

    def _raise_floor(self, version: str) -> None:
        new = _version_tuple(version)
        floor = self.version_floor()
        if new is None or (floor is not None and new <= floor):
            return
        tmp = self.floor_path.with_suffix(".tmp")
        with tmp.open("w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.floor_path)

    def _verify(self, sig: bytes, manifest: C.ModelManifest) -> bool:
        return self.keyring is not None and self.keyring.verify(sig, C.manifest_bytes(manifest)) is not None

    @property
    def current_path(self) -> Path:
        return self.dir / "current.onnx"

    def install(self, blob: bytes) -> tuple[Any, C.ModelManifest]:
        """Verify, load, self-test and put in place a model update; returns (model, manifest)."""
        try:
            doc = C.decode_model_update(blob)
            sig = base64.b64decode(doc.signature, validate=True)
        except (C.ContractError, ValueError) as exc:
            raise UpdateError("rejected", f"malformed update: {exc}") from None
        manifest = doc.manifest
        version = manifest.version
        if self.keyring is None or not self.keyring.trusted():
            raise UpdateError(
                "rejected", "no edge.model_pubkey(s) configured: model updates are disabled", version
            )
        if doc.key_announcement is not None:
            from fallwatch.edge.keyring import KeyringError

            try:
                if self.keyring.accept(doc.key_announcement, doc.announcement_signature or ""):
                    log.warning("new model-signing key trusted (announcement seq %d%s)", doc.key_announcement.seq,
                                ", signer retired" if doc.key_announcement.retire_signer else "")
            except KeyringError as exc:
                raise UpdateError("rejected", f"key announcement refused: {exc}", version) from None
        if not self._verify(sig, manifest):
            raise UpdateError("rejected", "bad ed25519 signature (no trusted key verifies it)", version)
        if manifest.expires_ms < time.time() * 1000:
            raise UpdateError("rejected", "manifest expired", version)
        new_v, cur_v = _version_tuple(version), _version_tuple(str(getattr(self.running, "version", "")))
        if new_v is None:
            raise UpdateError("rejected", f"version {version!r} is not semver", version)
        if cur_v is not None and new_v <= cur_v:
            raise UpdateError(
                "rejected", f"version {version} is not newer than {self.running.version}", version
            )
        floor = self.version_floor()
        if floor is not None and new_v <= floor:
            raise UpdateError("rejected", f"version {version} is not newer than the highest ever installed "
                              f"({'.'.join(map(str, floor))})", version)
        data = self._fetch(doc, version)
        if len(data) != manifest.size or hashlib.sha256(data).hexdigest() != manifest.sha256:
            raise UpdateError("rejected", "size/sha256 mismatch", version)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"incoming-{os.getpid()}.onnx"
        tmp.write_bytes(data)
        try:
            from fallwatch.models.detector import FallModel

            try:
                model = FallModel(tmp)
            except Exception as exc:
                raise UpdateError("rolled_back", f"new model failed to load: {exc}", version) from None
            if model.version != version:
                raise UpdateError(
                    "rolled_back", f"model metadata version {model.version} != manifest {version}", version
                )
            why = self_test(model)
            if why:
                raise UpdateError("rolled_back", f"new model failed its self-test: {why}", version)
            if self.current_path.exists():
                os.replace(self.current_path, self.dir / "previous.onnx")
            os.replace(tmp, self.current_path)
            self._raise_floor(version)
            model.path = self.current_path
            self.running = model
            log.warning("installed fall model %s", version)
            return model, manifest
        finally:
            tmp.unlink(missing_ok=True)

    def _fetch(self, doc: C.ModelUpdate, version: str) -> bytes:
        if doc.model_b64 is not None:
            try:
                data = base64.b64decode(doc.model_b64, validate=True)
            except ValueError as exc:
                raise UpdateError("rejected", f"model_b64: {exc}", version) from None
        elif doc.manifest.url is not None:
            data = _download(doc.manifest.url, min(doc.manifest.size, MAX_MODEL_BYTES), version)
        else:
            raise UpdateError("rejected", "update has neither model_b64 nor url", version)
        if len(data) > MAX_MODEL_BYTES:
            raise UpdateError("rejected", f"model of {len(data)} bytes is larger than {MAX_MODEL_BYTES}", version)
        return data


def _download(url: str, limit: int, version: str) -> bytes:
    """GET ``url`` as a stream and stop as soon as it is longer than ``limit`` (the signed size):
    a hostile or broken server cannot make the hub read an unbounded body into memory."""
    import requests

    chunks: list[bytes] = []
    got = 0
    try:
        with requests.get(url, timeout=30, stream=True) as r:
            r.raise_for_status()
            declared = r.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise UpdateError("rejected", f"download of {declared} bytes is larger than {limit}", version)
            for chunk in r.iter_content(65536):
                got += len(chunk)
                if got > limit:
                    raise UpdateError("rejected", f"download is larger than {limit} bytes: stopped", version)
                chunks.append(chunk)
    except requests.RequestException as exc:
        raise UpdateError("rejected", f"download failed: {exc}", version) from None
    return b"".join(chunks)


def load_installed(cfg: EdgeConfig) -> Any | None:
    """The model installed by an earlier update, if any (it survives restarts); falls back to
    ``previous.onnx`` if the current one no longer loads."""
    from fallwatch.models.detector import FallModel

    d = Path(cfg.model_dir)
    for name in ("current.onnx", "previous.onnx"):
        p = d / name
        if p.exists():
            try:
                return FallModel(p)
            except Exception as exc:
                log.error("installed model %s does not load (%s): trying the next", p, exc)
    return None
