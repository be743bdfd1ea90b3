"""The frame log: what a hub's radios received, kept so it can be fed to an edge agent again.

Written by ``fallwatch sim run --out`` (every hub) and ``fallwatch sim record`` / ``fallwatch
edge record`` (one hub); read by
the edge's ``replay`` source and ``fallwatch sim inspect|export``.

Format ``fallwatch-frames/1``: JSON lines, one frame per line, in reception order::

    {"hub_id": "hub-1", "sensor_id": "wear-r01", "transport": "ble", "rx_t_s": 0.52, "payload_b64": "RlcB…"}

Text, so a log can be grepped, cut and concatenated, and a damaged line costs that line
only; the payload is the radio's bytes in base64, ``rx_t_s`` the hub clock (exact float).
The older binary ``FWLOG1`` logs of ``fallwatch sim run`` are still read.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import msgspec

from fallwatch.protocol.frames import SensorFrame

__all__ = ["FORMAT", "FrameLogError", "FrameLogReader", "FrameLogWriter", "read_frames", "write_frames"]

FORMAT = "fallwatch-frames/1"
TRANSPORTS = frozenset({"ble", "zigbee"})


class FrameLogError(ValueError):
    """A file that is not a frame log, or a damaged one (read with ``strict=True``)."""


class _Line(msgspec.Struct, forbid_unknown_fields=True):
    hub_id: str
    sensor_id: str
    transport: str  # one of TRANSPORTS (checked on reading)
    rx_t_s: float
    payload_b64: bytes  # msgspec writes and reads bytes as base64


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Line)


def encode_frame(f: SensorFrame) -> bytes:
    """One frame as its log line (without the newline)."""
    return _encoder.encode(_Line(f.hub_id, f.sensor_id, f.transport, f.rx_t_s, f.payload))


def decode_frame(line: bytes | str) -> SensorFrame:
    """One log line as a frame; :class:`FrameLogError` if it is not one."""
    try:
        d = _decoder.decode(line)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise FrameLogError(str(exc)) from None
    if d.transport not in TRANSPORTS:
        raise FrameLogError(f"unknown transport {d.transport!r}")
    return SensorFrame(d.hub_id, d.sensor_id, d.transport, d.rx_t_s, d.payload_b64)


class FrameLogWriter:
    """Writes frames as they come (a long run never holds them all); a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: IO[bytes] = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self.count = 0

    def write(self, frames: Iterable[SensorFrame]) -> None:
        lines = [encode_frame(f) for f in frames]
        if lines:
            self._fh.write(b"\n".join(lines) + b"\n")
            self.count += len(lines)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> FrameLogWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def write_frames(path: str | Path, frames: Iterable[SensorFrame]) -> int:
    """Write a whole frame log; returns how many frames were written."""
    with FrameLogWriter(path) as w:
        w.write(frames)
        return w.count


_FWLOG1 = b"FWLOG1\n"
_FWLOG1_REC = struct.Struct("<dBBBI")
_FWLOG1_TRANSPORTS = ("ble", "zigbee")


class FrameLogReader:
    """The frames of a log, in reception order.

    ``strict=True``: a line that is not a frame raises :class:`FrameLogError` naming the
    line (a cut-off last line says ``truncated``). ``strict=False`` (the replay source):
    such lines are counted in :attr:`bad_lines` and skipped, never fatal. A damaged
    binary ``FWLOG1`` log raises in both modes (it cannot be resynchronised).
    """

    def __init__(self, path: str | Path, *, strict: bool = True) -> None:
        self.path = Path(path)
        self.strict = strict
        self.bad_lines = 0

    def __iter__(self) -> Iterator[SensorFrame]:
        with open(self.path, "rb") as fh:
            if fh.read(len(_FWLOG1)) == _FWLOG1:
                yield from self._fwlog1(fh)
                return
            fh.seek(0)
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield decode_frame(line)
                except FrameLogError as exc:
                    if self.strict:
                        what = ("not a frame log" if n == 1 else
                                "truncated record" if not line.endswith(b"\n") else "not a frame")
                        raise FrameLogError(f"{self.path}:{n}: {what} ({exc})") from None
                    self.bad_lines += 1

    def _fwlog1(self, fh: IO[bytes]) -> Iterator[SensorFrame]:
        while head := fh.read(_FWLOG1_REC.size):
            if len(head) < _FWLOG1_REC.size:
                raise FrameLogError(f"{self.path}: truncated record")
            rx, lh, ls, tr, lp = _FWLOG1_REC.unpack(head)
            body = fh.read(lh + ls + lp)
            if len(body) < lh + ls + lp or tr >= len(_FWLOG1_TRANSPORTS):
                raise FrameLogError(f"{self.path}: truncated record")
            yield SensorFrame(body[:lh].decode(), body[lh:lh + ls].decode(), _FWLOG1_TRANSPORTS[tr], rx,
                              body[lh + ls:])


def read_frames(path: str | Path, *, strict: bool = True) -> Iterator[SensorFrame]:
    """Frames from a log in the order they were received (see :class:`FrameLogReader`)."""
    return iter(FrameLogReader(path, strict=strict))
