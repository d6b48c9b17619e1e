"""Sliding-window shared-key attention (SW-SKA): H query heads, H value heads, one key head.

Query at absolute position p (queries are the last T of the S key positions) sees keys p - window .. p.
"""

from rodimus.ops.swska.blocked import swska_blocked
from rodimus.ops.swska.naive import swska_naive

__all__ = ["swska_blocked", "swska_naive"]
