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

Only the process's owner sets this: the `once` and `run` commands (whichever
process calls them) and their worker processes. The engine run for a caller
(`run_once`, `run_daemon`) leaves the caller's collector as it is.
"""

from __future__ import annotations

import gc

# Tracked objects made and not freed between two passes of the youngest generation;
# CPython's default is 700. The older generations keep their default ratios.
YOUNG_THRESHOLD = 50_000


def settle() -> None:
    """Freeze what start-up built out of the collector's passes, and make them rarer.

    Call once the engine's clients and ledger are open, before the first cycle.
    The unreachable objects left by start-up are not collected first: a full pass
    costs about 60 ms of CPU and found a few dozen of 114,000.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
