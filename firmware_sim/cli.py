"""``fallwatch sim ...``: run scenarios, check them, and work with recorded frame logs."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fallwatch.protocol.frames import SensorFrame
    from fallwatch.sim.scenario import Scenario

SCENARIO_DIR = Path(__file__).parent / "scenarios"


def resolve_scenario(name: str) -> Path:
    """A scenario file path, or the name of a bundled one (``flat``, ``care_home``, ``load_10k``)."""
    p = Path(name)
    if p.exists():
        return p
    bundled = SCENARIO_DIR / (name if name.endswith(".toml") else f"{name}.toml")
    if bundled.exists():
        return bundled
    known = ", ".join(sorted(x.stem for x in SCENARIO_DIR.glob("*.toml")))
    raise SystemExit(f"no scenario {name!r} (a file, or one of: {known}, demo)")


def _load(name: str) -> Scenario:
    from fallwatch.sim.scenario import ScenarioError, demo_scenario, load_scenario

    try:
        scn = demo_scenario() if name == "demo" else load_scenario(resolve_scenario(name))
        return scn.expanded()
    except ScenarioError as exc:
        raise SystemExit(str(exc)) from None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sim", help="simulated sensor fleet (wearables, room sensors) with ground truth",
                       description=__doc__)
    s = p.add_subparsers(dest="sim_command", metavar="SUBCOMMAND", required=True)

    r = s.add_parser("run", help="run a scenario, write ground truth, frames and a summary")
    r.add_argument("scenario", help="scenario TOML file or bundled name (flat, care_home, load_10k, demo)")
    r.add_argument("--duration", type=float, help="simulated seconds (default: the scenario's)")
    pace = r.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=0.0,
                      help="simulated seconds per wall second (default 0 = as fast as possible)")
    pace.add_argument("--realtime", action="store_true", help="pace to the wall clock (= --speed 1)")
    r.add_argument("--out", type=Path, help="write ground_truth.jsonl, frames.jsonl (a frame log), summary.json here")
    r.add_argument("--seed", type=int, help="override the scenario's seed")
    r.add_argument("--step", type=float, default=1.0, help="chunk length in sim seconds (default 1)")
    r.add_argument("--no-frames", action="store_true", help="do not write frames.jsonl")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.set_defaults(func=cmd_run)

    rp = s.add_parser("replay", help="replay a recording (CSV/NPZ/SisFall) as one wearable; same outputs as run")
    rp.add_argument("recording", help="file.csv, file.npz, a SisFall trial .txt or SUBJECT.tar.xz#TRIAL")
    rp.add_argument("--format", choices=("csv", "npz", "sisfall"), help="default: from the file name")
    rp.add_argument("--rate", type=float, default=50.0, help="wearable rate in Hz (default 50)")
    rp.add_argument("--loop", action="store_true", help="repeat the recording until --duration")
    rp.add_argument("--duration", type=float, help="simulated seconds (default: the recording's length)")
    pace = rp.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=0.0, help="sim seconds per wall second (0 = fast)")
    pace.add_argument("--realtime", action="store_true")
    rp.add_argument("--out", type=Path)
    rp.add_argument("--seed", type=int)
    rp.add_argument("--step", type=float, default=1.0)
    rp.add_argument("--no-frames", action="store_true")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=cmd_replay)

    rec = s.add_parser("record", help="record one hub's frames to a frame log (for the edge's replay source)")
    add_record_arguments(rec)
    rec.set_defaults(func=cmd_record)

    c = s.add_parser("check", help="validate a scenario and print what it expands to")
    c.add_argument("scenario")
    c.set_defaults(func=cmd_check)

    ls = s.add_parser("list", help="list the bundled scenarios")
    ls.set_defaults(func=cmd_list)

    i = s.add_parser("inspect", help="summarise a frame log: frames, decode errors, seq gaps per sensor")
    i.add_argument("framelog", type=Path, help="frames.jsonl (or an older frames.fwlog)")
    i.set_defaults(func=cmd_inspect)

    e = s.add_parser("export", help="decode one wearable from a frame log into a replayable CSV/NPZ")
    e.add_argument("framelog", type=Path, help="frames.jsonl (or an older frames.fwlog)")
    e.add_argument("sensor")
    e.add_argument("out", type=Path, help="*.csv or *.npz")
    e.set_defaults(func=cmd_export)

    ev = s.add_parser("eval-fall", help="simulated elderly-style falls (per kind, per path) and days/nights "
                                        "through the fall detector; adds them to the model card")
    ev.add_argument("--model", type=Path, default=None, help="ONNX model (default: the shipped one)")
    ev.add_argument("--falls-per-kind", type=int, default=20)
    ev.add_argument("--adl-residents", type=int, default=4)
    ev.add_argument("--adl-hours", type=float, default=4.0)
    ev.add_argument("--seed", type=int, default=12)
    ev.add_argument("--card", type=Path, default=None,
                    help="model dir whose report/metrics.json and MODEL_CARD.md get the figures "
                         "(default: the model's own directory)")
    ev.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    ev.set_defaults(func=cmd_eval_fall)


def add_record_arguments(rec: argparse.ArgumentParser) -> None:
    """The arguments of ``sim record`` (shared with its alias ``edge record``)."""
    rec.add_argument("--scenario", type=Path, help="scenario TOML (default: a one-flat demo)")
    rec.add_argument("--hub", help="hub id (default: the scenario's first hub)")
    rec.add_argument("--duration", type=float, default=None, help="seconds of simulation (default: scenario)")
    rec.add_argument("--seed", type=int, help="override the scenario's seed")
    rec.add_argument("--out", type=Path, required=True, help="the frame log to write (JSON lines)")


def cmd_eval_fall(args: argparse.Namespace) -> int:
    from fallwatch.models import report
    from fallwatch.models.detector import FallModel
    from fallwatch.sim.fall_eval import evaluate

    model = FallModel(args.model)
    out = evaluate(model, falls_per_kind=args.falls_per_kind, adl_residents=args.adl_residents,
                   adl_hours=args.adl_hours, seed=args.seed, progress=True)
    out["model"] = model.tag
    card_dir = args.card or model.path.parent
    if report.add_to_card(card_dir, "sim", out):
        print(f"added the simulated figures to {card_dir / 'report' / 'metrics.json'} and "
              f"{card_dir / 'MODEL_CARD.md'}", file=sys.stderr)
    for kind, row in out["kinds"].items():
        print(f"{kind:<11} " + "  ".join(f"{k}={v}" for k, v in row.items()))
    print("adl " + "  ".join(f"{k}={v}" for k, v in out["adl"].items()))
    if args.json:
        print(json.dumps(out, separators=(",", ":")))
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    """One hub's frames, as fast as possible, in the frame-log format the edge replays."""
    from fallwatch.protocol.framelog import FrameLogWriter
    from fallwatch.sim.fleet import Fleet
    from fallwatch.sim.scenario import ScenarioError, demo_scenario, load_scenario

    try:
        scn = load_scenario(args.scenario) if args.scenario else demo_scenario(residents=1, duration_s=600.0)
    except ScenarioError as exc:
        print(exc, file=sys.stderr)
        return 2
    fleet = Fleet(scn, seed=args.seed)
    hub = args.hub or fleet.hubs[0].hub_id
    if hub not in {h.hub_id for h in fleet.hubs}:
        print(f"hub {hub!r} is not in the scenario (hubs: {sorted(h.hub_id for h in fleet.hubs)[:10]})",
              file=sys.stderr)
        return 2
    with FrameLogWriter(args.out) as out:
        for chunk in fleet.run(duration_s=args.duration, step_s=0.5):
            out.write(f for f in chunk.frames if f.hub_id == hub)
    print(f"recorded {out.count} frames of hub {hub} to {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _run(_load(args.scenario), args)


def cmd_replay(args: argparse.Namespace) -> int:
    from fallwatch.sim.replay import ImuRecording, ReplayError
    from fallwatch.sim.scenario import ReplaySpec, Resident, Scenario, Site, Wearable

    fmt = args.format or ("npz" if args.recording.endswith(".npz") else
                          "csv" if args.recording.endswith(".csv") else "sisfall")
    spec = ReplaySpec(path=Path(args.recording), format=fmt, loop=args.loop)
    try:
        length = ImuRecording.from_spec(spec, args.rate).duration_s
    except (ReplayError, OSError, ValueError) as exc:
        raise SystemExit(f"cannot replay {args.recording}: {exc}") from None
    res = Resident(id="replay", wearable=Wearable(id="wear-replay", rate_hz=args.rate, replay=spec))
    scn = Scenario(name="replay", duration_s=args.duration or length,
                   sites=[Site(site_id="replay", hub_id="hub-replay", residents=[res])])
    return _run(scn, args)


def _run(scn: Scenario, args: argparse.Namespace) -> int:
    from fallwatch.protocol.framelog import FrameLogWriter
    from fallwatch.sim.fleet import Fleet

    progress = sys.stderr.isatty() and not args.json
    fleet = Fleet(scn, seed=args.seed, progress=progress)
    duration = args.duration if args.duration is not None else scn.duration_s
    speed = 1.0 if args.realtime else args.speed
    writer = None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        if not args.no_frames:
            writer = FrameLogWriter(args.out / "frames.jsonl")
    n_frames = n_bytes = 0
    by_transport: Counter[str] = Counter()
    t0 = time.perf_counter()
    try:
        for chunk in fleet.run(duration_s=duration, step_s=args.step, speed=speed, progress=progress):
            n_frames += len(chunk.frames)
            for f in chunk.frames:
                n_bytes += len(f.payload)
                by_transport[f.transport] += 1
            if writer:
                writer.write(chunk.frames)
    except KeyboardInterrupt:
        print("interrupted; writing what was simulated", file=sys.stderr)
    finally:
        if writer:
            writer.close()
    wall = time.perf_counter() - t0
    truth = fleet.ground_truth
    kinds = Counter(e.type for e in truth)
    wearables = sum(1 for s in fleet.sensors if s.kind == "wearable")
    summary = {
        "scenario": scn.name, "seed": fleet.seed, "hubs": len(fleet.hubs), "devices": len(fleet.sensors),
        "wearables": wearables, "sim_seconds": round(fleet.t_s, 3), "wall_seconds": round(wall, 3),
        "device_seconds_per_s": round(len(fleet.sensors) * fleet.t_s / wall, 1) if wall > 0 else None,
        "wearable_seconds_per_s": round(wearables * fleet.t_s / wall, 1) if wall > 0 else None,
        "frames": n_frames, "frames_ble": by_transport["ble"], "frames_zigbee": by_transport["zigbee"],
        "bytes": n_bytes, "falls": kinds["fall"], "near_falls": kinds["near_fall"], "faults": kinds["fault"],
        "adl_events": kinds["adl"], **{k: v for k, v in fleet.stats().items() if k != "devices"},
    }
    if args.out:
        fleet.write_ground_truth(args.out / "ground_truth.jsonl")
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        for k, v in summary.items():
            print(f"{k:>24}: {v}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    scn = _load(args.scenario).expanded()
    residents = sum(len(s.residents) for s in scn.sites)
    sensors = sum(len(s.sensors) for s in scn.sites)
    print(f"{scn.name}: ok — {len(scn.sites)} hubs, {residents} residents/wearables, {sensors} room sensors, "
          f"{len(scn.events)} injected events, {len(scn.faults)} fault rules, {scn.duration_s:g} s, seed {scn.seed}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    for p in sorted(SCENARIO_DIR.glob("*.toml")):
        first = next((ln.lstrip("# ").strip() for ln in p.read_text().splitlines() if ln.startswith("#")), "")
        print(f"{p.stem:>12}  {first}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from fallwatch.protocol.framelog import read_frames
    from fallwatch.protocol.frames import FrameError, decode_imu, decode_room

    stats: dict[str, Counter[str]] = {}
    last: dict[str, tuple[int, int]] = {}
    for f in _frames(read_frames(args.framelog)):
        c = stats.setdefault(f.sensor_id, Counter())
        c["frames"] += 1
        try:
            if f.transport == "ble":
                p = decode_imu(f.payload)
                prev = last.get(f.sensor_id)
                if prev is not None:
                    if p.boot_count != prev[0]:
                        c["reboots"] += 1
                    elif p.seq == prev[1]:
                        c["duplicates"] += 1
                    elif p.seq < prev[1]:
                        c["out_of_order"] += 1
                    elif p.seq > prev[1] + 1:
                        c["gaps"] += 1
                if prev is None or (p.boot_count, p.seq) > prev:
                    last[f.sensor_id] = (p.boot_count, p.seq)
            else:
                decode_room(f.payload)
        except FrameError as exc:
            c[f"error_{exc.reason}"] += 1
    keys = sorted({k for c in stats.values() for k in c})
    print("sensor".ljust(28) + "".join(k.rjust(14) for k in keys))
    for sid in sorted(stats):
        print(sid.ljust(28) + "".join(str(stats[sid][k]).rjust(14) for k in keys))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fallwatch.protocol.framelog import read_frames
    from fallwatch.sim.replay import ReplayError, export_wearable, save_csv, save_npz

    try:
        rate, acc, gyro = export_wearable(_frames(read_frames(args.framelog)), args.sensor)
    except ReplayError as exc:
        raise SystemExit(f"cannot export {args.sensor}: {exc}") from None
    (save_npz if args.out.suffix == ".npz" else save_csv)(args.out, rate, acc, gyro)
    print(f"{args.out}: {len(acc)} samples at {rate:g} Hz")
    return 0


def _frames(frames: Iterator[SensorFrame]) -> Iterator[SensorFrame]:
    """A frame log's frames; a damaged or foreign file ends the command with its reason."""
    from fallwatch.protocol.framelog import FrameLogError

    try:
        yield from frames
    except (FrameLogError, OSError) as exc:
        raise SystemExit(f"cannot read the frame log: {exc}") from None
