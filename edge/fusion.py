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

from fallwatch.protocol.frames import RoomEvent


@dataclass(slots=True)
class FusionSettings:
    #: motion earlier than this after the impact is the fall itself / the wearer's own
    #: arms, not someone moving around
    quiet_after_s: float = 5.0
    night_start_h: int = 22
    night_end_h: int = 7
    bed_return_s: float = 30 * 60.0
    inactivity_s: float = 4 * 3600.0
    #: room confirmation of impacts the model was unsure about: model score at least
    #: ``soft_p``, lying and still, then ``confirm_s`` with no body movement after
    #: ``settle_s``, no room motion and nobody in bed or chair
    soft_p: float = 0.05
    confirm_s: float = 30.0
    settle_s: float = 3.0


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
        self.bed_occupied: dict[str, bool] = {}
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
            if ev.kind == "bed" and was and not now and self.is_night(t_s):
                self.bed_exit_t[ev.sensor_id] = t_s
            if now:
                self.bed_exit_t.pop(ev.sensor_id, None)
            if was is not None and was != now:
                self.last_activity_t = t_s
        elif ev.kind == "door" and not heartbeat:
            self.last_activity_t = t_s

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
