"""Hints from users who know what is coming: ``request_workers``.

A client that is about to submit a large computation, or a notebook session
that starts, can ask the plugin to keep at least ``n`` workers for a while
(Ray's ``request_resources``, distributed#3610). The request travels as an
event on the topic ``"adaptive-request"`` through the scheduler's own event
channel, so it needs no new handler; the plugin turns it into a floor that
expires, and says so in its events.
"""

from __future__ import annotations

from typing import Any

from dask_adaptive_plugin.config import parse_count, parse_duration

TOPIC = "adaptive-request"
DEFAULT_DURATION = "10m"


def request_workers(
    client: Any, n: int, pool: str | None = None, duration: Any = DEFAULT_DURATION
) -> Any:
    """Keep at least ``n`` workers for ``duration`` (in ``pool``, or in all).

    Parameters
    ----------
    client
        A ``distributed.Client`` of the scheduler (synchronous or not: with an
        asynchronous client, await the result).
    n
        Workers to keep at least, on top of nothing: the floor is ``n``, not
        ``minimum + n``.
    pool
        The pool to keep them in; ``None``: the cheapest that has room.
    duration
        How long the floor lasts: ``"10m"``, ``"90s"``, seconds.

    Examples
    --------
    >>> request_workers(client, 20, duration="15m")  # doctest: +SKIP

    The plugin answers with an event on topic ``"adaptive"``:
    ``{"status": "request", "n": 20, ...}``, and ``request-expired`` at the
    end; a refused request (an unknown pool) gives an ``error`` event.
    """
    message = {"n": n, "pool": pool, "duration": duration}
    parse_request(message)  # bad input fails here, where the caller sees it
    return client.log_event(TOPIC, message)


def parse_request(msg: dict[str, Any]) -> tuple[int, str | None, float]:
    """``(n, pool, seconds)`` of a request; ``ValueError`` naming what is wrong."""
    n = parse_count("n", msg.get("n"))
    assert n is not None
    pool = msg.get("pool")
    if pool is not None and (not isinstance(pool, str) or not pool):
        raise ValueError(f"invalid pool {pool!r} in a request for workers; expected a pool name")
    duration = parse_duration("duration", msg.get("duration", DEFAULT_DURATION), positive=True)
    return n, pool, duration
