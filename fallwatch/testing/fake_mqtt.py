"""An in-memory MQTT broker and paho-compatible clients, for fast broker-free unit tests.

It replaces paho at exactly one seam, :data:`fallwatch.mqtt.client_factory`, so the code
under test builds, connects and calls its client as it does in production. What it
models is what our code relies on, and no more: QoS 0/1 routing with MQTT wildcards,
retained messages, ``$share/group/filter`` subscriptions (round robin), persistent
sessions (QoS 1 messages queued while a non-clean client is away, unacknowledged
deliveries redelivered on reconnect), manual acks, last wills, and each client's
callbacks run on its own "network" thread like paho's ``loop_start``.

What it does not model (keep those in the integration tests on the real Mosquitto):
the wire format, keepalive, flow control, ACL enforcement, message expiry and TLS.
PUBACKs can be withheld (:meth:`FakeBroker.hold_acks`) to observe a client between
the broker accepting a message and the client hearing so.

Use::

    with FakeBroker() as broker:          # installs itself as the client factory
        agent = EdgeAgent(cfg, ...)       # cfg.mqtt.url may be anything
        ...
        broker.published("fallwatch/v1/+/+/evt/fall")
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from fallwatch import mqtt as fw_mqtt


@dataclass
class FakeMessage:
    """The attributes of ``paho.mqtt.client.MQTTMessage`` that our callbacks read."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    mid: int = 0
    dup: bool = False
    properties: Any = None


@dataclass
class _Session:
    subs: dict[str, int] = field(default_factory=dict)  # filter -> qos
    pending: deque[FakeMessage] = field(default_factory=deque)  # queued while offline
    unacked: dict[int, FakeMessage] = field(default_factory=dict)  # delivered, manual ack awaited


class _Info:
    """Mimics ``MQTTMessageInfo``: ``rc``, ``mid``, ``is_published()``, ``wait_for_publish()``."""

    def __init__(self, mid: int, rc: int = mqtt.MQTT_ERR_SUCCESS) -> None:
        self.mid = mid
        self.rc = rc
        self._done = threading.Event()

    def is_published(self) -> bool:
        return self._done.is_set()

    def wait_for_publish(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)


