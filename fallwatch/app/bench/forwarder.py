"""The gateway benchmark's baseline: a bare batched paho → InfluxDB 1.x forwarder.

What a competent "just forward it" consumer does, and nothing more: paho on a persistent
MQTT 5 session, acknowledgments on receipt (paho's default), no validation, no
de-duplication, no device registry, no spool; a writer thread takes whatever arrived,
turns each JSON payload into one line-protocol line and POSTs batches of up to 5,000.
It loses what it has acknowledged and not yet written if it dies, which is exactly what
the gateway's extra work prevents. Run as its own process so its CPU and memory are its
own::

    python -m fallwatch.app.bench.forwarder --mqtt-port P --influx URL --db NAME --client-id ID --n N

prints one JSON line (first receipt and last write, wall clock; CPU seconds between them; peak RSS) once
``N`` messages are written; ``--subscribe-only`` creates the session and exits.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time

import msgspec
import paho.mqtt.client as mqtt
import requests
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

FILTER = "fallwatch/v1/+/+/tele/+"
_dec = msgspec.json.Decoder()


def line(payload: bytes) -> str:
    m = _dec.decode(payload)
    d = m["data"]
    fields = ",".join(f"{k}={'true' if v is True else 'false' if v is False else float(v)}"
                      for k, v in d["fields"].items())
    return (f"telemetry,device_id={m['device_id']},sensor={d['sensor']},site_id={m['site_id']} "
            f"window_s={float(d['window_s'])},{fields} {m['ts_ms']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mqtt-port", type=int, required=True)
    ap.add_argument("--influx", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--subscribe-only", action="store_true")
    a = ap.parse_args(argv)

    got: list[bytes] = []
    lock = threading.Lock()
    first: list[float] = []
    subscribed = threading.Event()

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe(FILTER, qos=1)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not first:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            first.extend((time.time(), ru.ru_utime + ru.ru_stime))
        with lock:
            got.append(bytes(msg.payload))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=a.client_id, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", a.mqtt_port, clean_start=False, properties=props)
    client.loop_start()
    if a.subscribe_only:
        subscribed.wait(10)
        client.disconnect()
        client.loop_stop()
        return 0
    s = requests.Session()
    url, params = f"{a.influx.rstrip('/')}/write", {"db": a.db, "precision": "ms"}
    written = 0
    last = 0.0
    while written < a.n:
        # batch like the gateway and Node-RED's join node: up to 5,000, or whatever came within
        # the same 50 ms linger the gateway uses (taking whatever is there every millisecond
        # made batches of 2-3 under a drain, and the forwarder POST-bound: not a fair baseline)
        with lock:
            n = len(got)
        if n == 0:
            time.sleep(0.001)
            continue
        if n < 5000 and a.n - written > n:
            time.sleep(0.05)
        with lock:
            batch = got[:5000]
            del got[: len(batch)]
        r = s.post(url, params=params, data="\n".join(map(line, batch)).encode(), timeout=60)
        r.raise_for_status()
        written += len(batch)
        last = time.time()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/status") as f:  # VmHWM: ru_maxrss keeps the forking parent's peak across exec
        hwm = next((int(r.split()[1]) / 1024 for r in f if r.startswith("VmHWM:")), ru.ru_maxrss / 1024)
    print(json.dumps({"first_rx": first[0], "last_write": last, "written": written,
                      "cpu_s": ru.ru_utime + ru.ru_stime - first[1], "maxrss_mb": hwm}), flush=True)
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
