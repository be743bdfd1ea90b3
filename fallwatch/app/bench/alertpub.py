"""The gateway benchmark's fall-alert publisher, in its own process.

Publishes fall alerts at a steady rate from its own MQTT client (as a hub's outbox sends
alerts first, apart from its telemetry) and appends ``<alert_id> <publish time, Unix s>``
to a file for each, until its stdin is closed. Its own process, so an alert's publish is
not delayed by the benchmark's telemetry publisher competing for the same GIL (a trace of
the 2,000 msg/s run had alerts waiting up to 0.5 s in the benchmark's own process before
they reached the broker, charged to the gateway)::

    python -m fallwatch.app.bench.alertpub PORT OUT_FILE SEQ0 HUBS RATE
"""

from __future__ import annotations

import sys
import threading
import time

from fallwatch.testing.publisher import Publisher, fall

SITE = "bench"


def main(argv: list[str]) -> int:
    port, out_path, seq0, hubs, rate = int(argv[0]), argv[1], int(argv[2]), int(argv[3]), float(argv[4])
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    pub = Publisher("127.0.0.1", port, f"bench-alerts-{time.monotonic_ns()}")
    try:
        print("ready", flush=True)
        t0, n = time.perf_counter(), 0
        with open(out_path, "a") as out:
            while not stop.is_set():
                if (time.perf_counter() - t0) * rate > n:
                    dev = f"hub-{n % hubs:04d}"
                    event = f"bench{seq0}-{n}"
                    at = time.time()
                    pub.publish(*fall(SITE, dev, 10**8 + seq0 + n, event=event))
                    out.write(f"fall:{SITE}:{dev}:{event} {at}\n")
                    out.flush()
                    n += 1
                stop.wait(0.002)
        pub.wait(60)
    finally:
        pub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