class FakeBroker:
    """One in-memory broker. Thread-safe; every method may be called from any thread."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._clients: dict[str, FakeClient] = {}
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, FakeMessage] = {}
        self._rr: dict[str, itertools.count[int]] = defaultdict(itertools.count)
        self.log: list[FakeMessage] = []  # every accepted publish, in order
        self.online = True
        self._saved: Callable[..., mqtt.Client] | None = None
        self._hold_acks = False
        self._held_acks: list[tuple[FakeClient, Callable[[], None]]] = []

    # -------------------------------------------------------------- installation

    def factory(self, *args: Any, **kwargs: Any) -> FakeClient:
        return FakeClient(self, *args, **kwargs)

    def __enter__(self) -> FakeBroker:
        self._saved = fw_mqtt.client_factory
        fw_mqtt.client_factory = self.factory  # type: ignore[assignment]  # a duck-typed stand-in for paho's Client
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._saved is not None:
            fw_mqtt.client_factory = self._saved
        for c in list(self._clients.values()):
            c.loop_stop()

    # -------------------------------------------------------------- inspection

    def published(self, topic_filter: str = "#") -> list[FakeMessage]:
        with self._lock:
            return [m for m in self.log if mqtt.topic_matches_sub(topic_filter, m.topic)]

    def retained(self, topic: str) -> FakeMessage | None:
        with self._lock:
            return self._retained.get(topic)

    def client(self, client_id: str) -> FakeClient | None:
        return self._clients.get(client_id)

    # -------------------------------------------------------------- faults

    def go_down(self) -> None:
        """Drop every connection (wills fire), as a broker restart would; sessions are kept."""
        with self._lock:
            self.online = False
            clients = list(self._clients.values())
        for c in clients:
            c._drop(fire_will=True)

    def hold_acks(self) -> None:
        """Keep routing publishes but withhold their PUBACKs (a slow broker, or acks lost on
        the way) until :meth:`release_acks`: what a client does before the ack is observable."""
        with self._lock:
            self._hold_acks = True

    def release_acks(self) -> int:
        """Send every withheld PUBACK (in order) and stop withholding; returns how many."""
        with self._lock:
            self._hold_acks = False
            held, self._held_acks = self._held_acks, []
        for c, done in held:
            c._post(done)
        return len(held)

    def held_acks(self) -> int:
        with self._lock:
            return len(self._held_acks)

    def come_up(self) -> None:
        with self._lock:
            self.online = True
            clients = list(self._clients.values())
        for c in clients:
            c._try_connect()

    # -------------------------------------------------------------- broker side

    def _connect(self, c: FakeClient) -> tuple[bool, bool]:
        """Register a connection; returns (accepted, session_present)."""
        with self._lock:
            if not self.online:
                return False, False
            old = self._clients.get(c.client_id)
            if old is not None and old is not c:
                old._drop(fire_will=True)  # session takeover, as MQTT specifies
            self._clients[c.client_id] = c
            present = c.client_id in self._sessions and not c.clean_start
            if not present:
                self._sessions[c.client_id] = _Session()
            sess = self._sessions[c.client_id]
            for m in list(sess.unacked.values()):
                m.dup = True
                sess.pending.appendleft(m)
            sess.unacked.clear()
            backlog = list(sess.pending)
            sess.pending.clear()
        for m in backlog:
            self._deliver(c, m)
        return True, present

    def _disconnect(self, c: FakeClient, *, fire_will: bool) -> None:
        with self._lock:
            if self._clients.get(c.client_id) is c:
                del self._clients[c.client_id]
            if c.clean_start:
                self._sessions.pop(c.client_id, None)
            will = c.will if fire_will else None
        if will is not None:
            self._publish(will)

    def _subscribe(self, c: FakeClient, topic_filter: str, qos: int) -> None:
        with self._lock:
            self._sessions[c.client_id].subs[topic_filter] = qos
            shared = topic_filter.startswith("$share/")
            plain = topic_filter.split("/", 2)[2] if shared else topic_filter
            retained = [] if shared else [m for t, m in self._retained.items() if mqtt.topic_matches_sub(plain, t)]
        for m in retained:
            self._deliver(c, FakeMessage(m.topic, m.payload, min(qos, m.qos), True, properties=m.properties))

    def _unsubscribe(self, c: FakeClient, topic_filter: str) -> None:
        with self._lock:
            self._sessions.get(c.client_id, _Session()).subs.pop(topic_filter, None)

    def _publish(self, m: FakeMessage) -> None:
        with self._lock:
            self.log.append(m)
            if m.retain:
                if m.payload:
                    self._retained[m.topic] = m
                else:
                    self._retained.pop(m.topic, None)
            targets: list[tuple[str, int]] = []
            groups: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
            for cid, sess in self._sessions.items():
                for flt, qos in sess.subs.items():
                    if flt.startswith("$share/"):
                        _, group, plain = flt.split("/", 2)
                        if mqtt.topic_matches_sub(plain, m.topic):
                            groups[(group, plain)].append((cid, qos))
                    elif mqtt.topic_matches_sub(flt, m.topic):
                        targets.append((cid, qos))
                        break
            for key, members in groups.items():
                online = [x for x in members if x[0] in self._clients] or members
                targets.append(online[next(self._rr["/".join(key)]) % len(online)])
            out: list[tuple[FakeClient, FakeMessage]] = []
            for cid, qos in targets:
                q = min(qos, m.qos)
                copy = FakeMessage(m.topic, m.payload, q, False, properties=m.properties)
                client = self._clients.get(cid)
                if client is None:
                    if q > 0:
                        self._sessions[cid].pending.append(copy)
                else:
                    out.append((client, copy))
        for client, copy in out:
            self._deliver(client, copy)

    def _deliver(self, c: FakeClient, m: FakeMessage) -> None:
        with self._lock:
            if m.qos > 0:
                m.mid = next(c._in_mid)
                if c.manual_ack:
                    self._sessions[c.client_id].unacked[m.mid] = m
        c._post(lambda: c._dispatch(m))

    def _puback(self, c: FakeClient, done: Callable[[], None]) -> None:
        with self._lock:
            if self._hold_acks:
                self._held_acks.append((c, done))
                return
        c._post(done)

    def _ack(self, c: FakeClient, mid: int) -> None:
        with self._lock:
            sess = self._sessions.get(c.client_id)
            if sess is not None:
                sess.unacked.pop(mid, None)


class FakeClient:
    """The subset of ``paho.mqtt.client.Client`` (callback API v2) fallwatch uses."""

    def __init__(self, broker: FakeBroker, callback_api_version: Any = None, client_id: str = "",
                 clean_session: bool | None = None, userdata: Any = None, protocol: int = mqtt.MQTTv5,
                 transport: str = "tcp", manual_ack: bool = False, **_: Any) -> None:
        self.broker = broker
        self.client_id = client_id
        self.protocol = protocol
        self.manual_ack = manual_ack
        self.clean_start = bool(clean_session) if protocol != mqtt.MQTTv5 else False
        self.userdata = userdata
        self.will: FakeMessage | None = None
        self.on_connect: Callable[..., None] | None = None
        self.on_disconnect: Callable[..., None] | None = None
        self.on_message: Callable[..., None] | None = None
        self.on_publish: Callable[..., None] | None = None
        self.on_subscribe: Callable[..., None] | None = None
        self._mid = itertools.count(1)
        self._in_mid = itertools.count(1)
        self._inbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._want = False
        self._connected = False
        self.username: str | None = None

    # -------------------------------------------------------------- configuration (no-ops)

    def username_pw_set(self, username: str | None, password: str | None = None) -> None:
        self.username = username

    def tls_set(self, *a: Any, **k: Any) -> None: ...

    def tls_insecure_set(self, value: bool) -> None: ...

    def reconnect_delay_set(self, min_delay: int = 1, max_delay: int = 120) -> None: ...

    def max_queued_messages_set(self, n: int) -> None: ...

    def max_inflight_messages_set(self, n: int) -> None: ...

    def will_set(self, topic: str, payload: bytes | str | None = None, qos: int = 0, retain: bool = False,
                 properties: Any = None) -> None:
        data = payload.encode() if isinstance(payload, str) else (payload or b"")
        self.will = FakeMessage(topic, data, qos, retain, properties=properties)

    # -------------------------------------------------------------- connection

    def connect_async(self, host: str, port: int = 1883, keepalive: int = 60, clean_start: Any = None,
                      properties: Any = None, **_: Any) -> None:
        if self.protocol == mqtt.MQTTv5 and isinstance(clean_start, bool):
            self.clean_start = clean_start
        self._want = True

    def loop_start(self) -> int:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"fake-mqtt-{self.client_id}", daemon=True)
            self._thread.start()
        if self._want:
            self._post(self._try_connect)
        return mqtt.MQTT_ERR_SUCCESS

    def loop_stop(self) -> int:
        if self._thread is not None:
            self._inbox.put(None)
            if threading.current_thread() is not self._thread:
                self._thread.join(5)
            self._thread = None
        return mqtt.MQTT_ERR_SUCCESS

    def disconnect(self, reasoncode: Any = None, properties: Any = None) -> int:
        self._want = False
        if self._connected:
            self._connected = False
            self.broker._disconnect(self, fire_will=False)
            self._post(lambda: self._call(self.on_disconnect, self, self.userdata, _flags(),
                                          ReasonCode(mqtt.PacketTypes.DISCONNECT, identifier=0), None))
        return mqtt.MQTT_ERR_SUCCESS

    def is_connected(self) -> bool:
        return self._connected

    # -------------------------------------------------------------- messaging

    def publish(self, topic: str, payload: bytes | str | None = None, qos: int = 0, retain: bool = False,
                properties: Any = None) -> _Info:
        data = payload.encode() if isinstance(payload, str) else (payload or b"")
        info = _Info(next(self._mid))
        if not self._connected:
            info.rc = mqtt.MQTT_ERR_NO_CONN
            return info
        self.broker._publish(FakeMessage(topic, data, qos, retain, properties=properties))

        def done() -> None:
            info._done.set()
            self._call(self.on_publish, self, self.userdata, info.mid,
                       ReasonCode(mqtt.PacketTypes.PUBACK, identifier=0), None)

        if qos > 0:
            self.broker._puback(self, done)
        else:
            self._post(done)
        return info

    def subscribe(self, topic: str | list[tuple[str, int]], qos: int = 0, options: Any = None,
                  properties: Any = None) -> tuple[int, int]:
        mid = next(self._mid)
        pairs = topic if isinstance(topic, list) else [(topic, qos)]
        codes = []
        for flt, q in pairs:
            q = int(getattr(q, "QoS", q))
            self.broker._subscribe(self, flt, q)
            codes.append(ReasonCode(mqtt.PacketTypes.SUBACK, identifier=q))
        self._post(lambda: self._call(self.on_subscribe, self, self.userdata, mid, codes, None))
        return mqtt.MQTT_ERR_SUCCESS, mid

    def unsubscribe(self, topic: str | list[str], properties: Any = None) -> tuple[int, int]:
        for flt in topic if isinstance(topic, list) else [topic]:
            self.broker._unsubscribe(self, flt)
        return mqtt.MQTT_ERR_SUCCESS, next(self._mid)

    def ack(self, mid: int, qos: int) -> int:
        self.broker._ack(self, mid)
        return mqtt.MQTT_ERR_SUCCESS

    # -------------------------------------------------------------- internals

    def _post(self, fn: Callable[[], None]) -> None:
        self._inbox.put(fn)

    def _loop(self) -> None:
        while True:
            fn = self._inbox.get()
            if fn is None:
                return
            fn()

    def _try_connect(self) -> None:
        if not self._want or self._connected:
            return
        ok, present = self.broker._connect(self)
        if not ok:
            return  # the broker is down; come_up() retries, like paho's reconnect loop
        self._connected = True
        flags = _flags(session_present=present)
        self._post(lambda: self._call(self.on_connect, self, self.userdata, flags,
                                      ReasonCode(mqtt.PacketTypes.CONNACK, identifier=0), None))

    def _drop(self, *, fire_will: bool) -> None:
        if not self._connected:
            return
        self._connected = False
        self.broker._disconnect(self, fire_will=fire_will)
        self._post(lambda: self._call(self.on_disconnect, self, self.userdata, _flags(),
                                      ReasonCode(mqtt.PacketTypes.DISCONNECT, identifier=142), None))

    def _dispatch(self, m: FakeMessage) -> None:
        if self._connected:
            self._call(self.on_message, self, self.userdata, m)
        else:  # lost with the connection; a persistent session gets it again on reconnect
            self.broker._ack(self, m.mid) if not self.manual_ack else None

    @staticmethod
    def _call(cb: Callable[..., None] | None, *args: Any) -> None:
        if cb is not None:
            cb(*args)


def _flags(session_present: bool = False) -> Any:
    return mqtt.ConnectFlags(session_present=session_present)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0, step_s: float = 0.005) -> bool:
    """Poll ``predicate`` until true: fake deliveries are asynchronous, like real ones."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


def messages(broker: FakeBroker, topic_filter: str) -> Iterator[FakeMessage]:
    yield from broker.published(topic_filter)
