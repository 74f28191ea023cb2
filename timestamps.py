"""Read the last_updated times the TAO services store: ISO-8601 text or BSON dates."""

from __future__ import annotations

import datetime
from typing import Any


def parse_time(value: str | datetime.datetime) -> datetime.datetime:
    """Read an ISO-8601 string or a datetime as a naive UTC datetime.

    A time without an offset is taken as UTC, as BSON dates are.  Raises
    ValueError for text that is not an ISO-8601 time.
    """
    if isinstance(value, datetime.datetime):
        moment = value
    else:
        moment = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC).replace(tzinfo=None)
    return moment


def unix_time(value: Any) -> float | None:
    """Return a stored last_updated as Unix time, or None when it is not a time."""
    if not isinstance(value, str | datetime.datetime):
        return None
    try:
        moment = parse_time(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=datetime.UTC).timestamp()
