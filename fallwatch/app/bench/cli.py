"""``fallwatch bench edge|gateway|e2e|sim|all``: one harness, figures anyone can reproduce.

Each area module (``fallwatch.app.bench.<area>``) starts and stops what it needs (private
Mosquitto/InfluxDB on loopback, temporary directories) and returns a flat dict of
figures, including its own baseline measured in the same run. This harness repeats a
run (``--repeat``), reports the median of every number and its spread (min/max), and
prints a machine-readable JSON object as the last line with ``--json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

AREAS = ("sim", "edge", "gateway", "e2e")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="measure speed, latency, memory (see docs/benchmarks.md)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("area", choices=(*AREAS, "all"))
    p.add_argument("--repeat", type=int, default=None,
                   help="runs per area; median and spread are reported "
                        "(default 3 for sim, 1 otherwise: the edge benchmark repeats internally)")
    p.add_argument("--quick", action="store_true", help="short runs (smoke check, noisier figures)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--out", type=Path, default=None,
                   help="write results.json and plots (latency distributions, load curves) here")
    p.set_defaults(func=_cmd)


def machine() -> dict[str, Any]:
    import os

    import psutil

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each numeric figure over the runs, with ``<key>_min``/``_max`` when repeated.

    Keys starting with ``_`` carry raw samples for plots (latency lists, load curves); they
    are pooled over runs and kept out of the printed figures.
    """
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for r in runs for k in r))
    for k in [k for k in keys if k.startswith("_")]:
        pooled: list[Any] = []
        for r in runs:
            pooled.extend(r.get(k, []))
        out[k] = pooled
    keys = [k for k in keys if not k.startswith("_")]
    for k in keys:
        vals = [r[k] for r in runs if k in r]
        nums = [v for v in vals if isinstance(v, int | float) and not isinstance(v, bool)]
        if nums and len(nums) == len(vals):
            med = statistics.median(nums)
            out[k] = round(med, 3) if isinstance(med, float) else med
            if len(nums) > 1 and min(nums) != max(nums):
                out[f"{k}_min"], out[f"{k}_max"] = min(nums), max(nums)
        else:
            out[k] = vals[-1]
    out["runs"] = len(runs)
    return out


def run_area(area: str, repeat: int, quick: bool, progress: bool) -> dict[str, Any]:
    module = importlib.import_module(f"fallwatch.app.bench.{area}")
    runs = []
    for i in range(repeat):
        if progress:
            print(f"[bench {area}] run {i + 1}/{repeat}", file=sys.stderr)
        t0 = time.monotonic()
        result = module.run(quick=quick, progress=progress)
        result["wall_s"] = round(time.monotonic() - t0, 1)
        runs.append(result)
    return aggregate(runs)


def plot(area: str, result: dict[str, Any], out: Path) -> list[Path]:
    """One PNG per raw-sample key: a histogram for latency lists, a line for ``_load_curve``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, samples in result.items():
        if not key.startswith("_") or not samples:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        name = key.lstrip("_")
        if name == "load_curve":  # [(offered msgs/s, achieved msgs/s, p99 ms), ...]
            xs, ys = [p[0] for p in samples], [p[1] for p in samples]
            ax.plot(xs, ys, "o-", label="achieved")
            ax.plot(xs, xs, "--", color="grey", label="offered")
            ax.set_xlabel("offered load (msgs/s)")
            ax.set_ylabel("stored (msgs/s)")
            ax.legend()
        else:
            ax.hist(samples, bins=40)
            ax.set_xlabel(name.replace("_", " "))
            ax.set_ylabel("count")
            ax.axvline(statistics.median(samples), color="k", linestyle="--", label="median")
            ax.legend()
        ax.set_title(f"{area}: {name.replace('_', ' ')}")
        fig.tight_layout()
        path = out / f"{area}-{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _run_isolated(area: str, repeat: int, quick: bool, out: Path | None) -> dict[str, Any]:
    import subprocess

    cmd = [sys.executable, "-m", "fallwatch.cli", "bench", area, "--json", "--repeat", str(repeat)]
    if quick:
        cmd.append("--quick")
    if out is not None:
        cmd += ["--out", str(out)]  # the child writes its own plots there
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"bench {area} exited with {proc.returncode}"}
    result = json.loads(lines[-1])
    result.pop("machine", None)
    return dict(result)


def _cmd(args: argparse.Namespace) -> int:
    import logging

    # thousands of synthetic alerts would bury the figures; benchmarks attach their own handlers
    for name in ("fallwatch.gateway.alerts", "fallwatch.edge.agent", "fallwatch.gateway"):
        logging.getLogger(name).propagate = False
    areas = AREAS if args.area == "all" else (args.area,)
    progress = True
    results: dict[str, Any] = {}
    for area in areas:
        repeat = args.repeat or (3 if area == "sim" else 1)
        if args.area == "all":
            # each area in its own process: peak RSS, imports and threads of one benchmark
            # must not be charged to the next
            results[area] = _run_isolated(area, repeat, args.quick, args.out)
        else:
            results[area] = run_area(area, repeat, args.quick, progress)
        print(f"\n{area}:", file=sys.stderr)
        for k, v in results[area].items():
            if not k.startswith("_"):
                print(f"  {k:32s} {v}", file=sys.stderr)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for area, result in results.items():
            for p in plot(area, result, args.out):
                print(f"wrote {p}", file=sys.stderr)
    results = {a: {k: v for k, v in r.items() if not k.startswith("_")} for a, r in results.items()}
    payload: dict[str, Any] = results if args.area == "all" else dict(results[args.area])
    payload["machine"] = machine()
    if args.out is not None:
        (args.out / "results.json").write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    if args.json:
        print(json.dumps(payload, sort_keys=True, default=str))
    return 0
