"""The table of the ban ledger (migration ``0003``): one penalty record per client.

Rate-limit bans and inspection strikes share it (``source`` tells which started the current
one), so the gate checks a single record. A lifted record stays as a tombstone (``source``
``lifted``) until pruned: other processes learn of the lift by reading rows updated since their
last poll (see :mod:`bastion.ratelimit.ledger`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from bastion.store.models import Base, UtcDateTime, utc_now

__all__ = ["CLIENT_MAX_LENGTH", "BanRow"]

CLIENT_MAX_LENGTH = 128
"""Longest client bucket stored (``ip:`` plus an IPv6 prefix, or a hashed key, fits easily)."""


class BanRow(Base):
    """A client's current or latest ban, or the tombstone of a lifted one."""

    __tablename__ = "bastion_bans"
    # Polls read "updated since"; pruning narrows on it too.
    __table_args__ = (Index("ix_bastion_bans_updated_at", "updated_at"),)

    client: Mapped[str] = mapped_column(String(CLIENT_MAX_LENGTH), primary_key=True)
    """The client bucket the stores count bans by, e.g. ``ip:203.0.113.7``."""
    until: Mapped[datetime] = mapped_column(UtcDateTime)
    """When the ban ends; for a tombstone, when it was lifted."""
    level: Mapped[int] = mapped_column(Integer)
    """Rate-limit offence number of the latest ban (1 = first duration); 0 when the client was
    only ever blocked by strikes, or the record was lifted."""
    source: Mapped[str] = mapped_column(String(32), default="ratelimit")
    """What set ``until``: ``ratelimit`` (a ban) or ``inspect`` (a strike block); ``lifted``
    marks a tombstone."""
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    """When the client's record began (reset when a ban follows a lift)."""
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    """Last write, by the writing process's clock."""
