"""The embedded moto server in a process of its own: `python -m bench.moto_server PORT`.

The emulator already handles moto's requests one at a time (a long poll's waits
excepted, `retryd/sandbox/emulator.py`): moto's SQS is not safe across its server's
threads, and the floor's two receivers per DLQ were once handed the same message on a
loaded machine.
"""

from __future__ import annotations

import signal
import sys
import threading

from retryd.sandbox.emulator import MotoServer


def main(port: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with MotoServer(port=port):
        stop.wait()


if __name__ == "__main__":
    main(int(sys.argv[1]))
