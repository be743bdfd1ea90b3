"""Links: the gateway's MQTT connections, their subscriptions and their in-order acks.

Two connections per gateway: fall alerts get their own TCP stream, session and paho
network thread, so they are never parsed behind a burst of telemetry queued on the same
socket. Each link's paho thread only stamps the receive time, remembers the packet id for
the ack (:class:`~fallwatch.gateway.acks.AckTracker`) and puts an :data:`Item` on the
link's queue; everything else happens on the gateway's workers. The bulk link also owns
the gateway's retained presence (Homie/Sparkplug style birth and last will) and is the
client dead letters are published with.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import struct
import time
from collections.abc import Callable
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, readUTF

from fallwatch.config import FallwatchConfig, GatewayConfig, MqttConfig
from fallwatch.gateway.acks import AckEntry, AckTracker
from fallwatch.mqtt import Will, is_v5, make_client
from fallwatch.protocol import contract, topics

log = logging.getLogger("fallwatch.gateway")

#: One received message: (topic, payload, ack entry or None, receive time ns, retained)
Item = tuple[str, bytes, AckEntry | None, int, bool]
ItemQueue = queue.SimpleQueue[Item]

#: Subscriptions of the two links: together exactly the uplink kinds of ``topics.UPLINK_FILTERS``.
ALERT_FILTERS = (f"{topics.PREFIX}/+/+/evt/fall",)
BULK_FILTERS = (
    *(f for f in topics.UPLINK_FILTERS if not f.endswith("/evt/+")),
    f"{topics.PREFIX}/+/+/evt/risk",
    f"{topics.PREFIX}/+/+/evt/test",
)

PresenceState = Literal["ready", "offline", "lost"]


def _presence(state: PresenceState, gateway_id: str) -> bytes:
    return contract.encode_gateway(contract.GatewayPresence(state=state, gateway_id=gateway_id,
                                                            ts_ms=contract.now_ms()))


class Link:
    """One MQTT connection: its own persistent session, subscriptions, queue and in-order acks."""

    def __init__(self, mqtt_cfg: MqttConfig, name: str, client_id: str, filters: list[str], q: ItemQueue,
                 *, receive_max: int, on_receive: Callable[[], None], presence_of: str | None = None,
                 max_queued: int | None = None, read_pace_s: float = 0.0) -> None:
        """``presence_of``: the gateway id whose retained presence (and last will) this link carries;
        ``max_queued``: stop reading the socket while this many received messages wait in ``q``;
        ``read_pace_s``: :func:`buffer_reads` ``pace_s``."""
        self.name = name
        self.filters = filters
        self.q = q
        self.receive_max = receive_max
        self.connected = False
        self.subscribed = False
        self.closing = False
        self._mqtt = mqtt_cfg
        self._on_receive = on_receive
        self.gateway_id = presence_of
        self.presence = topics.gateway_state(presence_of) if presence_of else None
        will = None
        if presence_of and self.presence:
            # retained gateway presence: dashboards and ops alerting see a dead gateway as
            # "lost" without polling it
            will = Will(self.presence, _presence("lost", presence_of))
        self.client = make_client(mqtt_cfg.model_copy(update={"client_id": None}), client_id, manual_ack=True,
                                  will=will)
        inline = fast_publish(self.client, self._on_publish)
        #: how long light traffic gathers in the socket between reads (``pace_s`` 0.0: it does not)
        self.read_pace = buffer_reads(self.client, pace_s=read_pace_s, inline=inline,
                                      hold=None if max_queued is None else (lambda: q.qsize() >= max_queued))
        share_property_tables()
        self.acks = AckTracker(self.client.ack, puback_many(self.client))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self) -> None:
        m = self._mqtt
        if is_v5(m):
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = m.session_expiry_s
            # bound what the broker sends us unacknowledged: the rest waits, queued, at the broker
            props.ReceiveMaximum = self.receive_max
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s, clean_start=False, properties=props)
        else:
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        try:
            if self.presence and self.gateway_id and self.connected:
                info = self.client.publish(self.presence, _presence("offline", self.gateway_id), qos=1, retain=True)
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(2.0)
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.error("MQTT %s link: connect refused: %s", self.name, rc)
            return
        self.acks.new_connection()
        self.connected = True
        client.subscribe([(f, 1) for f in self.filters])
        bare = [f.split("/", 2)[2] for f in self.filters if f.startswith("$share/")]
        if bare:
            # a session that ran unshared before (one process, then --workers) would keep its
            # plain subscriptions and receive everything on top of its share
            client.unsubscribe(bare)
        if self.presence and self.gateway_id:
            client.publish(self.presence, _presence("ready", self.gateway_id), qos=1, retain=True)
        log.info("MQTT %s link connected (session present: %s)", self.name, getattr(flags, "session_present", "?"))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any = None) -> None:
        bad = [str(r) for r in rcs if getattr(r, "is_failure", False)]
        if bad:
            log.error("MQTT %s link: subscription refused by the broker (check its ACL): %s", self.name, bad)
            return
        self.subscribed = True

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        self.connected = False
        self.subscribed = False
        if not self.closing:
            log.warning("MQTT %s link disconnected (%s); paho reconnects with backoff", self.name, rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        recv = time.time_ns()
        entry = self.acks.track(msg.mid, msg.qos) if msg.qos > 0 else None
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")  # broker should have refused it; rejected later
        self._queue(topic, bytes(msg.payload), entry, recv, bool(msg.retain))

    def _on_publish(self, topic: str, payload: bytes, mid: int, retain: bool) -> None:
        """:func:`fast_publish`'s delivery of a QoS 1 PUBLISH: what ``_on_message`` does."""
        recv = time.time_ns()
        self._queue(topic, payload, self.acks.track(mid, 1), recv, retain)

    def _queue(self, topic: str, payload: bytes, entry: AckEntry | None, recv: int, retain: bool) -> None:
        if topic.startswith(topics.GATEWAY_PREFIX):
            # gateways' own presence matches the uplink filter {site}/{device}/state: not device data
            self.acks.done([entry])
            return
        item: Item = (topic, payload, entry, recv, retain)
        self._on_receive()
        self.q.put(item)


