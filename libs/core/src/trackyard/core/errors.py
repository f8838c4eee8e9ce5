"""Errors the Redis-backed store and bus raise when Redis cannot be reached.

Callers treat both as "try again later" (Twirp ``unavailable``, HTTP 503, a failed readiness
check); they never mean the data is wrong.
"""

from __future__ import annotations


class StoreUnavailableError(Exception):
    """The shared store (Redis) did not answer in time or refused the connection."""


class BusUnavailableError(Exception):
    """The message bus (Redis) could not accept a message right now."""
