"""Static routes: the operator's explicit word on where a DLQ's messages go back to.

Used for DLQs whose messages name no target and whose source the feed map cannot
tell (a DLQ several functions, queues or subscriptions share, a plain queue).
The body is resent exactly as it arrived: a route says where, never what.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from retryd.models import DeadLetter, Job, Target
from retryd.resolve.base import body_as_is
from retryd.settings import Route

# DLQs whose route is kept once looked up (a message's route is asked for every message).
QUEUES_KEPT = 4096


class StaticRouteResolver:
    """Routes a message by its DLQ's name; the first matching route in config order wins."""

    name = "static-route"

    def __init__(self, routes: Sequence[Route]) -> None:
        # Route's validator already proved every target ARN parses; build them once.
        self._routes = tuple((route.queue, Target.from_arn(route.target)) for route in routes)
        # Queue name -> its route's target: the globs matched once per DLQ, not per message.
        self._targets: dict[str, Target | None] = {}

    def target_for(self, queue_name: str) -> Target | None:
        """The target of the first route whose queue name or glob matches, if any."""
        if queue_name in self._targets:
            return self._targets[queue_name]
        found = next(
            (
                target
                for pattern, target in self._routes
                if pattern == queue_name or fnmatch.fnmatchcase(queue_name, pattern)
            ),
            None,
        )
        if len(self._targets) < QUEUES_KEPT:
            self._targets[queue_name] = found
        return found

    def resolve(self, letter: DeadLetter) -> Job | None:
        target = self.target_for(letter.queue.name)
        if target is None:
            return None
        return body_as_is(letter, target, self.name)