#: how long the bulk worker lingers after the bulk link paced its reads: enough to take
#: everything one read delivered into one batch (a read of 50 messages queues them in < 1 ms)
GATHER_S = 0.002
#: the longest a paced read waits: paho's loop sends nothing (acks, pings) meanwhile
_PACE_MAX_S = 0.1


def bulk_read_pace_s(g: GatewayConfig) -> float:
    """How long the bulk link lets light traffic gather in the socket between reads: the
    telemetry linger (``batch_max_delay_ms``), up to 0.1 s.

    The bulk worker then lingers only for the rest of it (:func:`linger_after_pace_s`), so
    at light load one read makes one batch: one wake-up of the network thread and one of
    the bulk worker per linger instead of one per message (issue 16). Pacing the reads for
    part of the linger and lingering for all of it from receipt made batches smaller (6.8
    instead of 10.6 messages at 200 msg/s) and cost more than it saved.
    """
    return min(_PACE_MAX_S, g.batch_max_delay_ms / 1000.0)


def linger_after_pace_s(linger_s: float, pace_s: float) -> float:
    """What the bulk worker still lingers from receipt after a read the link paced by
    ``pace_s``: the rest of the linger, and :data:`GATHER_S` to take a whole read. A message
    waits at most the linger + 2 ms before its batch is formed."""
    if pace_s <= 0.0:
        return linger_s
    return min(linger_s, linger_s - pace_s + GATHER_S)


