"""The hub's trusted model-signing keys, and how a new one is learned (docs/provisioning.md).

The keys in the config (``edge.model_pubkey``, ``edge.model_pubkeys``, from the enrolment
bundle) are the starting point. A new key arrives as a :class:`~fallwatch.protocol.contract.KeyAnnouncement`
inside a model update, signed by a key the hub already trusts; once verified it is kept in
``model_dir/trusted_keys.json`` (written atomically), so later updates signed only by the new
key are accepted, across restarts, without editing the config of every hub. An announcement
with ``retire_signer`` also makes the hub distrust the key that signed it (a retired key is
never trusted again, even if the config still lists it), so a leaked old key stops working
the moment the fleet has seen its successor. ``seq`` must grow: an old announcement cannot
be replayed to bring back a retired key.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fallwatch.protocol import contract as C


class KeyringError(ValueError):
    """An announcement the hub refuses (reason in the message)."""


def _pub(b64: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64, validate=True))


def announce(signer: Ed25519PrivateKey, new_key_b64: str, seq: int, *, retire_signer: bool = False,
             valid_days: float = 365.0) -> tuple[C.KeyAnnouncement, str]:
    """An announcement of ``new_key_b64`` signed by ``signer`` (the current key), with its signature."""
    _pub(new_key_b64)  # a valid key, or ValueError now rather than on every hub
    ann = C.KeyAnnouncement(new_key=new_key_b64, seq=seq, retire_signer=retire_signer,
                            expires_ms=int((time.time() + valid_days * 86400) * 1000))
    return ann, base64.b64encode(signer.sign(C.announcement_bytes(ann))).decode()


class Keyring:
    def __init__(self, model_dir: Path, configured: list[str]) -> None:
        self.path = Path(model_dir) / "trusted_keys.json"
        self.configured = [k for k in configured if k]
        self._state = self._load()

    def _load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"added": [], "retired": [], "seq": 0}
        except ValueError as exc:  # a damaged file must not silently widen or narrow the trust
            raise KeyringError(f"{self.path} is damaged ({exc}): restore it or remove it to fall back "
                            "to the configured keys") from exc
        return data

    def trusted(self) -> list[str]:
        retired = set(self._state["retired"])
        return [k for k in dict.fromkeys([*self.configured, *self._state["added"]]) if k not in retired]

    def keys(self) -> list[Ed25519PublicKey]:
        return [_pub(k) for k in self.trusted()]

    def verify(self, sig: bytes, data: bytes) -> str | None:
        """The trusted key (base64) that verifies ``sig`` over ``data``, None if none does."""
        for k in self.trusted():
            try:
                _pub(k).verify(sig, data)
                return k
            except InvalidSignature:
                continue
        return None

    def accept(self, ann: C.KeyAnnouncement, signature_b64: str) -> bool:
        """Verify and keep an announcement; True if it changed the keyring (False: seen before)."""
        try:
            sig = base64.b64decode(signature_b64, validate=True)
            _pub(ann.new_key)
        except ValueError as exc:
            raise KeyringError(f"malformed key announcement: {exc}") from None
        if ann.seq <= self._state["seq"] and ann.new_key in self.trusted():
            # one already applied, riding on a later update (its signer may be retired by now):
            # it changes nothing, so it needs no trusted signer
            return False
        signer = self.verify(sig, C.announcement_bytes(ann))
        if signer is None:
            raise KeyringError("key announcement not signed by a trusted key")
        if ann.seq <= self._state["seq"]:
            raise KeyringError(f"key announcement seq {ann.seq} is not newer than {self._state['seq']}")
        if ann.expires_ms < time.time() * 1000:
            raise KeyringError("key announcement expired")
        if ann.new_key in self._state["retired"]:
            raise KeyringError("the announced key was retired on this hub")
        st = self._state
        st["added"] = [*st["added"], ann.new_key] if ann.new_key not in st["added"] else st["added"]
        if ann.retire_signer and signer != ann.new_key:
            st["retired"] = [*st["retired"], signer]
        st["seq"] = ann.seq
        self._save()
        return True

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(self._state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
