"""Time as one seam: code asks here for the current time, tests freeze it."""

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Return the current time in UTC as a naive datetime, the form the database stores."""
    return datetime.now(UTC).replace(tzinfo=None)
