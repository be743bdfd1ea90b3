"""Room-sensor fusion: what the flat's motion, bed, chair and door sensors add to a fall.

The wearable says *something hit hard and the body turned*; the room says whether life
went on afterwards. No motion anywhere after an impact makes a fall more likely to be
real and serious; motion in the room afterwards (the resident got up, or someone came)
makes it a little less urgent. The bathroom is where falls are most often unwitnessed,
so a fall there says so.

Without a wearable the room alone raises *concerns* (not fall alerts): a bed exit at
night with no return to bed, and prolonged inactivity while the flat should be active.
They are published as telemetry of the sensor that noticed them (documented in
docs/edge.md), not as falls, so they never inflate the fall count.

Times are the hub clock (seconds), like everything else in the agent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fallwatch.models.detector import FallDecision
from fallwatch.protocol import contract as C
from fallwatch.protocol.frames import RoomEvent

if TYPE_CHECKING:
    from fallwatch.edge.sensors import RoomSensor, Sensors, Wearable


@dataclass(slots=True)
class FusionSettings:
    #: motion earlier than this after the impact is the fall itself / the wearer's own
    #: arms, not someone moving around
    quiet_after_s: float = 5.0
    night_start_h: int = 22
    night_end_h: int = 7
    bed_return_s: float = 30 * 60.0
    inactivity_s: float = 4 * 3600.0


@dataclass(slots=True)
class Concern:
    sensor_id: str
    room: str
    code: str  # "bed_exit_no_return" | "prolonged_inactivity"
    since_t_s: float
    duration_s: float


@dataclass
class RoomState:
    """Everything the hub knows about its rooms, updated per room event."""

    settings: FusionSettings = field(default_factory=FusionSettings)
    start_epoch_ms: int = 0

    def __post_init__(self) -> None:
        self.motion: dict[str, float] = {}  # room -> last motion time
        self.motion_log: list[tuple[float, str]] = []  # (t, room), trimmed to the last hour
        self.bed_occupied: dict[str, bool] = {}  # bed and chair sensors
        self.occupied_t: dict[str, float] = {}  # bed/chair sensor -> since when occupied
        self.bed_exit_t: dict[str, float] = {}  # bed sensor -> time it was left (at night)
        self.sensor_room: dict[str, str] = {}
        self.last_activity_t: float | None = None
        self._raised: set[tuple[str, str, float]] = set()

    def update(self, ev: RoomEvent, t_s: float) -> None:
        self.sensor_room[ev.sensor_id] = ev.room
        heartbeat = bool(ev.state.get("heartbeat", False))
        if ev.kind in ("pir", "bathroom") and ev.value and not heartbeat:
            self.motion[ev.room] = t_s
            self.motion_log.append((t_s, ev.room))
            if len(self.motion_log) > 4096:
                self.motion_log = [m for m in self.motion_log if m[0] > t_s - 3600.0]
            self.last_activity_t = t_s
        elif ev.kind in ("bed", "chair"):
            was = self.bed_occupied.get(ev.sensor_id)
            now = ev.value
            self.bed_occupied[ev.sensor_id] = now
            if now and not was:
                self.occupied_t[ev.sensor_id] = t_s
            elif not now:
                self.occupied_t.pop(ev.sensor_id, None)
            if ev.kind == "bed" and was and not now and self.is_night(t_s):
                self.bed_exit_t[ev.sensor_id] = t_s
            if now:
                self.bed_exit_t.pop(ev.sensor_id, None)
            if was is not None and was != now:
                self.last_activity_t = t_s
        elif ev.kind == "door" and not heartbeat:
            self.last_activity_t = t_s

    def occupied_since(self) -> float | None:
        """Since when a bed or chair here has been occupied (the latest), None if none is."""
        return max(self.occupied_t.values(), default=None)

    def is_night(self, t_s: float) -> bool:
        hour = time.localtime((self.start_epoch_ms / 1000.0) + t_s).tm_hour
        s = self.settings
        return hour >= s.night_start_h or hour < s.night_end_h

    @property
    def has_motion_sensors(self) -> bool:
        return bool(self.motion) or any(r for r in self.sensor_room.values())

    def motion_between(self, a_s: float, b_s: float) -> list[str]:
        """Rooms with motion in (a, b]."""
        return sorted({room for t, room in self.motion_log if a_s < t <= b_s})

    def last_motion_before(self, t_s: float) -> tuple[float, str] | None:
        """(time, room) of the last motion at or before ``t_s``."""
        for t, room in reversed(self.motion_log):
            if t <= t_s:
                return t, room
        return None

    def room_at(self, t_s: float) -> str | None:
        """The room with the last motion at or before ``t_s`` (where the resident probably is)."""
        last = self.last_motion_before(t_s)
        return last[1] if last else None

    def concerns(self, now_s: float) -> list[Concern]:
        """Room-only concerns that became due; each is raised once."""
        out: list[Concern] = []
        s = self.settings
        for sensor, t_exit in list(self.bed_exit_t.items()):
            if now_s - t_exit >= s.bed_return_s:
                key = (sensor, "bed_exit_no_return", t_exit)
                if key not in self._raised:
                    self._raised.add(key)
                    out.append(
                        Concern(
                            sensor,
                            self.sensor_room.get(sensor, "bedroom"),
                            "bed_exit_no_return",
                            t_exit,
                            now_s - t_exit,
                        )
                    )
        if (
            self.last_activity_t is not None
            and now_s - self.last_activity_t >= s.inactivity_s
            and not self.is_night(now_s)
        ):
            key = ("room", "prolonged_inactivity", self.last_activity_t)
            if key not in self._raised:
                self._raised.add(key)
                sensor = next(iter(self.sensor_room), "room")
                out.append(
                    Concern(
                        sensor,
                        self.sensor_room.get(sensor, "room"),
                        "prolonged_inactivity",
                        self.last_activity_t,
                        now_s - self.last_activity_t,
                    )
                )
        return out


@dataclass(frozen=True, slots=True)
class WearerRooms:
    """:class:`fallwatch.models.no_recovery.RoomView` of one wearer's rooms."""

    state: RoomState | None
    sensed: bool

    def occupied_since(self) -> float | None:
        return self.state.occupied_since() if self.state is not None else None


