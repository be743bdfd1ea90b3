"""``fallwatch chaos``: the whole system under the faults real sites see (docs/chaos.md)."""
