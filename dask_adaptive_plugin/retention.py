"""How long an idle worker is worth keeping: a break-even learned from the gaps seen.

Keeping an idle worker costs its price for every second it waits. Giving it
away costs, if work comes back for it, the wait for a replacement: its pool's
start-up latency ``L``. On the objective makespan × cost, a second of
makespan is worth the cluster's *average cost rate* ``A`` (its cost-weighted
worker-seconds over the time it has run): a cluster that sits mostly empty
between bursts loses little by a later finish and much by idle workers. When
work comes back for ``r`` workers and one of them is missing, that work is
late by about ``L / r``; giving that worker away therefore costs ``L·A/r``.

Which hold is best depends on how long the gaps between the work are, which
no rule knows in advance (ski rental). :class:`Gaps` records, per pool, each
gap: from when its desired size fell to when it rose again, and how far it
rose. The hold is the one that would have cost least over the gaps seen (the
best fixed timeout in hindsight, recomputed as gaps come in, as in adaptive
disk spin-down). Until a pool has seen :data:`ENOUGH_GAPS` gaps, the
ski-rental break-even stands in: hold for ``L·A/n`` over the price, ``n`` the
pool's running workers, which is within twice the best choice made knowing
the future.

Never longer than one start-up (at the cheapest pool's price), the classic
ski-rental hold: the pricing shares a wait out as if the whole cluster
waited for the work that comes back, true of work that waits for the
results before it (a notebook, a script), not of a small job arriving
beside a large one, where it would keep thousands of idle workers for
hours.

All of it is pure: the policy feeds it the time it is given and what it
decided.
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

#: Gaps a pool must have seen before its hold is learned from them.
ENOUGH_GAPS = 4
#: Gaps kept per pool: the newest, as workloads change over a day.
MEMORY = 256


class Gap(NamedTuple):
    """``workers`` surplus for ``seconds`` until a rise of ``rise`` workers."""

    seconds: float
    workers: int
    rise: int


class Gaps:
    """One pool's gaps: from a fall in its desired size to the rise that undid it.

    Falls are a stack, newest last: a rise reuses the workers freed last
    (those a fixed timeout would still have kept), so each rise ends the
    newest falls first. O(1) amortised per evaluation; the hold is recomputed
    (O(gaps · log gaps)) only when a gap ends.
    """

    def __init__(self) -> None:
        self.level = 0
        self.falls: list[list[float]] = []  # [time, workers], newest last
        self.seen: deque[Gap] = deque(maxlen=MEMORY)
        #: The hold learned from ``seen``; ``None`` once a new gap ends.
        self.learned: float | None = None

    def observe(self, now: float, desired: int) -> None:
        """The pool's desired size at ``now``."""
        change, self.level = desired - self.level, desired
        if change < 0:
            self.falls.append([now, -change])
        elif change > 0:
            self._rise(now, change)

    def _rise(self, now: float, rise: int) -> None:
        left = rise
        falls = self.falls
        while left and falls:
            fell_at, workers = falls[-1]
            used = min(left, int(workers))
            self.seen.append(Gap(now - fell_at, used, rise))
            self.learned = None
            left -= used
            if used == workers:
                falls.pop()
            else:
                falls[-1][1] = workers - used

    def best_hold(self, floor: float, price: float, wait_cost: float) -> float:
        """The hold, at least ``floor``, that would have cost least over the gaps.

        ``price``: an idle worker's cost per second. ``wait_cost``: what a
        start-up's wait costs the whole of the work that comes back (``L·A``),
        shared by the workers it needs. When the best hold covers every gap
        seen, it is stretched to the break-even of a worker's share of that
        wait: a longer gap than any seen is the only way left to lose, and
        the break-even bounds that loss (ski rental).
        """
        gaps = sorted(self.seen)
        waiting = sum(g.workers / g.rise for g in gaps)  # a rise is >= 1
        held = sum(g.workers for g in gaps)  # workers of gaps longer than a hold
        share = waiting / held if held else 0.0  # a worker's share of a wait
        spent = 0.0  # idle cost of the gaps a hold covers
        best, best_cost = floor, math.inf
        i = 0
        for hold in [floor] + [g.seconds for g in gaps if g.seconds > floor]:
            while i < len(gaps) and gaps[i].seconds <= hold:
                g = gaps[i]
                spent += price * g.workers * g.seconds
                held -= g.workers
                waiting -= g.workers / g.rise
                i += 1
            cost = spent + price * hold * held + wait_cost * waiting
            if cost < best_cost - 1e-9:
                best, best_cost = hold, cost
        if gaps and best >= gaps[-1].seconds:
            best = max(best, wait_cost * share / price)
        return best

    def __len__(self) -> int:
        return len(self.seen)


class CostRate:
    """The cluster's average cost rate: cost-weighted workers over the time run.

    Integrated from the policy's evaluations (supply changes only at them),
    from the first evaluation that saw a worker or work.
    """

    def __init__(self) -> None:
        self.start: float | None = None
        self.last = 0.0
        self.rate = 0.0
        self.area = 0.0

    def observe(self, now: float, rate: float, active: bool) -> None:
        """``rate``: the cost per second of the workers running from ``now``."""
        if self.start is None:
            if not (active or rate):
                return
            self.start = now
        else:
            self.area += self.rate * max(0.0, now - self.last)
        self.last, self.rate = now, rate

    def average(self, now: float) -> float:
        """Average cost per second since the start (the current rate at first)."""
        if self.start is None:
            return 0.0
        elapsed = now - self.start
        area = self.area + self.rate * max(0.0, now - self.last)
        return area / elapsed if elapsed > 0 else self.rate


class Retention:
    """Per pool, how long an idle worker is kept, from what it costs to replace."""

    def __init__(self) -> None:
        self.gaps: dict[str, Gaps] = {}
        self.cost = CostRate()

    def observe(self, now: float, rate: float, desired: dict[str, int]) -> None:
        """What the policy saw and decided at ``now``."""
        self.cost.observe(now, rate, any(desired.values()))
        for name, n in desired.items():
            gaps = self.gaps.get(name)
            if gaps is None:
                gaps = self.gaps[name] = Gaps()
            gaps.observe(now, n)

    def hold(
        self,
        name: str,
        now: float,
        startup: float | None,
        price: float,
        running: int,
        floor: float,
        longest: float,
    ) -> float:
        """Seconds to keep an idle worker of pool ``name``: at least ``floor``,
        at most ``longest`` (unless ``floor`` is longer).

        ``longest`` is the classic ski-rental hold, one start-up (at the
        cheapest pool's price): the pricing above shares a start-up's wait
        out over the work that comes back as if all the cluster waited for
        it, which holds for work that waits on the results before it, not
        for a small job beside a large one. Until the pool's start-up is
        measured, ``floor``: nothing is known of what a replacement costs.
        """
        if not startup:
            return floor
        wait_cost = startup * self.cost.average(now)
        gaps = self.gaps.get(name)
        if gaps is None or len(gaps) < ENOUGH_GAPS:
            hold = wait_cost / (price * max(running, 1))
        else:
            if gaps.learned is None:
                gaps.learned = gaps.best_hold(floor, price, wait_cost)
            hold = gaps.learned
        return max(floor, min(hold, longest))
