"""De-duplication by idempotency key (``msg_id``), against the state DB's ``seen`` table.

The table is shared by gateway replicas, so a message redelivered to another replica
after a crash is still recognised. Keys are marked seen only once what the message
carries is durable (:meth:`StateStore.commit_batch` / :meth:`StateStore.record_fall`, in
the same transaction as the registry update), never here.

Each key is kept with a hash of what the message said (:func:`contract.content_digest`).
A key that comes back with the *same* content is a re-send and dropped; with *different*
content it is a different message under a clashing key (a re-imaged hub with old-style
``device:seq`` keys, a cloned SD card, a bug): dropping it could drop a fall, so it is
kept, and the clash is an alarm (counted as ``id_conflicts``, logged, and ``on_conflict``
raises a device alert for staff).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fallwatch.gateway.decode import Decoded
from fallwatch.gateway.metrics import Counters
from fallwatch.gateway.state import StateStore
from fallwatch.protocol import contract

log = logging.getLogger("fallwatch.gateway")


class Deduplicator:
    def __init__(self, state: StateStore, counters: Counters | None = None) -> None:
        self.state = state
        self.counters = counters
        #: called once per message whose key was seen with different content
        self.on_conflict: Callable[[contract.Message], None] | None = None

    def fresh(self, good: list[Decoded]) -> tuple[list[Decoded], int, dict[str, str]]:
        """The messages of a batch not stored before (the first of repeats inside the batch
        too, and any whose key clashes), how many were dropped as duplicates, and the content
        digest of each kept message by ``msg_id`` (stored with the key)."""
        digests = [contract.content_digest(d[0]) for d in good]
        seen = self.state.seen_digests(list(dict.fromkeys(d[0].msg_id for d in good)))
        out: list[Decoded] = []
        kept: dict[str, str] = {}
        for d, digest in zip(good, digests, strict=True):
            msg_id = d[0].msg_id
            before = seen.get(msg_id, kept.get(msg_id))
            if msg_id not in seen and msg_id not in kept:
                kept[msg_id] = digest
                out.append(d)
            elif before is None or before == digest:
                continue  # a re-send (or a key stored before digests were kept: cannot tell)
            else:
                self.conflict(d[0], before, digest)
                kept.setdefault(msg_id, digest)
                out.append(d)
        return out, len(good) - len(out), kept

    def check(self, msg: contract.Message) -> str | None:
        """The digest to store with ``msg`` if it is to be processed, None for a duplicate."""
        digest = contract.content_digest(msg)
        seen = self.state.seen_digests([msg.msg_id])
        if msg.msg_id not in seen:
            return digest
        before = seen[msg.msg_id]
        if before is None or before == digest:
            return None
        self.conflict(msg, before, digest)
        return digest

    def conflict(self, msg: contract.Message, before: str, now: str) -> None:
        log.error("idempotency key %r from %s/%s arrived again with different content (%s, was %s): "
                  "kept as a new message", msg.msg_id, msg.site_id, msg.device_id, now, before)
        if self.counters is not None:
            self.counters.add(id_conflicts=1)
        if self.on_conflict is not None:
            self.on_conflict(msg)

    def prune(self, older_than_ms: int) -> int:
        """Forget keys received before ``older_than_ms`` (past the broker's session expiry)."""
        return self.state.prune_seen(older_than_ms)
