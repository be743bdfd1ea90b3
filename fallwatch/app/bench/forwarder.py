"""The gateway benchmark's baselines: bare batched MQTT → InfluxDB 1.x forwarders.

What a competent "just forward it" consumer does, and nothing more: a persistent MQTT 5
session, no validation, no de-duplication, no device registry, no spool; a writer thread
takes whatever arrived, turns each JSON payload into one line-protocol line and POSTs
batches of up to 5,000. Run as its own process so its CPU and memory are its own::

    python -m fallwatch.app.bench.forwarder --mqtt-port P --influx URL --db NAME --client-id ID --n N
        [--client paho|gmqtt] [--ack receipt|durable]

Two knobs make it the yardstick for the gateway's MQTT client (issue 16, item 4):

- ``--client``: stock paho (its network thread), ``paho-tuned`` (paho with the gateway's own
  tuning from :mod:`fallwatch.gateway.links`: buffered reads, property tables built once, a
  batch's PUBACKs in one write) or gmqtt (asyncio, reads 64 kB at a time and parses every
  packet in it in one pass);
- ``--ack``: ``receipt`` is the client's default (paho acknowledges on receipt; gmqtt's
  ``optimistic_acknowledgement``) and loses what it acknowledged and had not written if the
  process dies, which is exactly what the gateway's extra work prevents; ``durable``
  acknowledges each message after the POST that stored it returned 2xx, in arrival order
  (paho's ``manual_ack``; gmqtt: ``optimistic_acknowledgement=False`` and an ``on_message``
  coroutine that waits for the batch), with the gateway's receive maximum, so the cost of
  the gateway's guarantee in each client is measured apart from everything else it does.

prints one JSON line (first receipt and last write, wall clock; CPU seconds between them; peak RSS) once
``N`` messages are written; ``--subscribe-only`` creates the session and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import requests

FILTER = "fallwatch/v1/+/+/tele/+"
#: the gateway's bulk link: ``min(65535, max(100, 20 * batch_max))`` with the default batch_max
RECEIVE_MAX = 20_000
SESSION_EXPIRY_S = 3600
_dec = msgspec.json.Decoder()


def line(payload: bytes) -> str:
    m = _dec.decode(payload)
    d = m["data"]
    fields = ",".join(f"{k}={'true' if v is True else 'false' if v is False else float(v)}"
                      for k, v in d["fields"].items())
    return (f"telemetry,device_id={m['device_id']},sensor={d['sensor']},site_id={m['site_id']} "
            f"window_s={float(d['window_s'])},{fields} {m['ts_ms']}")


class Inbox:
    """What the client thread received and the writer has not yet taken: (payload, ack token)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: list[tuple[bytes, Any]] = []
        self.first: list[float] = []

    def put(self, payload: bytes, token: Any) -> None:
        if not self.first:
            ru = resource.getrusage(resource.RUSAGE_SELF)
            self.first.extend((time.time(), ru.ru_utime + ru.ru_stime))
        with self.lock:
            self.got.append((payload, token))


