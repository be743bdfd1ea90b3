"""``fallwatch edge ...``: run a hub's agent, keys, signed model updates, the outbox.

``fallwatch edge record`` (a simulated hub's frames for replay) needs the simulator, which
the edge must not import: the composition layer adds it through :func:`add_command`.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from fallwatch.config import FallwatchConfig

log = logging.getLogger(__name__)

SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: ``fallwatch edge`` sub-commands contributed by a higher layer (see :func:`add_command`).
_EXTRA_COMMANDS: list[Callable[[SubParsers], None]] = []


def add_command(add: Callable[[SubParsers], None]) -> None:
    """Let a higher layer add a ``fallwatch edge`` sub-command: ``add(edge_subparsers)``
    is called when the parser is built (adding the same function twice is a no-op)."""
    if add not in _EXTRA_COMMANDS:
        _EXTRA_COMMANDS.append(add)


def register(sub: SubParsers) -> None:
    from fallwatch.edge.sources import SOURCES

    p = sub.add_parser("edge", help="the edge agent that runs on a hub (docs/edge.md)")
    esub = p.add_subparsers(dest="edge_command", metavar="EDGE_COMMAND", required=True)

    r = esub.add_parser("run", help="run the agent for one hub until stopped (SIGTERM/Ctrl-C)")
    r.add_argument("--config", type=Path, help="TOML config (edge/edge.example.toml documents it)")
    r.add_argument("--source", choices=SOURCES.names(), help="override edge.source.type")
    r.add_argument("--path", type=Path, help="override edge.source.path (scenario TOML or replay frame log)")
    r.add_argument("--speed", type=float, help="override edge.source.speed (0 = as fast as possible)")
    r.add_argument("--duration", type=float, help="stop after this many source seconds")
    r.add_argument("--validate-config", action="store_true", help="check the config, print it, and exit")
    r.set_defaults(func=_cmd_run)

    for add in _EXTRA_COMMANDS:
        add(esub)

    from fallwatch.edge import enrol

    enrol.register(esub)

    k = esub.add_parser("keygen", help="make an ed25519 model-signing key; prints the public key for the config")
    k.add_argument("--out", type=Path, required=True, help="private key file (PEM, mode 600)")
    k.set_defaults(func=_cmd_keygen)

    s = esub.add_parser("sign-model", help="sign an ONNX model as an update document")
    s.add_argument("--key", type=Path, required=True, help="private key (PEM) from 'edge keygen'")
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--version", required=True, help="must equal the model's metadata version")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--url", help="put a download URL in the manifest instead of the model bytes")
    s.add_argument("--announce", type=Path, help="a key announcement (from 'edge announce-key') to carry")
    s.set_defaults(func=_cmd_sign)

    an = esub.add_parser("announce-key", help="sign the next model-signing key with the current one (rotation)")
    an.add_argument("--key", type=Path, required=True, help="the CURRENT private key (PEM), trusted by the hubs")
    an.add_argument("--new-pubkey", required=True, help="the new key's model_pubkey (from 'edge keygen')")
    an.add_argument("--seq", type=int, required=True, help="announcement number, higher than any before")
    an.add_argument("--retire-old", action="store_true", help="hubs stop trusting the current key once they see it")
    an.add_argument("--out", type=Path, required=True)
    an.set_defaults(func=_cmd_announce)

    i = esub.add_parser("install-model", help="verify and install a signed update offline (same checks as OTA)")
    i.add_argument("--config", type=Path)
    i.add_argument("update", type=Path)
    i.set_defaults(func=_cmd_install)

    o = esub.add_parser("outbox", help="what is waiting in the hub's outbox")
    o.add_argument("--config", type=Path)
    o.set_defaults(func=_cmd_outbox)


def _load(path: Path | None, args: argparse.Namespace | None = None) -> FallwatchConfig:
    from fallwatch.config import PluginSection, load_config
    from fallwatch.edge.sources import SOURCES

    cfg = load_config(path)
    if args is not None and any(getattr(args, k, None) is not None for k in ("source", "path", "speed")):
        raw = cfg.edge.source.model_dump()
        if args.source is not None and args.source != raw["type"]:
            # another source type: keep only the keys it has (the file's bus_url means nothing to replay)
            keys = SOURCES.get(args.source).config.model_fields
            raw = {k: v for k, v in raw.items() if k in keys} | {"type": args.source}
        raw |= {k: v for k, v in (("path", args.path), ("speed", args.speed)) if v is not None}
        src = PluginSection.model_validate(raw)
        cfg = cfg.model_copy(update={"edge": cfg.edge.model_copy(update={"source": src})})
    return cfg


def _cmd_run(args: argparse.Namespace) -> int:
    from fallwatch.config import ConfigError
    from fallwatch.edge.agent import EdgeAgent
    from fallwatch.edge.sources import configured_sensors, make_source, source_config

    try:
        cfg = _load(args.config, args)
        src_cfg = source_config(cfg.edge)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.validate_config:
        print(json.dumps(cfg.edge.model_dump(mode="json") | {"source": src_cfg.model_dump(mode="json")}, indent=1))
        print("config OK", file=sys.stderr)
        return 0
    try:
        source = make_source(cfg.edge, duration_s=args.duration)
    except (ValueError, NotImplementedError, OSError) as exc:
        print(f"cannot open source: {exc}", file=sys.stderr)
        return 2
    sensors = [*source.sensors, *configured_sensors(cfg.edge)]
    site = source.site_id or cfg.edge.site_id
    hub = source.hub_id or cfg.edge.device_id
    if (site, hub) != (cfg.edge.site_id, cfg.edge.device_id):
        cfg = cfg.model_copy(update={"edge": cfg.edge.model_copy(update={"site_id": site, "device_id": hub})})
    agent = EdgeAgent(cfg, sensors=sensors, start_epoch_ms=source.start_epoch_ms)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    agent.start()
    log.warning("edge agent %s/%s running (source %s, model %s)", site, hub, cfg.edge.source.type,
                agent.model_version)
    last = time.monotonic()
    try:
        for frames, now_s in source.batches():
            agent.feed(frames, now_s)
            if args.duration is not None and now_s >= args.duration:
                break
            if stop.is_set():
                break
            if time.monotonic() - last > 60:
                last = time.monotonic()
                log.info("stats %s", agent.stats())
    finally:
        source.close()
        agent.stop()
    st = agent.stats()
    print(json.dumps({k: st[k] for k in ("frames", "frame_errors", "alerts_raised", "alerts_cancelled",
                                         "published", "outbox_depth") if k in st}))
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fallwatch.edge.ota import public_key_b64

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    args.out.touch(mode=0o600, exist_ok=False)
    args.out.write_bytes(pem)
    print(f'model_pubkey = "{public_key_b64(key)}"   # put this in [edge] of every hub config')
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fallwatch.edge.ota import sign_update

    key = serialization.load_pem_private_key(args.key.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        print(f"{args.key} is not an ed25519 key (make one with 'fallwatch edge keygen')", file=sys.stderr)
        return 2
    announcement = None
    if args.announce:
        import msgspec

        from fallwatch.protocol import contract as C

        raw = json.loads(args.announce.read_text())
        announcement = (msgspec.convert(raw["key_announcement"], C.KeyAnnouncement), raw["announcement_signature"])
    doc = sign_update(key, args.model.read_bytes(), args.version, inline=args.url is None, url=args.url,
                      announcement=announcement)
    args.out.write_bytes(doc)
    print(f"wrote {args.out} ({len(doc)} bytes); publish it retained on fallwatch/v1/<site>/<hub>/ota/model")
    return 0


def _cmd_announce(args: argparse.Namespace) -> int:
    import msgspec
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fallwatch.edge.keyring import announce

    key = serialization.load_pem_private_key(args.key.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        print(f"{args.key} is not an ed25519 key", file=sys.stderr)
        return 2
    try:
        ann, sig = announce(key, args.new_pubkey, args.seq, retire_signer=args.retire_old)
    except ValueError as exc:
        print(f"error: --new-pubkey: {exc}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps({"key_announcement": msgspec.to_builtins(ann), "announcement_signature": sig}))
    print(f"wrote {args.out}: sign the next model with the NEW key and --announce {args.out}")
    return 0


def _cmd_install(args: argparse.Namespace) -> int:
    from fallwatch.edge import ota
    from fallwatch.models.scorers import load_scorer

    cfg = _load(args.config)
    running = ota.load_installed(cfg.edge) or load_scorer(cfg.edge.model_path)
    try:
        model, manifest = ota.ModelStore(cfg.edge, running).install(args.update.read_bytes())
    except ota.UpdateError as exc:
        print(f"refused ({exc.status}): {exc}", file=sys.stderr)
        return 1
    print(f"installed fall model {manifest.version} at {model.path}")
    return 0


def _cmd_outbox(args: argparse.Namespace) -> int:
    from fallwatch.edge.outbox import Outbox

    cfg = _load(args.config)
    ob = Outbox(cfg.edge.outbox_path, bump_boot=False)
    print(json.dumps({"path": str(cfg.edge.outbox_path), "depth": ob.depth(), "by_kind": ob.depth_by_kind(),
                      "next_seq": ob.next_seq}))
    ob.close()
    return 0

