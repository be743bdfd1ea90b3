"""Paging: on-call routing, delivery with fallback, escalation and acknowledge links.

:class:`~fallwatch.gateway.paging.pager.Pager` is the engine; ``roster`` says who is on
call, ``kinds`` how urgent each alert kind is, ``acklinks`` signs the single-use links,
``store`` keeps the pages, deliveries and links in the state DB. docs/alerts.md has the
lifecycle and a worked example.
"""

from fallwatch.gateway.paging.pager import AckResult, Pager

__all__ = ["AckResult", "Pager"]
