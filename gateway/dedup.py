"""De-duplication by idempotency key (``msg_id``), against the state DB's ``seen`` table.

The table is shared by gateway replicas, so a message redelivered to another replica
after a crash is still recognised. Keys are marked seen only once what the message
carries is durable (:meth:`StateStore.commit_batch` / :meth:`StateStore.record_fall`, in
the same transaction as the registry update), never here.
"""

from __future__ import annotations

from fallwatch.gateway.decode import Decoded
from fallwatch.gateway.state import StateStore


class Deduplicator:
    def __init__(self, state: StateStore) -> None:
        self.state = state

    def fresh(self, good: list[Decoded]) -> tuple[list[Decoded], int]:
        """The messages of a batch not stored before (the first of repeats inside the batch
        too), and how many were dropped as duplicates."""
        new = self.state.filter_new(list(dict.fromkeys(m.msg_id for m, _, _ in good)))
        if len(new) == len(good):
            return good, 0
        out: list[Decoded] = []
        for d in good:
            if d[0].msg_id in new:
                new.discard(d[0].msg_id)
                out.append(d)
        return out, len(good) - len(out)

    def is_new(self, msg_id: str) -> bool:
        return bool(self.state.filter_new([msg_id]))

    def prune(self, older_than_ms: int) -> int:
        """Forget keys received before ``older_than_ms`` (past the broker's session expiry)."""
        return self.state.prune_seen(older_than_ms)
