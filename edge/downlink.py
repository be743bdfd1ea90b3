"""The downlink stage: what the hub receives, and its replies.

* ``.../config`` (retained): remote config, validated with the same limits as the file,
  applied between two ``feed()`` calls; answered on ``cmd/res/config``;
* ``.../ota/model`` (retained): a signed model update (:mod:`fallwatch.edge.ota`),
  verified, self-tested and swapped off the network thread; answered on ``ota/status``;
* ``.../cmd/req/{name}``: commands (:data:`fallwatch.protocol.contract.COMMANDS`), answered
  on ``cmd/res/{name}`` with the request's ``transaction``:

  - ``ping``: ``ok``, detail ``pong``, the running model version;
  - ``self-test`` (topic levels allow no underscore): the model's golden self-test (the
    one an OTA update must pass) plus a health heartbeat sent right away; ``ok`` only if
    the model passes and every sensor is ok, else ``error`` with what failed.

  Unknown commands are answered with status ``error`` (``commands_unknown``); malformed
  requests are counted (``commands_malformed``) and answered ``rejected`` when their
  transaction id can be read. A command name that is not a valid topic level cannot be
  answered and is only counted.

Everything runs on the MQTT network thread or a short-lived worker thread; state the
feed thread also touches is changed under the agent's lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt

from fallwatch.config import EdgeConfig, FallwatchConfig
from fallwatch.edge import ota
from fallwatch.edge.counters import Counters
from fallwatch.edge.messages import Messages
from fallwatch.edge.outbox import Pending
from fallwatch.edge.sensors import Scorer
from fallwatch.edge.telemetry import Telemetry
from fallwatch.edge.uplink import Uplink
from fallwatch.protocol import contract as C
from fallwatch.protocol import topics
from fallwatch.protocol.ids import is_id

log = logging.getLogger("fallwatch.edge.agent")

#: A command: the decoded request in, the reply body out.
CommandHandler = Callable[[C.CommandRequest], C.StatusData]


class Downlink:
    """Dispatches one hub's downlinks; :meth:`on_message` is the publisher's message callback."""

    def __init__(
        self,
        cfg: FallwatchConfig,
        messages: Messages,
        counters: Counters,
        *,
        uplink: Uplink,
        lock: threading.RLock,
        now_s: Callable[[], float],
        models: ota.ModelStore,
        model: Callable[[], Scorer],
        apply_settings: Callable[[EdgeConfig], None],
        swap_model: Callable[[Scorer], None],
        birth: Callable[[], Pending],
    ) -> None:
        """``now_s`` = hub time of the last feed (replies are stamped with it); ``apply_settings``
        and ``swap_model`` are called under ``lock``; ``birth`` builds the 'ready' state."""
        e = cfg.edge
        self.cfg = cfg
        self.messages = messages
        self.count = counters.count
        self.uplink = uplink
        self.lock = lock
        self.now_s = now_s
        self.models = models
        self.model = model
        self.apply_settings = apply_settings
        self.swap_model = swap_model
        self.birth = birth
        self.t_config = topics.config(e.site_id, e.device_id)
        self.t_ota = topics.ota_model(e.site_id, e.device_id)
        self.filters = topics.downlink_filters(e.site_id, e.device_id)
        self.commands: dict[str, CommandHandler] = {}

    def add_command(self, name: str, handler: CommandHandler) -> None:
        self.commands[topics.check_level(name, "command")] = handler

    def subscribe(self, client: mqtt.Client) -> None:
        """Subscribe to this hub's downlinks (on every connect, before the birth message)."""
        for f in self.filters:
            client.subscribe(f, qos=1)

    # ------------------------------------------------------------------ dispatch

    def on_message(self, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        if msg.topic == self.t_config:
            self.apply_remote_config(payload)
            return
        if msg.topic == self.t_ota:
            if payload:
                # verify/load/self-test off the network thread: PUBACKs keep flowing meanwhile
                threading.Thread(target=self.apply_model_update, args=(payload,),
                                 name="edge-model-update", daemon=True).start()
            return
        try:
            parsed = topics.parse(msg.topic)
        except topics.TopicError:
            parsed = None
        if parsed is not None and parsed.kind == "cmd/req" and parsed.sub is not None:
            self.command(parsed.sub, payload)
        else:
            self.count("downlinks_unknown")

    # ------------------------------------------------------------------ commands

    def command(self, name: str, payload: bytes) -> None:
        """Answer one command request (on the calling thread; ``self-test`` on a worker)."""
        handler = self.commands.get(name)
        if handler is None:
            self.count("commands_unknown")
            known = ", ".join(sorted(self.commands))
            self._answer(name, C.StatusData(status="error", transaction=C.transaction_of(payload) or "",
                                            detail=C.safe_text(f"unknown command {name[:40]!r}; known: {known}", 200)))
            return
        try:
            req = C.decode_command(payload)
        except C.ContractError as exc:
            self.count("commands_malformed")
            tx = C.transaction_of(payload)
            log.warning("malformed %s request: %s", name, exc)
            if tx is not None:
                self._answer(name, C.StatusData(status="rejected", transaction=tx,
                                                detail=C.safe_text(f"{exc.reason}: {exc.detail}", 200)))
            return
        if name == "self-test":  # runs the model: keep the network thread free
            threading.Thread(target=self._run, args=(name, handler, req), name="edge-self-test",
                             daemon=True).start()
        else:
            self._run(name, handler, req)

    def _run(self, name: str, handler: CommandHandler, req: C.CommandRequest) -> None:
        try:
            reply = handler(req)
        except Exception as exc:  # a failing command is answered, never silent
            log.exception("command %s failed", name)
            reply = C.StatusData(status="error", transaction=req.transaction, detail=C.safe_text(f"failed: {exc}", 200))
        self.count(f"commands_{name}")
        self._answer(name, reply)

    def _answer(self, name: str, data: C.StatusData) -> None:
        if not is_id(name):
            log.warning("command name %r is not a topic level: cannot answer", name[:80])
            return
        self.uplink.send([self.messages.cmd_res(name, data, self.now_s())])

    def ping(self, req: C.CommandRequest) -> C.StatusData:
        return C.StatusData(status="ok", transaction=req.transaction, detail="pong",
                            version=self.model().version[:40])

    # ------------------------------------------------------------------ remote config

    def apply_remote_config(self, payload: bytes) -> None:
        name = "config"
        try:
            desired = C.decode_remote_config(payload)
            merged = self.cfg.edge.model_dump() | desired.settings()
            if desired.wearers is not None:  # reassignments from the registry (only of known wearables)
                known = {w["id"] for w in merged["wearables"]}
                if unknown := sorted(set(desired.wearers) - known):
                    raise ValueError(f"wearers: unknown wearables {unknown} (new sensors come with a new bundle)")
                merged["wearables"] = [w | ({"resident_id": desired.wearers[w["id"]]} if w["id"] in desired.wearers
                                            else {}) for w in merged["wearables"]]
            checked = type(self.cfg.edge).model_validate(merged)  # same limits as the file
        except C.ContractError as exc:
            detail = exc.detail
        except ValueError as exc:  # pydantic's ValidationError
            detail = str(exc)
        else:
            with self.lock:
                self.apply_settings(checked)
            self.count("config_applied")
            version = str(desired.version)
            self._answer(name, C.StatusData(status="ok", version=version[:40], transaction=version[:80]))
            return
        self.count("config_rejected")
        self._answer(name, C.StatusData(status="rejected", detail=C.safe_text(detail, 200)))

    # ------------------------------------------------------------------ model updates

    def apply_model_update(self, blob: bytes) -> bool:
        """Verify (ed25519), load, self-test and swap a new fall model; keep the old one on any failure."""
        try:
            new_model, manifest = self.models.install(blob)
        except ota.UpdateError as exc:
            self.count(f"model_update_{exc.status}")
            log.error("model update refused: %s", exc)
            self._ota_status(C.StatusData(status=exc.status, detail=C.safe_text(str(exc), 200),  # type: ignore[arg-type]  # UpdateError.status is "rejected" | "rolled_back"
                                          version=exc.version[:40]))
            return False
        with self.lock:  # swap between two feed() calls: no window is scored half by each model
            self.swap_model(new_model)
        self.count("model_update_installed")
        self._ota_status(C.StatusData(status="installed", version=manifest.version), birth=True)
        return True

    def _ota_status(self, data: C.StatusData, birth: bool = False) -> None:
        if not self.uplink.is_open:  # not started (an agent used only to install): nobody to tell
            return
        items = [self.messages.ota_status(data, self.now_s())]
        if birth:
            items.append(self.birth())
        self.uplink.send(items)


def self_test(model: Scorer, telemetry: Telemetry, now_s: float, transaction: str) -> C.StatusData:
    """The ``self-test`` command: the model's golden self-test and a health heartbeat now.

    Call with the agent's lock held (it reads the sensors' state and sends a heartbeat).
    """
    why = ota.self_test(model)
    health = telemetry.health(now_s)
    bad = [f"{sid} {h.status}" for sid, h in health.sensors.items() if h.status != "ok"]
    ok_n = len(health.sensors) - len(bad)
    parts = [f"model {model.tag}: " + (f"self-test FAILED: {why}" if why else "golden self-test passed"),
             f"sensors: {ok_n} ok" + (f", {len(bad)} not ok: {', '.join(bad)}" if bad else "")]
    return C.StatusData(status="ok" if why is None and not bad else "error", transaction=transaction,
                        detail=C.safe_text("; ".join(parts), 200), version=model.version[:40])
