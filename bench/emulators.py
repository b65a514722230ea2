"""The AWS emulators the benchmark runs against, each in its own process on loopback.

fauxqs (npm) stays fast at depth, so throughput is measured on it; moto speaks
Lambda and Step Functions too, so CPU per message for those targets is measured
on moto with shallow queues (moto walks the whole queue on every call).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

FAUXQS_VERSION = "1.9.2"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_listening(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()  # noqa: S310 - loopback URL we built
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer from {url} within {timeout_s}s") from None
            time.sleep(0.1)
        else:
            return


class Emulator:
    """A server process; `url` is its endpoint. Use as a context manager."""

    name = "emulator"

    def __init__(self) -> None:
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def __enter__(self) -> Emulator:
        argv, env = self.command()
        self._process = subprocess.Popen(  # noqa: S603 - argv built here
            argv,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_listening(self.url)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def fauxqs_cli() -> Path:
    """fauxqs's entry point, installed into bench/.cache on first use from the npm registry."""
    cli = CACHE_DIR / "node_modules" / "fauxqs" / "dist" / "cli.js"
    if cli.exists():
        return cli
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("the SQS benchmark needs Node.js and npm (for fauxqs)")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(  # noqa: S603 - fixed argv
        [npm, "install", "--no-audit", "--no-fund", "--silent", f"fauxqs@{FAUXQS_VERSION}"],
        cwd=CACHE_DIR,
        check=True,
    )
    return cli


class Fauxqs(Emulator):
    name = "fauxqs"

    def command(self) -> tuple[list[str], dict[str, str]]:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("the SQS benchmark needs Node.js (for fauxqs)")
        return [node, str(fauxqs_cli())], {
            "FAUXQS_PORT": str(self.port),
            "FAUXQS_HOST": "localhost",
            "FAUXQS_LOGGER": "false",
        }


class Moto(Emulator):
    name = "moto"

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-m", "bench.moto_server", str(self.port)], {}

    def __enter__(self) -> Moto:
        super().__enter__()
        # Lambda invokes without Docker: moto answers them itself.
        request = urllib.request.Request(  # noqa: S310 - loopback URL we built
            f"{self.url}/moto-api/config",
            data=b'{"lambda": {"use_docker": false}}',
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310
        return self
