"""Per-wearable stream handling: from radio packets to a clean 50 Hz stream on the hub clock.

A BLE wearable's packets arrive late, twice, out of order or not at all; its clock
drifts and restarts at zero after a reboot; its rate may differ from the model's; and a
broken sensor can report a frozen or saturated value forever. The detector assumes none
of that, so this module absorbs it:

* **sequence**: a small reorder buffer releases packets in ``seq`` order; duplicates and
  packets older than what was released are dropped and counted; a gap is given up on
  after ``reorder_depth`` later packets (or ``reorder_wait_s``) and counted with the
  samples it lost. Short gaps are bridged by holding the last sample so the detector's
  sample index stays aligned with time.
* **clock**: hub time = device time + offset. ``rx - device_end`` is the offset plus a
  non-negative radio latency, so its lower envelope (a running minimum that is allowed
  to creep up by the worst crystal drift) tracks the offset and its skew; a jump of more
  than ``clock_jump_s`` (a reset or a reboot) re-anchors it and is counted.
* **rate**: other rates are anti-alias filtered (scipy FIR with carried state) and
  interpolated onto the model's grid, so chunks join seamlessly.
* **faults**: a sensor whose six channels do not change for ``stuck_s`` is *stuck*; one
  clipped for ``saturated_s`` is *saturated*. Samples of a faulty sensor are not passed
  on (a frozen 3 g reading must not look like an impact) and the health heartbeat says why.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from fallwatch.models import features as F
from fallwatch.protocol.frames import FLAG_CANCEL, FLAG_CLOCK_JUMP, ImuPacket


@dataclass(slots=True)
class StreamSettings:
    rate_hz: float = F.RATE_HZ
    reorder_depth: int = 3
    reorder_wait_s: float = 0.6
    bridge_gap_s: float = 2.0
    clock_jump_s: float = 2.0
    drift_ppm: float = 200.0
    stuck_s: float = 3.0
    saturated_frac: float = 0.99  # of the declared full scale
    saturated_s: float = 1.0


@dataclass(slots=True)
class Chunk:
    """Samples ready for the detector, at the model rate, on the hub clock."""

    t_s: np.ndarray
    acc_g: np.ndarray
    gyro_dps: np.ndarray


@dataclass(slots=True)
class StreamCounters:
    packets: int = 0
    duplicates: int = 0
    late: int = 0
    reordered: int = 0
    gaps: int = 0
    lost_samples: int = 0
    bridged_samples: int = 0
    clock_jumps: int = 0
    reboots: int = 0
    samples_in: int = 0
    samples_out: int = 0
    faulty_samples: int = 0


@dataclass(slots=True)
class _Held:
    pkt: ImuPacket
    rx_t_s: float


@dataclass
class WearableStream:
    """State of one wearable's stream; :meth:`push` one decoded ImuPacket at a time."""

    sensor_id: str
    settings: StreamSettings = field(default_factory=StreamSettings)
    counters: StreamCounters = field(default_factory=StreamCounters)

    def __post_init__(self) -> None:
        self._boot: int | None = None
        self._expect: int | None = None
        self._held: dict[int, _Held] = {}
        #: packets waiting in the reorder buffer (the same dict; read-only for callers, who
        #: check it once per feed and then call :meth:`flush`)
        self.held = self._held
        self._recent: deque[int] = deque(maxlen=64)  # recently released seqs (duplicate vs late)
        self._offset: float | None = None
        self._last_rx: float = 0.0
        self._last_dev_end: float | None = None  # device time just after the last released sample
        self._last_sample = np.zeros(6, dtype=np.float32)
        self._last_sample[2] = 1.0
        self._last_good = self._last_sample.copy()  # last sample not inside a fault
        # resampler state
        self._rate_in: float | None = None
        self._fir: np.ndarray | None = None
        self._zi: np.ndarray | None = None
        self._delay_s = 0.0
        self._prev_t: float | None = None  # hub time of the last input sample (after filter)
        self._prev_x: np.ndarray | None = None
        self._next_out: float | None = None  # hub time of the next output sample
        # fault detection
        self._same_run = 0
        self._sat_run = 0
        self.status = "ok"  # ok | stuck | saturated | rebooted
        self.fault_since_s: float | None = None  # hub time the current stuck/saturated run began
        self.fault_episodes: list[tuple[float, float]] = []  # recent (start, end) of past faults
        self.battery_pct: float | None = None
        self.rssi_dbm: float | None = None
        self.last_seen_s: float | None = None
        self.cancel_presses: list[float] = []  # hub times the wearer pressed cancel

    # ------------------------------------------------------------------ packet order

    def push(self, pkt: ImuPacket, rx_t_s: float) -> list[Chunk]:
        """Accept one decoded packet; return the chunks it (and held packets) release."""
        c = self.counters
        c.packets += 1
        self.last_seen_s = rx_t_s
        self.battery_pct = float(pkt.battery_pct)
        self.rssi_dbm = float(pkt.rssi_dbm)
        out: list[Chunk] = []
        if self._boot is not None and pkt.boot_count != self._boot:
            # the wearable rebooted: its seq and clock restarted; release what we hold first
            c.reboots += 1
            out += self._release_all()
            self._recent.clear()
            self._expect = None
            self._offset = None
            self._last_dev_end = None
            self._prev_t = self._next_out = None
            self.status = "rebooted"
        self._boot = pkt.boot_count
        if self._expect is None:
            self._expect = pkt.seq
        if pkt.seq < self._expect or pkt.seq in self._held:
            if pkt.seq in self._held or pkt.seq in self._recent:
                c.duplicates += 1
            else:
                c.late += 1
            return out
        if pkt.seq > self._expect:
            c.reordered += 1
        self._held[pkt.seq] = _Held(pkt, rx_t_s)
        out += self._drain(rx_t_s)
        return out

    def _drain(self, now_rx: float) -> list[Chunk]:
        out: list[Chunk] = []
        s = self.settings
        while self._held:
            assert self._expect is not None
            if self._expect in self._held:
                h = self._held.pop(self._expect)
                self._recent.append(self._expect)
                self._expect += 1
                out += self._accept(h.pkt, h.rx_t_s)
                continue
            oldest = min(self._held)
            waited = now_rx - self._held[oldest].rx_t_s
            if len(self._held) > s.reorder_depth or waited >= s.reorder_wait_s:
                self.counters.gaps += 1
                self._expect = oldest  # give up on the missing packets
                continue
            break
        return out

    def _release_all(self) -> list[Chunk]:
        out: list[Chunk] = []
        for seq in sorted(self._held):
            h = self._held.pop(seq)
            out += self._accept(h.pkt, h.rx_t_s)
        return out

    def flush(self, now_rx: float) -> list[Chunk]:
        """Time passes without packets: give up on gaps whose wait has expired."""
        if not self._held:
            return []
        return self._drain(now_rx)

    # ------------------------------------------------------------------ clock, faults, rate

    def _accept(self, pkt: ImuPacket, rx_t_s: float) -> list[Chunk]:
        s = self.settings
        c = self.counters
        acc = pkt.acc_g
        n = len(acc)
        if n == 0:
            return []
        rate = float(pkt.rate_hz)
        c.samples_in += n
        dev_t0 = pkt.t0_ms / 1000.0
        dev_end = dev_t0 + n / rate
        # clock: lower envelope of (rx - device end), allowed to creep by the drift bound
        sample = rx_t_s - dev_end
        jumped = bool(pkt.flags & FLAG_CLOCK_JUMP)
        if self._offset is None or jumped or abs(sample - self._offset) > s.clock_jump_s:
            if self._offset is not None:
                c.clock_jumps += 1
                self._prev_t = self._next_out = None  # re-anchor the output grid
                self._last_dev_end = None  # device time is not comparable across the jump
            self._offset = sample
        else:
            creep = (rx_t_s - self._last_rx) * s.drift_ppm * 1e-6
            self._offset = min(sample, self._offset + max(0.0, creep))
        self._last_rx = rx_t_s
        if pkt.flags & FLAG_CANCEL:
            self.cancel_presses.append(rx_t_s)
        x = np.concatenate([acc, pkt.gyro_dps], axis=1, dtype=np.float32)
        # gap bridging: samples missing between the previous packet and this one
        chunks: list[Chunk] = []
        if self._last_dev_end is not None:
            missing = round((dev_t0 - self._last_dev_end) * rate)
            if missing > 0:
                c.lost_samples += missing
                if missing <= s.bridge_gap_s * rate:
                    c.bridged_samples += missing
                    hold = np.repeat(self._last_sample[None, :], missing, axis=0)
                    t_hold = self._last_dev_end + np.arange(missing) / rate + self._offset
                    chunks += self._emit(t_hold, hold, rate, check_faults=False)
                else:
                    self._prev_t = self._next_out = None  # too long to bridge: restart the grid
        self._last_dev_end = dev_end
        t = dev_t0 + np.arange(n) / rate + self._offset
        chunks += self._emit(
            t, x, rate, check_faults=True, full_scale_g=float(getattr(pkt, "acc_range_g", 16.0))
        )
        self._last_sample = x[-1].copy()
        return chunks

    def _check_faults(self, t: np.ndarray, x: np.ndarray, rate: float, full_scale_g: float) -> np.ndarray | None:
        """Mask of samples usable by the detector (None: all of them); updates :attr:`status`."""
        s = self.settings
        same = np.empty(len(x), dtype=bool)
        same[0] = bool((x[0] == self._last_sample).all())
        same[1:] = (x[1:] == x[:-1]).all(axis=1)
        sat = (np.abs(x[:, :3]).max(axis=1)) >= s.saturated_frac * full_scale_g
        if not same.any() and not sat.any():  # the common case: a live, unclipped sensor
            self._same_run = self._sat_run = 0
            if self.status in ("stuck", "saturated"):
                self._fault_over(float(t[0]))
            return None
        runs_same = _run_lengths(same, self._same_run)
        runs_sat = _run_lengths(sat, self._sat_run)
        self._same_run = int(runs_same[-1])
        self._sat_run = int(runs_sat[-1])
        stuck = runs_same >= s.stuck_s * rate
        clipped = runs_sat >= s.saturated_s * rate
        if stuck[-1] or clipped[-1]:
            self.status = "saturated" if clipped[-1] else "stuck"
            if self.fault_since_s is None:
                run = runs_sat[-1] if clipped[-1] else runs_same[-1]
                self.fault_since_s = float(t[-1] - (run - 1) / rate)
        elif self.status in ("stuck", "saturated"):
            self._fault_over(float(t[0]))
        ok = ~(stuck | clipped)
        self.counters.faulty_samples += int((~ok).sum())
        return ok

    def _fault_over(self, t_s: float) -> None:
        self.status = "ok"
        if self.fault_since_s is not None:
            self.fault_episodes = [*self.fault_episodes[-9:], (self.fault_since_s, t_s)]
        self.fault_since_s = None

    def _emit(
        self, t: np.ndarray, x: np.ndarray, rate: float, *, check_faults: bool, full_scale_g: float = 16.0
    ) -> list[Chunk]:
        if check_faults:
            ok = self._check_faults(t, x, rate, full_scale_g)
            if ok is None:
                self._last_good = x[-1]
            elif not ok.all():
                # a faulty stretch is replaced by the last good value: it keeps the time grid
                # but can never look like an impact or a posture change
                x = x.copy()
                x[~ok] = self._last_good
            if ok is not None and ok.any():
                self._last_good = x[np.flatnonzero(ok)[-1]].copy()
        target = self.settings.rate_hz
        if abs(rate - target) < 1e-6:
            self._prev_t = float(t[-1])
            self._prev_x = x[-1]
            self.counters.samples_out += len(t)
            return [Chunk(t, x[:, :3], x[:, 3:])]
        return self._resample(t, x, rate, target)

    def _resample(self, t: np.ndarray, x: np.ndarray, rate: float, target: float) -> list[Chunk]:
        # imported here, not at module level: scipy.signal adds ~75 MB of RSS, which a hub
        # whose wearables all run at the model's rate should not pay
        from scipy import signal

        if self._rate_in != rate:
            self._rate_in = rate
            if rate > target:
                self._fir = signal.firwin(31, 0.9 * target / rate).astype(np.float64)
                self._delay_s = 15 / rate
            else:
                self._fir = None
                self._delay_s = 0.0
            self._zi = None
        xf = x.astype(np.float64)
        if self._fir is not None:
            if self._zi is None:
                self._zi = signal.lfilter_zi(self._fir, 1.0)[:, None] * xf[0][None, :]
            xf, self._zi = signal.lfilter(self._fir, 1.0, xf, axis=0, zi=self._zi)
        tt = t - self._delay_s
        if self._prev_t is not None and self._prev_x is not None:
            tt = np.concatenate([[self._prev_t], tt])
            xf = np.vstack([self._prev_x[None, :], xf])
        if self._next_out is None:
            self._next_out = float(tt[0])
        step = 1.0 / target
        k = int(np.floor((tt[-1] - self._next_out) / step + 1e-9)) + 1
        self._prev_t = float(tt[-1])
        self._prev_x = xf[-1].copy()
        if k <= 0:
            return []
        to = self._next_out + np.arange(k) * step
        self._next_out = float(to[-1] + step)
        y = np.empty((k, 6), dtype=np.float32)
        for ch in range(6):
            y[:, ch] = np.interp(to, tt, xf[:, ch])
        self.counters.samples_out += k
        return [Chunk(to, y[:, :3], y[:, 3:])]

    def faulty_between(self, a_s: float, b_s: float) -> bool:
        """Was the sensor stuck or saturated at any time in [a, b]? (a fall-like signal
        that turns into a frozen or clipped reading is a broken sensor, not a fall)"""
        if self.fault_since_s is not None and self.fault_since_s <= b_s:
            return True
        return any(s <= b_s and e >= a_s for s, e in self.fault_episodes)

    def take_cancel_presses(self) -> list[float]:
        presses, self.cancel_presses = self.cancel_presses, []
        return presses


def _run_lengths(mask: np.ndarray, carry: int) -> np.ndarray:
    """Length of the run of True ending at each position (0 where False), continuing ``carry``."""
    m = mask.astype(np.int64)
    idx = np.arange(len(m))
    last_false = np.maximum.accumulate(np.where(m == 0, idx, -1))
    runs = idx - last_false
    if carry:
        runs = np.where(last_false < 0, runs + carry, runs)
    return np.where(m == 1, runs, 0)
