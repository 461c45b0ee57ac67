"""Time as one seam: code asks here for the current time, tests freeze it."""

from datetime import datetime, timezone


def utcnow() -> datetime:
    """Return the current time in UTC as a naive datetime, the form the database stores."""
    return datetime.now(timezone.utc).replace(tzinfo=None)
