"""Progress bars for the operator commands that read whole DLQs (`plan`, `inspect`).

They are drawn on stderr, and only when a person is watching it: a bar in a
pipe, a log file or in front of JSON meant for a machine is noise. Every
method is a no-op when progress is off, so callers never branch on it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


def wanted(output: str) -> bool:
    """Progress for text output on an interactive stderr; never in JSON mode."""
    return output == "text" and sys.stderr.isatty()


class QueueProgress:
    """One bar per DLQ being read; removed when the command's output is ready."""

    def __init__(self, *, enabled: bool, console: Console | None = None) -> None:
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console or Console(stderr=True),
                # The bars only matter while reading; the command's output follows them.
                transient=True,
            )

    def __enter__(self) -> QueueProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    @contextmanager
    def reading(self, queue: str, expected: int | None) -> Iterator[Callable[[int], None]]:
        """A bar for reading `queue`, advanced by each batch's count, completed on leaving."""
        task = self.add(queue, expected)
        yield lambda messages: self.advance(task, messages)
        self.finish(task)

    def add(self, queue: str, total: int | None) -> TaskID | None:
        """A bar for `queue`; `total` is how many messages are expected (None: unknown)."""
        if self._progress is None:
            return None
        return self._progress.add_task(queue, total=total)

    def advance(self, task: TaskID | None, messages: int) -> None:
        if self._progress is not None and task is not None:
            self._progress.advance(task, messages)

    def finish(self, task: TaskID | None, note: str = "") -> None:
        """Mark `task` complete (a queue can hold fewer messages than SQS estimated)."""
        if self._progress is None or task is None:
            return
        bar = next(t for t in self._progress.tasks if t.id == task)
        self._progress.update(
            task, total=bar.completed, description=f"{bar.description} {note}".rstrip()
        )
