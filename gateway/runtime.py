"""Interpreter settings for a process that runs a gateway (``fallwatch gateway run``).

Two things held a fall alert back at 2,000 msg/s in one process, both outside the
gateway's own code (issue 16, traced alert by alert):

* **The cyclic garbage collector's full collections.** About every 3 s under that load a
  generation-2 collection walked every tracked object of the process — ~75,000, nearly all
  of them made at start-up (modules, classes, functions, the web app, pydantic models) and
  alive until exit — in 85–190 ms, holding the GIL: every thread stood still, the alert in
  flight included. :func:`settle` collects once and then *freezes* what is alive after
  start-up (:func:`gc.freeze`: moved to a permanent generation the collector no longer
  walks), so a full collection walks only what was made since (~1,500–5,000 objects,
  2–20 ms measured). Nothing that becomes garbage later is kept: objects made after the
  freeze are collected as before; the start-up objects were alive anyway.
* **The GIL's switch interval.** A thread that wakes up (the alert link's network thread
  with a packet, the alert worker with an item, a channel's worker with an event, each
  SQLite step and ``flock`` it returns from) waits up to ``sys.getswitchinterval()``
  (5 ms by default) for a CPU-bound thread — the bulk worker decoding a batch — to hand
  the GIL over. An alert makes a few dozen such hops. :data:`SWITCH_INTERVAL_S` makes each
  wait shorter at the price of more hand-overs in a busy process.

Only for a process that is a gateway: both settings are process-wide, so an in-process
:class:`~fallwatch.gateway.app.Gateway` (tests, the demo, the in-process bench) leaves the
host process's interpreter alone.
"""

from __future__ import annotations

import gc
import sys

#: GIL switch interval of a gateway process (Python's default is 0.005 s)
SWITCH_INTERVAL_S = 0.001


def settle(switch_interval_s: float = SWITCH_INTERVAL_S) -> None:
    """Call once the gateway has started: collect, freeze what start-up made, shorten the
    switch interval (see the module doc)."""
    sys.setswitchinterval(switch_interval_s)
    gc.collect()
    gc.freeze()