#: Motion a wearer's own sensors saw more than this before an impact says nothing about
#: where the fall happened (care-home units).
RECENT_S = 120.0


class RoomFusion:
    """The room-fusion stage: which rooms speak for a wearer, and what they add to a fall.

    A single-resident home: every room sensor is the wearer's (``rooms``). A care-home unit
    (several residents on one hub): each resident's own sensors (own room's PIR, bed, chair)
    feed a per-resident :class:`RoomState`, sensors of shared rooms (bathroom, dining, hall)
    feed ``shared``; the whole-hub ``rooms`` still sees everything (concerns).
    """

    def __init__(self, sensors: Sensors, start_epoch_ms: int, settings: FusionSettings | None = None) -> None:
        self.sensors = sensors
        self.settings = settings or FusionSettings()
        self.start_epoch_ms = start_epoch_ms
        self.rooms = RoomState(self.settings, start_epoch_ms)
        self.per_resident: dict[str, RoomState] = {}
        self.shared = RoomState(self.settings, start_epoch_ms)

    def update(self, ev: RoomEvent, t_s: float, rs: RoomSensor) -> None:
        """One room event from sensor ``rs`` (already counted and recorded by ingest); a bed the
        wearer was in going empty opens a no-recovery watch (a fall from bed, or getting up)."""
        was = self.rooms.bed_occupied.get(ev.sensor_id)
        self.rooms.update(ev, t_s)
        if not self.sensors.single_resident:
            if rs.resident_id:
                own = self.per_resident.get(rs.resident_id)
                if own is None:
                    own = self.per_resident[rs.resident_id] = RoomState(self.settings, self.start_epoch_ms)
                own.update(ev, t_s)
            else:
                self.shared.update(ev, t_s)
        if ev.kind == "bed":
            for w in self.sensors.wearables.values():
                if self.sensors.single_resident or (rs.resident_id and rs.resident_id == w.resident_id):
                    w.watch.rooms_sensed = True
                    if was and not ev.value:
                        w.watch.on_bed_exit(t_s, self.view(w))

    def rooms_for(self, resident_id: str | None) -> RoomState | None:
        """The room state that speaks for this wearer: the whole home when one resident lives
        there, else the wearer's own room sensors (None when there are none)."""
        if self.sensors.single_resident:
            return self.rooms
        return self.per_resident.get(resident_id or "")

    def has_bed_sensor(self, resident_id: str | None) -> bool:
        """Whether the wearer's rooms can tell lying in bed from lying on the floor."""
        if self.rooms_for(resident_id) is None:
            return False
        single = self.sensors.single_resident
        return any(rs.kind == "bed" for rs in self.sensors.room_sensors.values()
                   if single or rs.resident_id == resident_id)

    def view(self, w: Wearable) -> WearerRooms:
        """What the wearer's rooms say, for the no-recovery path and the fast path's stand-down."""
        return WearerRooms(self.rooms_for(w.resident_id), self.has_bed_sensor(w.resident_id))

    def attribute(self, w: Wearable, d: FallDecision, now_s: float) -> tuple[str | None, float, list[C.Reason]]:
        """(room, confidence, extra reasons) of a fall about to be reported: where it probably
        happened and what the rooms say about it since."""
        conf = float(d.confidence)
        reasons: list[C.Reason] = []
        rooms = self.rooms_for(w.resident_id)
        room = (rooms.room_at(d.impact_t_s) if rooms else None) or w.room
        recent = rooms is not None
        if not self.sensors.single_resident:
            # care-home unit: the resident's own room, unless a shared room (bathroom, dining)
            # saw motion after it - then probably there (another resident may also have been)
            own = rooms.last_motion_before(d.impact_t_s) if rooms else None
            shared = self.shared.last_motion_before(d.impact_t_s)
            if shared and (own is None or shared[0] > own[0]) and d.impact_t_s - shared[0] <= RECENT_S:
                room, recent = shared[1], False  # others move in shared rooms: no motion reasoning
            else:
                # own sensors speak only if they saw the resident shortly before the impact;
                # otherwise the room is unknown (no guess that would send staff to the wrong room)
                recent = own is not None and d.impact_t_s - own[0] <= RECENT_S
                room = own[1] if recent and own else None
        if rooms is not None and rooms.motion_log and recent:
            after = rooms.motion_between(d.impact_t_s + rooms.settings.quiet_after_s, now_s)
            quiet_s = now_s - d.impact_t_s
            if not after and quiet_s > rooms.settings.quiet_after_s:
                conf = 1.0 - (1.0 - conf) * 0.5
                reasons.append(C.Reason(code="no_room_motion",
                                        detail=f"no motion in any room for {quiet_s:.0f} s after the impact",
                                        weight=0.5))
            elif after:
                conf *= 0.9
                reasons.append(C.Reason(code="room_motion_after",
                                        detail=f"motion in {', '.join(after)[:150]} after the impact",
                                        weight=-0.1))
        if room and ("bath" in room or "wc" in room or "toilet" in room):
            reasons.append(C.Reason(code="bathroom", detail=f"last seen in {room}", weight=0.2))
        return room, conf, reasons

    def concerns(self, now_s: float) -> list[Concern]:
        return self.rooms.concerns(now_s)
