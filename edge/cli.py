"""``fallwatch edge ...``: run a hub's agent, record/replay frames, keys and signed model updates."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("edge", help="the edge agent that runs on a hub (docs/edge.md)")
    esub = p.add_subparsers(dest="edge_command", metavar="EDGE_COMMAND", required=True)

    r = esub.add_parser("run", help="run the agent for one hub until stopped (SIGTERM/Ctrl-C)")
    r.add_argument("--config", type=Path, help="TOML config (edge/edge.example.toml documents it)")
    r.add_argument("--source", choices=("sim", "replay", "zigbee2mqtt", "ble"), help="override edge.source.type")
    r.add_argument("--path", type=Path, help="override edge.source.path (scenario TOML or replay JSONL)")
    r.add_argument("--speed", type=float, help="override edge.source.speed (0 = as fast as possible)")
    r.add_argument("--duration", type=float, help="stop after this many source seconds")
    r.add_argument("--validate-config", action="store_true", help="check the config, print it, and exit")
    r.set_defaults(func=_cmd_run)

    rec = esub.add_parser("record", help="record a simulated hub's frames to a replay file (JSONL)")
    rec.add_argument("--scenario", type=Path, help="scenario TOML (default: a one-flat demo)")
    rec.add_argument("--hub", help="hub id (default: the scenario's first hub)")
    rec.add_argument("--duration", type=float, default=None, help="seconds of simulation (default: scenario)")
    rec.add_argument("--out", type=Path, required=True)
    rec.set_defaults(func=_cmd_record)

    k = esub.add_parser("keygen", help="make an ed25519 model-signing key; prints the public key for the config")
    k.add_argument("--out", type=Path, required=True, help="private key file (PEM, mode 600)")
    k.set_defaults(func=_cmd_keygen)

    s = esub.add_parser("sign-model", help="sign an ONNX model as an update document")
    s.add_argument("--key", type=Path, required=True, help="private key (PEM) from 'edge keygen'")
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--version", required=True, help="must equal the model's metadata version")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--url", help="put a download URL in the manifest instead of the model bytes")
    s.set_defaults(func=_cmd_sign)

    i = esub.add_parser("install-model", help="verify and install a signed update offline (same checks as OTA)")
    i.add_argument("--config", type=Path)
    i.add_argument("update", type=Path)
    i.set_defaults(func=_cmd_install)

    o = esub.add_parser("outbox", help="what is waiting in the hub's outbox")
    o.add_argument("--config", type=Path)
    o.set_defaults(func=_cmd_outbox)


def _load(path: Path | None, args: argparse.Namespace | None = None) -> Any:
    from fallwatch.config import load_config

    cfg = load_config(path)
    if args is not None and any(getattr(args, k, None) is not None for k in ("source", "path", "speed")):
        src = cfg.edge.source.model_copy(update={k2: v for k2, v in (
            ("type", args.source), ("path", args.path), ("speed", args.speed)) if v is not None})
        cfg = cfg.model_copy(update={"edge": cfg.edge.model_copy(update={"source": src})})
    return cfg


def _cmd_run(args: argparse.Namespace) -> int:
    from fallwatch.config import ConfigError
    from fallwatch.edge.agent import EdgeAgent
    from fallwatch.edge.sources import configured_sensors, make_source

    try:
        cfg = _load(args.config, args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.validate_config:
        print(json.dumps(cfg.edge.model_dump(mode="json"), indent=1))
        print("config OK", file=sys.stderr)
        return 0
    try:
        kwargs: dict[str, Any] = {"duration_s": args.duration} if cfg.edge.source.type == "sim" else {}
        source = make_source(cfg.edge, **kwargs)
    except (ValueError, NotImplementedError, OSError) as exc:
        print(f"cannot open source: {exc}", file=sys.stderr)
        return 2
    sensors = list(getattr(source, "sensors", [])) + configured_sensors(cfg.edge)
    site = getattr(source, "site_id", cfg.edge.site_id)
    hub = getattr(source, "hub_id", cfg.edge.device_id)
    if (site, hub) != (cfg.edge.site_id, cfg.edge.device_id):
        cfg = cfg.model_copy(update={"edge": cfg.edge.model_copy(update={"site_id": site, "device_id": hub})})
    agent = EdgeAgent(cfg, sensors=sensors, start_epoch_ms=getattr(source, "start_epoch_ms", None))
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


def _cmd_record(args: argparse.Namespace) -> int:
    from fallwatch.config import EdgeConfig, EdgeSourceConfig
    from fallwatch.edge.sources import SimSource, record

    cfg = EdgeConfig(source=EdgeSourceConfig(path=args.scenario, speed=0))
    if args.hub is None:  # the scenario's first hub
        from fallwatch.sim.scenario import demo_scenario, load_scenario

        scn = load_scenario(args.scenario) if args.scenario else demo_scenario(residents=1, duration_s=600.0)
        args.hub = scn.expanded().sites[0].hub_id
    try:
        src = SimSource(cfg, duration_s=args.duration, hub_id=args.hub)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    n = record(src.batches(), args.out)
    print(f"recorded {n} frames of hub {src.hub_id} to {args.out}")
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

    from fallwatch.edge.ota import sign_update

    key = serialization.load_pem_private_key(args.key.read_bytes(), password=None)
    doc = sign_update(key, args.model.read_bytes(), args.version, inline=args.url is None,  # type: ignore[arg-type]
                      url=args.url)
    args.out.write_bytes(doc)
    print(f"wrote {args.out} ({len(doc)} bytes); publish it retained on fallwatch/v1/<site>/<hub>/ota/model")
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
    print(f"installed fall model {manifest['version']} at {model.path}")
    return 0


def _cmd_outbox(args: argparse.Namespace) -> int:
    from fallwatch.edge.outbox import Outbox

    cfg = _load(args.config)
    ob = Outbox(cfg.edge.outbox_path, bump_boot=False)
    print(json.dumps({"path": str(cfg.edge.outbox_path), "depth": ob.depth(), "by_kind": ob.depth_by_kind(),
                      "next_seq": ob.next_seq}))
    ob.close()
    return 0

