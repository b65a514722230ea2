"""A fake clock for the guard tests: time moves only when a test says so."""

from __future__ import annotations


class FakeClock:
    """Callable like `anyio.current_time` or `time.time`; `advance` moves it forward."""

    def __init__(self, start_s: float = 1_000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self.now_s += seconds
