"""`python -m bench.launch OUT.json ARGV...`: run ARGV, then write its CPU and peak RSS to OUT.json.

Why a launcher: Linux carries the forking process's high-water RSS into the
child's `ru_maxrss` across exec (the copied address space is the child's until
exec replaces it). Forked straight from the harness, which holds the world it
just filled, every contender's "peak RSS" read at least the harness's own, and
grew with the backlog. Forked from this small process instead, the figure is
the contender's. Only the standard library here, to stay small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    process = subprocess.Popen(argv)  # noqa: S603 - the harness's own argv
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "exit_code": code,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                # Linux reports ru_maxrss in KiB.
                "peak_rss_mb": usage.ru_maxrss / 1024,
                "pid": process.pid,
            },
            handle,
        )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
