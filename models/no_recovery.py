"""The no-recovery path: a wearer who goes down and stays down is a fall, whatever the impact.

The fast path (:mod:`fallwatch.models.detector`) judges 4.5 s around an impact. It is good on
hard falls and weak on exactly the falls that matter in home care: slow collapses, falls from
sitting or from bed, slides, whose impact is soft or whose posture hardly changes. What they
share is what comes after: the person does not get up. This module watches for that, per
wearable, on the same 50 Hz stream (training, evaluation and the edge all run this class):

* **posture**: every 0.5 s block gives the gravity direction; its angle to the wearer's
  *upright* direction (the sensor frame's +z, refined by the gravity direction while walking)
  says upright (< ``upright_deg``) or down (lying or slumped);
* **events** that open a watch: an impact trigger from an upright posture (whatever the model
  scored), an untriggered drop from upright to down within ``drop_s`` (only where room sensors
  can tell a bed from the floor), or a bed the wearer was in going empty (room sensors);
* **watch**: down in most blocks from ``settle_s`` on, little movement, never upright for
  ``recover_s`` (getting up and walking), not in an occupied bed or chair — for
  ``no_recovery_s`` after the event — then one :class:`FallDecision` with its own reasons
  (``no_recovery``, ``lying_s``, and the event: ``impact`` / ``posture_drop`` / ``bed_exit``)
  and its own confidence.

It also answers two questions the fast path's cancel window asks (:meth:`NoRecoveryWatch.stand_down`):
did the wearer get up and walk since that impact, and was the wearer in an occupied bed or chair
all along (turning over in bed is not a fall)? A yes turns the alert into a logged ``cancelled``
one, never into nothing.

Room knowledge comes in through :class:`RoomView`; without room sensors (``sensed`` False) the
path still runs on impacts from upright, and bed-exit and untriggered events are off.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fallwatch.models import features as F
from fallwatch.models.detector import FallDecision

BLOCK = round(0.5 * F.RATE_HZ)  # samples per posture block
BLOCK_S = BLOCK / F.RATE_HZ
WALK_STD_G = 0.06  # |a| std of a 0.5 s block while walking (slow elderly gait included)
NO_DATA_GIVE_UP = 4.0  # a watch without samples this many times no_recovery_s is given up
UP = np.array([0.0, 0.0, 1.0], dtype=np.float32)  # the sensor frame's up (x forward, y left, z up)


@dataclass(frozen=True)
class NoRecoverySettings:
    """Deployed settings of the no-recovery path (``edge.no_recovery_s`` sets the time)."""

    enabled: bool = True
    #: time down after the event before the alert; with the decision's cancel window running
    #: from the event, the alert leaves the hub this long after it (aim: <= 60 s)
    no_recovery_s: float = 45.0
    #: below this angle to the upright direction the wearer is up (sitting upright included);
    #: at or above ``down_deg`` down (lying, or slumped); in between neither. The three angles
    #: are the pick of ``study-no-recovery``'s stated rule (max sensitivity + specificity on
    #: training subjects) over all subjects, also its pick in 4 of 6 outer folds (issue 12)
    upright_deg: float = 40.0
    down_deg: float = 50.0
    #: an impact opens a watch unless the wearer was lying before it (turning over, in bed);
    #: leaning forward to sit down or to get up still counts as upright here
    pre_max_deg: float = 60.0
    #: the first seconds after the event are the fall itself, not yet "staying down"
    settle_s: float = 1.5
    #: the wearer must be down within this long after the event (a fall ends on the floor at
    #: once; sitting down, then lying down on a sofa seconds later is not a fall)
    down_by_s: float = 5.0
    #: share of blocks after ``settle_s`` that must be down / may show movement
    min_down_frac: float = 0.8
    max_moving_frac: float = 0.5
    #: upright this long without a break = got up (recovered)
    recover_s: float = 3.0
    #: an untriggered drop: from upright to down within this long
    drop_s: float = 3.0
    #: a block moves if |a| varies this much (g) or the gravity direction turns this much (deg)
    move_std_g: float = 0.05
    move_deg: float = 6.0
    #: bed-exit events: the bed went empty this close before the wearer is seen down on the floor
    bed_exit_s: float = 10.0
    #: an impact opens a watch only if the fast model gave its window at least this P(fall)
    #: (0: every impact; bed exits and posture drops are never gated). Chosen by the nested rule
    #: of :func:`fallwatch.models.no_recovery_study.run_gate` (issue 12).
    min_fall_p: float = 0.0
    #: stand a fast-path alert down (``lying_before``: logged as cancelled, nobody called) when the
    #: wearer was lying before the impact (``pre_max_deg``, as for opening a watch) and is still down
    #: at the end of the cancel window, unless a bed exit explains it: turning over while lying.
    #: **Off by default**: its rule (issue 12, docs/models.md) failed, held out it lost 14 SisFall
    #: falls (combined path 99.78 -> 98.74 %) for 3 fewer false alarms (0.744 -> 0.465 per hour)
    stand_down_lying_before: bool = False


class RoomView(Protocol):
    """What the rooms say about one wearer (the edge's fusion, or the evaluation's simulation)."""

    @property
    def sensed(self) -> bool:
        """True if the wearer's rooms have a bed sensor (lying in bed can be told from the floor)."""
        ...

    def occupied_since(self) -> float | None:
        """Since when (hub s) a bed or chair of the wearer has been occupied; None if none is."""
        ...