class Consumer:
    """One MQTT client's side of the forwarder: session, subscription, receipt, acks."""

    def subscribed(self, timeout: float) -> bool:
        raise NotImplementedError

    def ack(self, tokens: list[Any]) -> None:
        """Acknowledge these messages (arrival order) now that they are stored; receipt mode: nothing."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class PahoConsumer(Consumer):
    #: the gateway's own paho tuning (:mod:`fallwatch.gateway.links`): buffered socket reads,
    #: property tables built once, a batch's PUBACKs in one write
    tuned = False

    def __init__(self, port: int, client_id: str, inbox: Inbox, durable: bool) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._sub = threading.Event()
        self.durable = durable
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                        manual_ack=durable)

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            inbox.put(bytes(msg.payload), msg.mid)

        c.on_connect = lambda cl, *_: cl.subscribe(FILTER, qos=1)
        c.on_subscribe = lambda *_: self._sub.set()
        c.on_message = on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        if durable:
            props.ReceiveMaximum = RECEIVE_MAX
        self._ack_many: Callable[[list[int]], object] | None = None
        if self.tuned:
            from fallwatch.gateway import links

            links.buffer_reads(c)
            links.share_property_tables()
            self._ack_many = links.puback_many(c)
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c

    def subscribed(self, timeout: float) -> bool:
        return self._sub.wait(timeout)

    def ack(self, tokens: list[Any]) -> None:
        if self.durable and self._ack_many is not None:
            self._ack_many(tokens)
        elif self.durable:
            for mid in tokens:
                self.client.ack(mid, 1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class GmqttConsumer(Consumer):
    """gmqtt on its own event loop thread; durable acks: each message's ``on_message``
    coroutine waits for its batch's future, and gmqtt sends the PUBACK when it returns (its
    public API's only way to ack after the work is done).

    ``batched`` (``--client gmqtt-batched``) instead does what the gateway does to paho: the
    handler's QoS 1 step is replaced so a message is put in the inbox with its packet id and
    no coroutine, and a batch's PUBACKs go out in one write. That uses gmqtt's internals (as
    :mod:`fallwatch.gateway.links` uses paho's), so it shows what gmqtt could do at best."""

    batched = False

    def __init__(self, port: int, client_id: str, inbox: Inbox, durable: bool) -> None:
        import gmqtt
        from gmqtt.mqtt.constants import MQTTv50

        self.durable = durable
        self._sub = threading.Event()
        self.loop = asyncio.new_event_loop()
        props: dict[str, int] = {"session_expiry_interval": SESSION_EXPIRY_S}
        if durable:
            props["receive_maximum"] = RECEIVE_MAX
        self.client = c = gmqtt.Client(client_id, clean_session=False, optimistic_acknowledgement=not durable,
                                       **props)
        c.on_connect = lambda cl, *_: cl.subscribe(FILTER, qos=1)
        c.on_subscribe = lambda *_: self._sub.set()
        if durable and self.batched:
            import struct

            def qos1(mid: int, packet: bytes, _topic: str, _props: Any) -> None:
                inbox.put(packet, mid)

            c._package_handler._handle_qos_1_publish_packet = qos1
            pack = struct.Struct("!BBHBB").pack  # MQTT 5 PUBACK: type, length 4, id, reason 0, no properties
            self._acks: Callable[[list[int]], None] = lambda mids: c._connection._protocol.write_data(
                b"".join([pack(0x40, 4, m, 0, 0) for m in mids]))
        elif durable:
            async def on_message_durable(_c: Any, _t: str, payload: bytes, _q: int, _p: Any) -> int:
                fut = self.loop.create_future()
                inbox.put(payload, fut)
                await fut
                return 0  # PUBACK reason: success

            c.on_message = on_message_durable
        else:
            def on_message(_c: Any, _t: str, payload: bytes, _q: int, _p: Any) -> int:
                inbox.put(payload, None)
                return 0

            c.on_message = on_message
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(c.connect("127.0.0.1", port, version=MQTTv50))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="gmqtt", daemon=True)
        self.thread.start()
        ready.wait(30)

    def subscribed(self, timeout: float) -> bool:
        return self._sub.wait(timeout)

    def ack(self, tokens: list[Any]) -> None:
        if self.durable and self.batched:
            self.loop.call_soon_threadsafe(self._acks, tokens)
        elif self.durable:
            def done(futs: list[asyncio.Future[None]] = tokens) -> None:
                for f in futs:  # in arrival order: the waiting coroutines resume (and ack) in this order
                    f.set_result(None)
            self.loop.call_soon_threadsafe(done)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.client.disconnect(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class TunedPahoConsumer(PahoConsumer):
    tuned = True


class BatchedGmqttConsumer(GmqttConsumer):
    batched = True


CLIENTS: dict[str, Callable[[int, str, Inbox, bool], Consumer]] = {
    "paho": PahoConsumer, "paho-tuned": TunedPahoConsumer, "gmqtt": GmqttConsumer,
    "gmqtt-batched": BatchedGmqttConsumer}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mqtt-port", type=int, required=True)
    ap.add_argument("--influx", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--client", choices=sorted(CLIENTS), default="paho")
    ap.add_argument("--ack", choices=("receipt", "durable"), default="receipt")
    ap.add_argument("--subscribe-only", action="store_true")
    a = ap.parse_args(argv)

    inbox = Inbox()
    consumer = CLIENTS[a.client](a.mqtt_port, a.client_id, inbox, a.ack == "durable")
    if a.subscribe_only:
        ok = consumer.subscribed(10)
        consumer.close()
        return 0 if ok else 1
    s = requests.Session()
    url, params = f"{a.influx.rstrip('/')}/write", {"db": a.db, "precision": "ms"}
    written = 0
    last = 0.0
    while written < a.n:
        # batch like the gateway and Node-RED's join node: up to 5,000, or whatever came within
        # the same 50 ms linger the gateway uses (taking whatever is there every millisecond
        # made batches of 2-3 under a drain, and the forwarder POST-bound: not a fair baseline)
        with inbox.lock:
            n = len(inbox.got)
        if n == 0:
            time.sleep(0.001)
            continue
        if n < 5000 and a.n - written > n:
            time.sleep(0.05)
        with inbox.lock:
            batch = inbox.got[:5000]
            del inbox.got[: len(batch)]
        r = s.post(url, params=params, data="\n".join(line(p) for p, _ in batch).encode(), timeout=60)
        r.raise_for_status()
        consumer.ack([t for _, t in batch])
        written += len(batch)
        last = time.time()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/status") as f:  # VmHWM: ru_maxrss keeps the forking parent's peak across exec
        hwm = next((int(r.split()[1]) / 1024 for r in f if r.startswith("VmHWM:")), ru.ru_maxrss / 1024)
    print(json.dumps({"first_rx": inbox.first[0], "last_write": last, "written": written,
                      "cpu_s": ru.ru_utime + ru.ru_stime - inbox.first[1], "maxrss_mb": hwm}), flush=True)
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
