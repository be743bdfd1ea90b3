"""The gateway benchmark's staff-notification receiver, in its own process.

A web hook that appends ``<alert_id> <arrival, Unix s>`` to a file for each fall alert's
``raised`` event. Its own process, so the arrival time is not delayed by the benchmark's
publisher competing for the same GIL::

    python -m fallwatch.app.bench.hook PORT OUT_FILE
"""

from __future__ import annotations

import http.server
import json
import sys
import time
from typing import IO, Any


class Hook(http.server.BaseHTTPRequestHandler):
    out: IO[str]

    def do_POST(self) -> None:
        now = time.time()
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if body.get("action") == "raised":
            self.out.write(f"{body.get('alert_id')} {now:.6f}\n")
            self.out.flush()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def main() -> int:
    port, path = int(sys.argv[1]), sys.argv[2]
    with open(path, "a") as out:
        Hook.out = out
        http.server.ThreadingHTTPServer(("127.0.0.1", port), Hook).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
