"""moto, one request at a time: `python -m bench.moto_serial PORT`.

moto's SQS ReceiveMessage is not atomic across its server's threads: two receivers
on one queue can both be handed the same message (the floor loop, two receivers per
DLQ, counted a duplicate on a loaded machine). The moto worlds compare CPU per
message, not throughput, so serialising every request costs them nothing that is
measured and keeps their verification honest.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from retryd.sandbox.emulator import MotoServer, WsgiApp


def _one_at_a_time(app: WsgiApp) -> WsgiApp:
    lock = threading.Lock()

    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            # The whole body is produced under the lock: moto builds it lazily in places.
            return list(app(environ, start_response))

    return serve


def main(port: int) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with MotoServer(middleware=_one_at_a_time, port=port):
        stop.wait()


if __name__ == "__main__":
    main(int(sys.argv[1]))
