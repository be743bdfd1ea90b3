"""Issue 15: model-signing key rotation — a hub accepts a new key announced under the old one,
keeps it across restarts, and (with ``--retire-old``) stops trusting the old key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fallwatch.cli import main
from fallwatch.edge import ota
from fallwatch.edge.keyring import announce
from fallwatch.testing.models import hub_model_store, model_bytes

pytestmark = pytest.mark.integration




def test_hub_accepts_a_new_key_announced_under_the_old_one_and_retires_the_old(tmp_path: Path) -> None:
    old, new, rogue = (Ed25519PrivateKey.generate() for _ in range(3))
    old_pub, new_pub = ota.public_key_b64(old), ota.public_key_b64(new)
    models = tmp_path / "models"
    store = hub_model_store(models, model_pubkey=old_pub)  # the hub knows only the old key (its bundle)
    with pytest.raises(ota.UpdateError, match="signature"):
        store.install(ota.sign_update(new, model_bytes("9.0.0"), "9.0.0"))  # new key, no announcement
    # a rogue key announcing itself, or announced by itself: refused, nothing learned
    for signer in (rogue, new):
        bad = announce(signer, ota.public_key_b64(rogue), 1)
        with pytest.raises(ota.UpdateError, match="not signed by a trusted key"):
            store.install(ota.sign_update(rogue, model_bytes("9.0.0"), "9.0.0", announcement=bad))
    assert not (models / "trusted_keys.json").exists()

    ann = announce(old, new_pub, 1, retire_signer=True)
    store.install(ota.sign_update(new, model_bytes("9.0.0"), "9.0.0", announcement=ann))
    assert store.running.version == "9.0.0"

    # after a restart, with the config unchanged (it still lists only the old key)
    store = hub_model_store(models, model_pubkey=old_pub)
    store.install(ota.sign_update(new, model_bytes("9.1.0"), "9.1.0"))  # the new key alone now
    with pytest.raises(ota.UpdateError, match="signature"):
        store.install(ota.sign_update(old, model_bytes("9.2.0"), "9.2.0"))  # a leaked old key is dead
    # replaying the announcement with the retired key as signer cannot bring it back
    with pytest.raises(ota.UpdateError, match="not signed by a trusted key"):
        store.install(ota.sign_update(new, model_bytes("9.2.0"), "9.2.0",
                                      announcement=announce(old, old_pub, 2)))
    # the same (already seen) announcement riding on a later update is harmless
    store.install(ota.sign_update(new, model_bytes("9.3.0"), "9.3.0", announcement=ann))
    assert json.loads((models / "trusted_keys.json").read_text()) == {"added": [new_pub], "retired": [old_pub],
                                                                        "seq": 1}


def test_a_damaged_keyring_disables_updates_instead_of_guessing(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    models = tmp_path / "models"
    models.mkdir()
    (models / "trusted_keys.json").write_text("{not json")
    store = hub_model_store(models, model_pubkey=ota.public_key_b64(key))
    with pytest.raises(ota.UpdateError, match="disabled"):
        store.install(ota.sign_update(key, model_bytes("9.0.0"), "9.0.0"))


def test_rotation_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fallwatch.models.detector import DEFAULT_MODEL_PATH  # noqa: F401 - the shipped model must exist

    assert main(["edge", "keygen", "--out", str(tmp_path / "old.pem")]) == 0
    old_pub = capsys.readouterr().out.split('"')[1]
    assert main(["edge", "keygen", "--out", str(tmp_path / "new.pem")]) == 0
    new_pub = capsys.readouterr().out.split('"')[1]
    assert main(["edge", "announce-key", "--key", str(tmp_path / "old.pem"), "--new-pubkey", new_pub,
                 "--seq", "1", "--retire-old", "--out", str(tmp_path / "ann.json")]) == 0
    (tmp_path / "m.onnx").write_bytes(model_bytes("9.5.0"))
    assert main(["edge", "sign-model", "--key", str(tmp_path / "new.pem"), "--model", str(tmp_path / "m.onnx"),
                 "--version", "9.5.0", "--announce", str(tmp_path / "ann.json"),
                 "--out", str(tmp_path / "update.json")]) == 0
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[edge]\nmodel_pubkey = "{old_pub}"\nmodel_dir = "{tmp_path / "models"}"\n')
    capsys.readouterr()
    assert main(["edge", "install-model", "--config", str(cfg), str(tmp_path / "update.json")]) == 0
    stored = json.loads((tmp_path / "models" / "trusted_keys.json").read_text())
    assert stored["added"] == [new_pub] and stored["retired"] == [old_pub]
