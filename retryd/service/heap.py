"""The cyclic garbage collector, set for a process that drains DLQs.

What start-up builds (botocore's service models, the settings, the engine: about
114,000 tracked objects) lives as long as the process, yet CPython's collector
walks it again on every pass of an older generation, and runs a pass of the
youngest after every 700 tracked objects made and not freed
(https://docs.python.org/3.11/library/gc.html#gc.set_threshold). Each batch makes
thousands (parsed responses, records, log events), nearly all freed by reference
counting, so those passes found little and cost much: `perf record` of `retryd
once` on the bench's sqs world put 13.5 % of its CPU in the collector.

So once the engine is built, what exists is frozen out of every later pass
(`gc.freeze`, https://docs.python.org/3.11/library/gc.html#gc.freeze), and the
youngest generation is collected after YOUNG_THRESHOLD objects instead of 700.
Cyclic garbage then waits a little longer to be collected; reference-counted
garbage, most of it, is freed as before. The collector's share fell to 4.2 %
(docs/performance.md, "Fourth pass: the garbage collector").

Garbage that lived through two young passes before it died (a batch's objects, held
for its hundreds of milliseconds) waits in the oldest generation, and with the
collector set so, CPython's own full passes became rare: a 100,000-message drain grew
from 94 to 103 MB, where it had stayed flat. So while the engine runs, a full pass
runs every FULL_PASS_EVERY_S; it walks only what was made since the freeze (a few
milliseconds), and the drain stays flat (docs/performance.md, "Memory after the
fourth pass").

Only the process's owner sets this: the `once` and `run` commands (whichever
process calls them) and their worker processes. The engine run for a caller
(`run_once`, `run_daemon`) leaves the caller's collector as it is.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Tracked objects made and not freed between two passes of the youngest generation;
# CPython's default is 700. The older generations keep their default ratios.
YOUNG_THRESHOLD = 50_000
# Seconds between two full passes while the engine runs: at 1,600 msg/s a drain left
# about 0.2 MB a second of such garbage, so a pass every 10 s keeps it to about 2 MB.
FULL_PASS_EVERY_S = 10.0


def settle() -> None:
    """Freeze what start-up built out of the collector's passes, and make them rarer.

    Call once the engine's clients and ledger are open, before the first cycle.
    The unreachable objects left by start-up are not collected first: a full pass
    costs about 60 ms of CPU and found a few dozen of 114,000.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


@contextmanager
def settled() -> Iterator[None]:
    """`settle()`, then a full pass every FULL_PASS_EVERY_S until the block ends.

    Call inside the event loop that runs the engine. The pass is a callback of that
    loop (as the collector's own passes run on the thread that allocates), so the
    finalizers it runs run there too, never beside the loop in another thread.
    """
    settle()
    loop = asyncio.get_running_loop()
    next_pass: asyncio.TimerHandle

    def full_pass() -> None:
        nonlocal next_pass
        # The next one is asked for first: a pass that raised would otherwise be the last.
        next_pass = loop.call_later(FULL_PASS_EVERY_S, full_pass)
        gc.collect()

    next_pass = loop.call_later(FULL_PASS_EVERY_S, full_pass)
    try:
        yield
    finally:
        next_pass.cancel()
