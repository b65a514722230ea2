"""The systemd notify protocol: READY=1, WATCHDOG=1 and STOPPING=1 for a Type=notify unit.

The protocol is one datagram of `KEY=value` lines sent to the AF_UNIX socket
named by NOTIFY_SOCKET (an abstract name when it starts with '@'); see
sd_notify(3). It is written here over `socket` rather than taken from a
library: `sdnotify` on PyPI has had no release since 2017, and
`systemd-python` builds against libsystemd's headers, which a slim container
image or a plain venv does not have.

Everything here is a no-op when NOTIFY_SOCKET is unset (not under systemd, or
a unit of another Type), and a failed send is logged, never raised: losing a
notification must not take the daemon down.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("retryd.systemd")

_USEC_PER_S = 1_000_000


def socket_address(notify_socket: str) -> str:
    """The address to send to: '@name' is Linux's abstract namespace, a leading NUL byte."""
    if notify_socket.startswith("@"):
        return "\0" + notify_socket[1:]
    return notify_socket


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """WatchdogSec in seconds when the watchdog is on for this process, else None.

    systemd sets WATCHDOG_USEC, and WATCHDOG_PID naming the process it watches;
    a child that inherited them from its parent is not the one being watched.
    """
    usec = environ.get("WATCHDOG_USEC", "")
    watched_pid = environ.get("WATCHDOG_PID", "")
    if watched_pid and watched_pid != str(pid):
        return None
    try:
        interval_usec = int(usec)
    except ValueError:
        return None
    return interval_usec / _USEC_PER_S if interval_usec > 0 else None


class SystemdNotifier:
    """Sends state changes to systemd; every method is safe to call when not under systemd."""

    def __init__(self, notify_socket: str | None, watchdog_s: float | None) -> None:
        self._address = socket_address(notify_socket) if notify_socket else None
        self.watchdog_s = watchdog_s if self._address else None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """A notifier for what systemd told this process through its environment."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_interval_s(env, os.getpid()))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self) -> None:
        """Start-up is over: systemd lets units ordered after retryd start."""
        self._send("READY=1")

    def stopping(self) -> None:
        """A stop has begun; systemd shows `deactivating` while the drain runs."""
        self._send("STOPPING=1")

    def watchdog(self) -> None:
        """The scheduler came round again; sent only when the unit has WatchdogSec."""
        if self.watchdog_s is not None:
            self._send("WATCHDOG=1")

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            # One socket per message, as sd_notify does: a few datagrams a minute, and
            # nothing to close on the way out, however the daemon ends.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # A full receive queue must cost a lost notification, never a stalled loop.
                sock.setblocking(False)
                sock.sendto(message.encode(), self._address)
        except OSError as exc:
            log.warning("systemd-notify-failed", message=message, error=str(exc))
