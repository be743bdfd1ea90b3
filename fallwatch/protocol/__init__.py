"""The wire protocol, the bottom layer: imports nothing of ours.

* :mod:`~fallwatch.protocol.ids` — the one id pattern (sites, devices, sensors, rooms, residents)
* :mod:`~fallwatch.protocol.topics` — the topic tree ``fallwatch/v1/...``
* :mod:`~fallwatch.protocol.contract` — every payload, uplink and downlink (v1, msgspec)
* :mod:`~fallwatch.protocol.frames` — what a hub's radios receive (IMU and room-sensor frames)
* :mod:`~fallwatch.protocol.framelog` — recorded frames, for replay

docs/protocol.md documents it.
"""