class Links:
    """The alert link and the bulk link of one gateway, started and stopped together."""

    def __init__(self, cfg: FallwatchConfig, alert_q: ItemQueue, bulk_q: ItemQueue,
                 on_receive: Callable[[], None]) -> None:
        g = cfg.gateway
        prefix = f"$share/{g.shared_group}/" if g.shared_group else ""
        base_id = cfg.mqtt.client_id or g.gateway_id
        self.bulk = Link(cfg.mqtt, "bulk", base_id, [prefix + f for f in BULK_FILTERS], bulk_q,
                         receive_max=min(65535, max(100, 20 * g.batch_max)), on_receive=on_receive,
                         presence_of=g.gateway_id, max_queued=max(100, 2 * g.batch_max),
                         read_pace_s=bulk_read_pace_s(g))
        # its own user too: with client ids bound to usernames (the generated broker config) that
        # is what keeps anyone else from taking over, wiping or kicking off the alert session
        self.alert = Link(cfg.mqtt.for_alert_link(), "alerts", f"{base_id}-alerts",
                          [prefix + f for f in ALERT_FILTERS], alert_q, receive_max=100, on_receive=on_receive)
        self.all = (self.alert, self.bulk)

    def start(self) -> None:
        for link in self.all:
            link.start()

    def stop(self) -> None:
        """Disconnect both (no new messages); a disconnect now is expected, not warned about."""
        for link in self.all:
            link.closing = True
        for link in self.all:
            link.stop()

    @property
    def connected(self) -> bool:
        return all(link.connected for link in self.all)

    @property
    def acked(self) -> int:
        return sum(link.acks.acked for link in self.all)

    def not_ready(self) -> str | None:
        """Why the links cannot take messages yet (None when both are connected and subscribed)."""
        for link in self.all:
            if not link.connected or not link.subscribed:
                return f"MQTT link {link.name!r} not connected/subscribed"
        return None

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish on the bulk link (dead letters); raises if paho refuses it outright."""
        self.bulk.client.publish(topic, payload, qos=qos)


def buffer_reads(client: mqtt.Client, chunk: int = 65_536, hold: Callable[[], bool] | None = None,
                 pace_s: float = 0.0, inline: Inline | None = None) -> ReadPace:
    """Read the socket in chunks instead of paho's three ``recv`` calls (and one ``select``)
    per message.

    paho reads a packet's first byte, then its length a byte at a time, then the rest, each
    a system call, and handles one packet per ``select``: in a drain that was ~18 % of the
    gateway's CPU (issue 16). Here ``recv`` is served from a buffer filled ``chunk`` bytes at
    a time, and ``loop_read`` goes on while the buffer holds bytes (so a packet never waits
    in it for a ``select`` that has nothing new to report). The byte stream paho sees is
    the same; the buffer belongs to one socket and is dropped with it (a reconnect starts
    clean). Falls back to paho's own reading if its internals are not as expected.

    ``hold()`` true means enough received messages wait to be processed: reading pauses
    (TCP pushes back, the broker keeps the rest queued, on disk with its persistence) and
    paho's loop goes on writing acks and keep-alives. A 50,000-message drain held ~40,000
    received messages in memory, ~25 MB (Mosquitto with ``max_inflight_messages 0`` sent
    more than the link's receive maximum, issue 16).

    ``pace_s`` > 0: a read goes on while the socket has more (up to :data:`_DRAIN_MAX`); if it
    then found the socket empty after fewer than 64 KB and :data:`_PACE_BELOW_MSGS` packets
    (light load), the next read waits until ``pace_s`` after it, so that what arrives
    meanwhile is read in one go. At 200 msg/s each message was its own wake-up of this
    thread (about 95 µs of CPU a message, issue 16); under load, or from a broker that sends
    few messages before it waits for acks, nothing waits. For the bulk link only, whose
    messages linger anyway (:func:`bulk_read_pace_s`); fall alerts have their own link,
    which never waits. Returns the :class:`ReadPace` (``pace_s`` 0.0 when paho's reading is
    left as it is).

    ``inline`` (:func:`fast_publish`'s parser): each whole PUBLISH in the buffer goes to it
    straight from the buffer, between packets paho reads (nothing half-read in paho). paho
    reads a packet a byte at a time through four ``recv`` calls and as many dict updates:
    three quarters of the network thread at 200 msg/s (issue 16). Anything else — another
    packet type, a PUBLISH ``inline`` declines, one not wholly in the buffer yet, a
    remaining length over four bytes — is left where it is for paho's own reading, which
    handles (or refuses) it as before.
    """
    recv0: Callable[[int], bytes] | None = getattr(client, "_sock_recv", None)
    read0: Callable[[], mqtt.MQTTErrorCode] | None = getattr(client, "loop_read", None)
    if recv0 is None or read0 is None or not hasattr(client, "_sock"):
        return ReadPace(0.0)
    buf = _ReadBuffer()
    pace = ReadPace(pace_s)

    def recv(bufsize: int) -> bytes:
        sock = client._sock
        if buf.sock is not sock:
            buf.sock, buf.data, buf.pos = sock, b"", 0
            pace.paced, pace.wait_until = False, 0.0  # a new connection: its first read waits for nothing
        if buf.pos >= len(buf.data):
            buf.data, buf.pos = recv0(chunk), 0  # raises BlockingIOError when there is nothing
            if not buf.data:
                return b""  # closed by the broker: paho handles it
        out = buf.data[buf.pos : buf.pos + bufsize]
        buf.pos += len(out)
        return out

    def loop_read(max_packets: int = 1) -> mqtt.MQTTErrorCode:
        if hold is not None and hold():
            # only checked here, with the buffer empty (it is always read to its end: bytes left
            # in it would not wake paho's select); the socket is readable, so select returns at once
            time.sleep(0.005)  # do not spin while held
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        if pace.pace_s > 0.0:
            left = pace.wait_until - time.monotonic()
            if left > 0.0:
                time.sleep(left)
        ok = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        rc = read0()
        got, packets, took, drained = len(buf.data), 1, 0, False
        take = inline if inline is not None and _no_topic_callbacks(client) else None
        while True:
            while rc == ok and client._sock is not None and buf.sock is client._sock and buf.pos < len(buf.data):
                if take is not None and client._in_packet["command"] == 0:
                    n = _take_publishes(buf, take)
                    if n:
                        took += n
                        continue
                rc = read0()
                packets += 1
            if (pace.pace_s <= 0.0 or rc != ok or client._sock is None or buf.sock is not client._sock
                    or got >= _DRAIN_MAX):
                break
            # the buffer is used up: is more already in the socket? A TLS socket hands out one
            # record (one packet, from Mosquitto) per recv, so a short read does not mean light load
            try:
                more = recv0(chunk)
            except BlockingIOError:
                drained = True
                break
            except OSError:
                more = b""  # reset, or a TLS error: paho's own read meets it again and handles it
            if not more:
                rc = read0()  # closed by the broker (or the error above): paho's reading handles it
                break
            buf.data, buf.pos = more, 0
            got += len(more)
        if took:
            with client._msgtime_mutex:
                client._last_bytes_received = _paho_time()  # as paho's reading does (keep-alive)
        if pace.pace_s > 0.0:
            pace.paced = drained and got < chunk and packets + took < _PACE_BELOW_MSGS
            pace.wait_until = time.monotonic() + pace.pace_s if pace.paced else 0.0
        return rc

    client._sock_recv = recv  # type: ignore[method-assign]
    client.loop_read = loop_read  # type: ignore[method-assign]
    return pace


#: a paced read reads on while the socket has more, up to this many bytes, before paho's loop
#: gets to write (acks, pings)
_DRAIN_MAX = 4 * 65_536
#: a read that brought this many packets or more is not light load: below the 20 QoS 1 messages
#: a stock Mosquitto (``max_inflight_messages``, and for MQTT 3.1.1 clients) sends a client
#: unacknowledged, so a broker that waits for acks never waits on the pace as well
_PACE_BELOW_MSGS = 16


class ReadPace:
    """A link's read pacing (:func:`buffer_reads`): shared with the bulk worker, which lingers
    only :data:`GATHER_S` after a paced read (the messages waited in the socket already) and
    the whole linger from receipt otherwise."""

    __slots__ = ("pace_s", "paced", "wait_until")

    def __init__(self, pace_s: float) -> None:
        self.pace_s = pace_s
        #: the last read was light load: the next one waits for ``pace_s`` after it
        self.paced = False
        self.wait_until = 0.0


_paho_time: Callable[[], float] = getattr(mqtt, "time_func", time.monotonic)

#: ``inline(command byte, packet)``: :func:`fast_publish`'s parser; True once it delivered the packet
Inline = Callable[[int, "bytes | bytearray"], bool]


def fast_publish(client: mqtt.Client, deliver: Callable[[str, bytes, int, bool], None]) -> Inline | None:
    """Hand a plain QoS 1 PUBLISH straight to ``deliver(topic, payload, mid, retain)``.

    For every PUBLISH paho builds an ``MQTTMessage`` (with an ``MQTTMessageInfo`` and its
    ``Condition``), a ``Properties`` object, unpacks the fields through format strings built
    per packet, formats a debug log call and looks the topic up in its per-topic callbacks
    under a lock, before calling ``on_message``. A QoS 1 PUBLISH with a UTF-8 topic and at
    most the properties hubs send (content type, payload format: the gateway reads neither)
    is parsed here into the same topic, payload, packet id and retain flag and delivered;
    acknowledging stays the caller's (manual acks, as before). Anything else (QoS 0 or 2,
    any other property, a property twice, a topic that is not UTF-8, a short packet) goes
    through paho's own handler unchanged — which also raises for a malformed packet, as
    before — and so does everything if paho's internals are not as expected or the client
    has per-topic callbacks. Only for a client in manual-ack mode. The network thread's CPU
    at 200 msg/s went from ~185 to ~100 µs a message (issue 16, fifth pass).

    Returns the parser (None if paho is left as it is), which :func:`buffer_reads` also
    uses on whole packets in its buffer, before paho reads them at all.
    """
    handle0: Callable[[], mqtt.MQTTErrorCode] | None = getattr(client, "_handle_publish", None)
    if handle0 is None or not getattr(client, "_manual_ack", False) or not hasattr(client, "_in_packet"):
        return None
    v5 = getattr(client, "_protocol", None) == mqtt.MQTTv5
    ok = mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def inline(header: int, packet: bytes | bytearray) -> bool:
        """Deliver ``packet`` (a PUBLISH's variable header and payload) if it is a plain QoS 1
        one; False (nothing done) for anything paho must see."""
        if header & 0x06 != 0x02:  # QoS 1 only
            return False
        n = len(packet)
        if n < 4:
            return False
        end = 2 + ((packet[0] << 8) | packet[1])
        body = end + 2
        if v5:
            body = _skip_plain_properties(packet, body)
            if body < 0:
                return False
        if n < body or end == 2:
            return False
        try:
            topic = packet[2:end].decode("utf-8")
        except UnicodeDecodeError:
            return False
        deliver(topic, bytes(packet[body:]), (packet[end] << 8) | packet[end + 1], bool(header & 0x01))
        return True

    def handle() -> mqtt.MQTTErrorCode:
        if not _no_topic_callbacks(client) or not inline(client._in_packet["command"], client._in_packet["packet"]):
            return handle0()
        return ok

    client._handle_publish = handle  # type: ignore[method-assign]
    return inline


def _skip_plain_properties(packet: bytes | bytearray, pos: int) -> int:
    """Where the payload starts after a PUBLISH's MQTT 5 properties at ``pos``, if they are
    only content type (0x03) and payload format (0x01), well formed; -1 for anything else."""
    n = len(packet)
    if pos >= n or packet[pos] >= 0x80:  # a properties length of more than one byte: paho's
        return -1
    end = pos + 1 + packet[pos]
    pos += 1
    if end > n:
        return -1
    seen = 0
    while pos < end:
        ident = packet[pos]
        if ident > 3 or seen & (1 << ident):  # another property, or one twice (paho refuses that)
            return -1
        seen |= 1 << ident
        if ident == 0x03 and pos + 3 <= end:
            nxt = pos + 3 + ((packet[pos + 1] << 8) | packet[pos + 2])
            if nxt > end:
                return -1
            try:
                text = packet[pos + 3 : nxt].decode("utf-8")
            except UnicodeDecodeError:
                return -1
            if "\x00" in text or "\ufeff" in text:  # paho's readUTF refuses these (MQTT-1.5.4-2/3)
                return -1
            pos = nxt
        elif ident == 0x01 and pos + 2 <= end and packet[pos + 1] in (0, 1):
            pos += 2
        else:
            return -1
    return end if pos == end else -1


def _no_topic_callbacks(client: mqtt.Client) -> bool:
    """No ``message_callback_add`` callbacks (paho's matcher tree is empty; False if unknown)."""
    root = getattr(getattr(client, "_on_message_filtered", None), "_root", None)
    children = getattr(root, "_children", None)
    return isinstance(children, dict) and not children and getattr(root, "_content", None) is None


def puback_many(client: mqtt.Client) -> Callable[[list[int]], object] | None:
    """Acknowledge several QoS 1 messages with one queued write: their PUBACKs (the same 4
    bytes paho's ``ack`` builds each, in the given order) concatenated into one out-packet.

    paho queues each ``ack`` as its own packet: one wake-up of its network thread through its
    socket pair and one ``send`` per message, ~12 of each per batch at 200 msg/s (issue 16).
    The broker reads a byte stream, so back-to-back PUBACKs in one write are the same
    PUBACKs; paho writes the packet with its usual partial-write handling. None (paho's own
    ``ack`` for each) if the client is not in manual-ack mode or paho's internals differ.
    """
    queue_packet = getattr(client, "_packet_queue", None)
    if queue_packet is None or not getattr(client, "_manual_ack", False):
        return None
    from paho.mqtt.client import PUBACK

    pack = struct.Struct("!BBH").pack

    def send(mids: list[int]) -> object:
        return queue_packet(PUBACK, b"".join([pack(PUBACK, 2, m) for m in mids]), mids[-1], 1)

    return send


def _take_publishes(buf: _ReadBuffer, inline: Inline) -> int:
    """Hand the whole PUBLISH packets at the front of ``buf`` to ``inline``; how many it took
    (it stops at the first packet that is something else, declined, or not wholly there)."""
    data, pos, n, took = buf.data, buf.pos, len(buf.data), 0
    while pos + 2 <= n:
        header = data[pos]
        if header & 0xF0 != 0x30:  # not a PUBLISH
            break
        length, mult, i = 0, 1, pos + 1
        while i < n and i <= pos + 4:
            b = data[i]
            length += (b & 127) * mult
            mult <<= 7
            i += 1
            if b < 128:
                break
        else:
            break  # the length is not wholly there, or over four bytes: paho's (it refuses that)
        end = i + length
        if end > n or not inline(header, data[i:end]):
            break
        pos, took = end, took + 1
        buf.pos = pos  # each packet once, should a later delivery raise
    return took


class _ReadBuffer:
    __slots__ = ("data", "pos", "sock")

    def __init__(self) -> None:
        self.sock: object = None
        self.data = b""
        self.pos = 0


#: properties paho accumulates into lists (user property, subscription identifier)
_MULTIPLE = frozenset({11, 38})
#: properties whose values paho range-checks on assignment
_RANGE_CHECKED = frozenset({"ReceiveMaximum", "TopicAlias", "TopicAliasMaximum", "MaximumPacketSize",
                            "SubscriptionIdentifier", "RequestResponseInformation", "RequestProblemInformation",
                            "PayloadFormatIndicator"})
_UTF8_TYPE = Properties(PacketTypes.PUBLISH).types.index("UTF-8 Encoded String")


class SharedTablesProperties(Properties):
    """paho's MQTT 5 ``Properties`` with its lookup tables built once instead of per packet.

    paho builds a ``Properties`` for every PUBLISH it receives: two 27-entry dicts and a list
    per instance (through its checking ``__setattr__``), a ``clear()`` that probes all 27
    names on the fresh object, and name ↔ identifier lookups by linear search for each
    property read. That was about 40 % of the gateway's network thread (issue 16, profile at
    200 msg/s). The tables are never changed after construction, so they are shared here,
    ``clear`` skips an object that holds no property, and the lookups use a dict; parsing,
    validation and the resulting attributes are paho's own.
    """

    _shared: tuple[list[str], dict[str, int], dict[int, Any], dict[str, int], dict[int, str]] | None = None

    def __init__(self, packetType: int) -> None:
        shared = SharedTablesProperties._shared
        if shared is None:
            base = Properties(packetType)
            by_compressed = {n.replace(" ", ""): i for n, i in base.names.items()}
            by_ident: dict[int, str] = {}
            for n, i in base.names.items():
                by_ident[i] = n  # paho's getNameFromIdent returns the last name with the identifier
            shared = (base.types, base.names, base.properties, by_compressed, by_ident)
            SharedTablesProperties._shared = shared
        object.__setattr__(self, "packetType", packetType)
        object.__setattr__(self, "types", shared[0])
        object.__setattr__(self, "names", shared[1])
        object.__setattr__(self, "properties", shared[2])

    def __setattr__(self, name: str, value: Any) -> None:
        # paho's check rebuilds a list of the 27 names per assignment; the same check by dict
        # here for the plain properties, paho's own for the ones it range-checks or accumulates
        shared = SharedTablesProperties._shared
        compressed = name.replace(" ", "")
        ident = shared[3].get(compressed) if shared is not None else None
        if (ident is None or ident in _MULTIPLE or compressed in _RANGE_CHECKED
                or self.packetType not in shared[2][ident][1]):  # type: ignore[index]
            super().__setattr__(name, value)  # raises as paho does for what it refuses
        else:
            object.__setattr__(self, compressed, value)

    def readProperty(self, buffer: Any, type: int, propslen: int) -> Any:
        if type == _UTF8_TYPE:  # the common one (content type, response topic); paho looks it up per call
            return readUTF(buffer, propslen)
        return super().readProperty(buffer, type, propslen)

    def clear(self) -> None:
        if len(self.__dict__) > 4:  # any attribute beyond the four tables is a property
            super().clear()

    def getIdentFromName(self, compressedName: str) -> int:
        assert SharedTablesProperties._shared is not None
        return SharedTablesProperties._shared[3].get(compressedName, -1)

    def getNameFromIdent(self, identifier: int) -> str | None:
        assert SharedTablesProperties._shared is not None
        return SharedTablesProperties._shared[4].get(identifier)


def share_property_tables() -> None:
    """Make paho decode received packets' properties with :class:`SharedTablesProperties`
    (process-wide: paho's decoder looks ``Properties`` up in its ``_packet`` module; the
    objects are paho ``Properties`` all the same). Left alone if paho's layout changed."""
    from paho.mqtt import _packet

    if getattr(_packet, "Properties", None) is Properties:
        _packet.Properties = SharedTablesProperties  # type: ignore[misc]
