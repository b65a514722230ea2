"""What the probes report: is the scheduler loop still turning, and is retryd ready.

Its own module, apart from the listener that serves it (`service/http.py`, aiohttp's
web server): the scheduler and `retryd once` keep a Health without serving one, and
need not import the server to do so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

from retryd.settings import Settings


@dataclass
class Health:
    """What the probes report: scheduler ticks (liveness) and a readiness flag.

    `alive` allows one missed tick: the scheduler is stalled only when no tick
    came for 2 x `interval_s` plus `cycle_budget_s`, the longest one cycle may
    run (the scheduler ticks once per cycle, so a tick can be that late). The
    same window is granted from construction, so a slow start is not mistaken
    for a hang. `for_settings` sizes both from the configuration.
    """

    interval_s: float
    clock: Callable[[], float] = time.monotonic
    cycle_budget_s: float = 0.0
    _started_at: float = field(init=False)
    _last_tick_at: float | None = field(init=False, default=None)
    _ready: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._started_at = self.clock()

    @classmethod
    def for_settings(cls, settings: Settings, clock: Callable[[], float] = time.monotonic) -> Self:
        """Probes sized for `settings`: the longest a cycle can run is its budget plus one batch.

        The budget only stops new receives; a batch received just before it ends
        may still be settling, its lease extended while work is in flight, for up to
        `drain.max_lease_s` (never less than one lease), and a cycle that long must
        not read as a hang.
        """
        drain = settings.drain
        return cls(
            interval_s=settings.schedule.interval_s,
            clock=clock,
            cycle_budget_s=drain.cycle_budget_s + drain.lease_cap_s,
        )

    @property
    def stall_after_s(self) -> float:
        """How long without a tick before the process counts as stalled."""
        return 2 * self.interval_s + self.cycle_budget_s

    @property
    def since_tick_s(self) -> float:
        """Seconds since the last tick, or since construction before the first one."""
        last = self._started_at if self._last_tick_at is None else self._last_tick_at
        return self.clock() - last

    def tick(self) -> None:
        """The scheduler loop has come round again."""
        self._last_tick_at = self.clock()

    def mark_ready(self) -> None:
        """Settings are loaded and the first discovery succeeded."""
        self._ready = True

    @property
    def alive(self) -> bool:
        return self.since_tick_s <= self.stall_after_s

    @property
    def ready(self) -> bool:
        return self._ready