class NoRooms:
    """No room sensors: the path runs on the wearable alone."""

    sensed = False

    def occupied_since(self) -> float | None:
        return None


@dataclass(slots=True)
class _Block:
    t: float  # time of the block's last sample
    tilt: float  # deg from upright
    moving: bool
    mag_std: float


@dataclass(slots=True)
class _Watch:
    kind: str  # "impact" | "posture_drop" | "bed_exit"
    t: float
    peak_g: float = 0.0
    probability: float = 0.0
    n: int = 0
    down: int = 0
    moving: int = 0
    up_run: float = 0.0
    early_down: int = 0
    early: int = 0
    max_tilt: float = 0.0


class NoRecoveryWatch:
    """One wearable's posture and the events being watched; feed it every clean chunk."""

    def __init__(self, settings: NoRecoverySettings | None = None) -> None:
        self.settings = settings or NoRecoverySettings()
        self._buf = np.zeros((BLOCK, 3), dtype=np.float32)
        self._n = 0
        self._prev_g: np.ndarray | None = None
        self.up = UP.copy()
        self._walk_run = 0
        self.blocks: deque[_Block] = deque(maxlen=int(40 / BLOCK_S))  # the last 40 s (cancel windows)
        self.watches: list[_Watch] = []
        self.recovered_t: list[float] = []  # times the wearer was seen getting up (after an event)
        self.bed_exits: deque[float] = deque(maxlen=8)  # times a bed of the wearer went empty
        self.counts = {"events": 0, "recovered": 0, "in_bed": 0, "not_down": 0, "moving": 0, "no_data": 0,
                       "decided": 0}
        #: the wearer's rooms have a bed sensor (set by whoever feeds room events): only then
        #: do untriggered drops open a watch (lying down on a bed must be told from the floor)
        self.rooms_sensed = False

    # ------------------------------------------------------------------ streaming input

    def feed(self, t_s: np.ndarray, acc_g: np.ndarray) -> None:
        """Samples at the model rate (hub clock): cut into 0.5 s posture blocks."""
        acc = np.asarray(acc_g, dtype=np.float32).reshape(-1, 3)
        k = 0
        while k < len(acc):
            take = min(BLOCK - self._n, len(acc) - k)
            self._buf[self._n:self._n + take] = acc[k:k + take]
            self._n += take
            k += take
            if self._n == BLOCK:
                self._n = 0
                self._block(float(t_s[k - 1]))

    def _block(self, t: float) -> None:
        s = self.settings
        a = self._buf
        mag = F.magnitude(a)
        g = a.mean(axis=0)
        gn = g / max(float(np.linalg.norm(g)), 1e-6)
        tilt = _deg(gn, self.up)
        turn = _deg(gn, self._prev_g) if self._prev_g is not None else 0.0
        self._prev_g = gn
        std = float(mag.std())
        moving = std >= s.move_std_g or turn >= s.move_deg
        # walking upright refines the upright direction (a belt clip is never quite vertical)
        if WALK_STD_G <= std <= 0.6 and tilt < 30.0:
            self._walk_run += 1
            if self._walk_run >= 4:
                up = 0.95 * self.up + 0.05 * gn
                self.up = (up / max(float(np.linalg.norm(up)), 1e-6)).astype(np.float32)
        else:
            self._walk_run = 0
        b = _Block(t, tilt, moving, std)
        self.blocks.append(b)
        self._untriggered(b)
        for w in self.watches:
            self._observe(w, b)

    def _observe(self, w: _Watch, b: _Block) -> None:
        s = self.settings
        dt = b.t - w.t
        if dt < s.settle_s:
            return
        down = b.tilt >= s.down_deg
        if dt <= s.down_by_s:
            w.early += 1
            w.early_down += down
        w.n += 1
        w.down += down
        w.moving += b.moving
        w.max_tilt = max(w.max_tilt, b.tilt)
        w.up_run = w.up_run + BLOCK_S if b.tilt < s.upright_deg else 0.0

    # ------------------------------------------------------------------ events

    def _lying_throughout(self, impact_t_s: float, now_s: float) -> str | None:
        """Why the impact was turning over while lying (see ``stand_down_lying_before``), or None."""
        s = self.settings
        if not s.stand_down_lying_before:
            return None
        if any(abs(t - impact_t_s) <= s.bed_exit_s for t in self.bed_exits):
            return None  # a bed went empty with it: a fall from bed, not turning over
        pre = self._pre_posture(impact_t_s)
        if pre is None or pre < s.pre_max_deg:
            return None
        after = [b.tilt for b in self.blocks if impact_t_s + s.settle_s < b.t <= now_s]
        if not after or min(after) < s.down_deg:
            return None  # sat or stood up since: not simply lying on
        return f"lying before the impact ({pre:.0f} deg from upright) and since"

    def _pre_posture(self, t: float) -> float | None:
        """Median tilt in [t - 3, t - 0.8] s (the posture before an event); None if unseen."""
        tilts = [b.tilt for b in self.blocks if t - 3.0 <= b.t <= t - 0.8]
        return float(np.median(tilts)) if tilts else None

    def on_trigger(self, impact_t_s: float, peak_g: float, probability: float) -> None:
        """An impact the detector triggered on (scored above or below its threshold)."""
        if not self.settings.enabled:
            return
        for w in self.watches:
            if w.kind != "impact" and abs(impact_t_s - w.t) <= self.settings.bed_exit_s and peak_g > w.peak_g:
                # the impact of a bed exit or a drop already watched: it dates the event better
                w.t, w.peak_g, w.probability = impact_t_s, peak_g, max(w.probability, probability)
                if w.kind == "posture_drop":
                    w.kind = "impact"  # a drop that ended in an impact (a collapse)
                w.n = w.down = w.moving = w.early = w.early_down = 0
                w.up_run = 0.0
                return
        pre = self._pre_posture(impact_t_s)
        if pre is None or pre >= self.settings.pre_max_deg:
            return  # lying before (turning over, or in bed): only the rooms can tell a fall from bed
        if probability < self.settings.min_fall_p:
            return  # nothing fall-like about the impact (sitting down heavily into a chair)
        self._open("impact", impact_t_s, peak_g, probability)

    def on_bed_exit(self, t_s: float, rooms: RoomView) -> None:
        """A bed of the wearer went from occupied to empty (room sensors)."""
        self.bed_exits.append(t_s)
        if self.settings.enabled and rooms.sensed:
            self._open("bed_exit", t_s)

    def _untriggered(self, b: _Block) -> None:
        s = self.settings
        if not s.enabled or b.tilt < s.down_deg or not self.rooms_sensed:
            return
        older = [x.tilt for x in self.blocks if b.t - s.drop_s - 2.0 <= x.t <= b.t - s.drop_s]
        if older and max(older) < s.upright_deg:
            self._open("posture_drop", b.t - s.drop_s / 2)

    def _open(self, kind: str, t: float, peak_g: float = 0.0, probability: float = 0.0) -> None:
        if any(abs(w.t - t) < self.settings.no_recovery_s for w in self.watches):
            return  # the same event seen twice (an impact inside a drop, a second bump): one watch
        self.watches.append(_Watch(kind, t, peak_g, probability))
        self.counts["events"] += 1

    # ------------------------------------------------------------------ decisions

    def poll(self, now_s: float, rooms: RoomView) -> list[FallDecision]:
        """Decide the watches whose time is over (or that ended early); returns the falls."""
        s = self.settings
        if not self.watches:
            return []
        occ = rooms.occupied_since()
        out: list[FallDecision] = []
        keep: list[_Watch] = []
        for w in self.watches:
            if w.up_run >= s.recover_s:
                self.counts["recovered"] += 1
                self.recovered_t.append(now_s)
                continue
            if occ is not None and occ >= w.t - 1.0 and now_s - w.t >= s.settle_s:
                self.counts["in_bed"] += 1  # got (back) into bed or a chair: not lying on the floor
                continue
            if w.early and now_s - w.t > s.down_by_s and w.early_down * 2 < w.early:
                self.counts["not_down"] += 1
                continue
            seen_s = (self.blocks[-1].t if self.blocks else -1e9) - w.t
            if now_s - w.t < s.no_recovery_s or seen_s < s.no_recovery_s - 1.0:
                # not over yet, or the wearable has not sent that long (a gap): decide on what the
                # wearer did, never on missing data; a wearable silent for good is reported stale
                # by the health heartbeat and its watch given up (counted)
                if now_s - w.t > NO_DATA_GIVE_UP * s.no_recovery_s:
                    self.counts["no_data"] += 1
                    continue
                keep.append(w)
                continue
            if w.n == 0 or w.down < s.min_down_frac * w.n:
                self.counts["not_down"] += 1
                continue
            if w.moving > s.max_moving_frac * w.n:
                self.counts["moving"] += 1
                continue
            if occ is not None:  # in a bed or chair that was occupied before the event
                self.counts["in_bed"] += 1
                continue
            self.counts["decided"] += 1
            out.append(self._decision(w, now_s, rooms))
        self.watches = keep
        return out

    def _decision(self, w: _Watch, now_s: float, rooms: RoomView) -> FallDecision:
        down_s = now_s - w.t
        moving = w.moving / max(w.n, 1)
        reasons: list[tuple[str, str, float]] = []
        conf = 0.6
        if w.kind == "impact":
            reasons.append(("impact", f"peak {w.peak_g:.1f} g, model p={w.probability:.2f}",
                            round(min(1.0, (w.peak_g - 1.0) / 4.0), 3)))
            conf += 0.1 * min(1.0, (w.peak_g - 1.0) / 2.0) + 0.1 * w.probability
        elif w.kind == "bed_exit":
            reasons.append(("fall_from_bed", "bed went empty, wearer lying on the floor since", 0.6))
            conf += 0.15
        else:
            reasons.append(("posture_drop", f"upright to {w.max_tilt:.0f} deg within "
                                            f"{self.settings.drop_s:.0f} s, no impact", 0.3))
        reasons += [
            ("no_recovery", f"down {down_s:.0f} s, moving {100 * moving:.0f} % of the time, no walking", 0.8),
            ("lying_s", f"{down_s:.0f}", round(min(1.0, down_s / 60.0), 3)),
        ]
        if rooms.sensed:
            reasons.append(("not_in_bed", "no bed or chair sensor occupied", 0.3))
            conf += 0.1
        conf -= 0.2 * max(0.0, moving - 0.2)
        return FallDecision(impact_t_s=w.t, decided_t_s=now_s, probability=w.probability,
                            confidence=float(np.clip(conf, 0.0, 0.99)), peak_g=w.peak_g, lying=True,
                            still=moving <= 0.2, reasons=reasons, path="no_recovery", lying_s=down_s)

    def stand_down(self, impact_t_s: float, now_s: float, rooms: RoomView) -> tuple[str, str] | None:
        """Why a fast-path alert for ``impact_t_s`` should be stood down (logged as ``cancelled``),
        or None: the wearer got up and stayed up since, or was in an occupied bed or chair from
        before the impact until now (turning over in bed)."""
        occ = rooms.occupied_since()
        if occ is not None and occ <= impact_t_s - 2.0:
            return "in_occupied_bed", f"bed or chair occupied since {impact_t_s - occ:.0f} s before the impact"
        s = self.settings
        lying = self._lying_throughout(impact_t_s, now_s)
        if lying is not None:
            return "lying_before", lying
        run = walked = 0.0
        for b in self.blocks:
            if b.t <= impact_t_s + s.settle_s or b.t > now_s:
                continue
            if b.tilt >= s.upright_deg:
                run = walked = 0.0
                continue
            run += BLOCK_S
            walked += BLOCK_S if b.mag_std >= WALK_STD_G else 0.0
            # up *and walking*: sitting up on the floor is upright too, and is no recovery
            if run >= s.recover_s and walked >= s.recover_s / 2:
                return "recovered", f"up and walking {b.t - impact_t_s:.0f} s after the impact"
        return None


def _deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(np.dot(a, b)) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-6)
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
