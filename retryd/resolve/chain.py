"""Resolution: which resolver recognises a dead letter, and what it turns it into.

The chain follows docs/design.md's order: what a message says about itself (the
envelope, then Lambda destination records, failed Step Functions executions and
EventBridge DLQ attributes) wins
over the operator's static routes, which win over what is inferred about the
queue (SNS subscription DLQs, Lambda async DLQs, SQS redrive sources).
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import replace

import structlog

from retryd.admission.allowlist import Allowlist
from retryd.discovery.feeds import FeedSource
from retryd.metrics import Metrics
from retryd.models import DeadLetter, Job, ParkReason, Unresolvable
from retryd.resolve.base import Resolver
from retryd.resolve.envelope import EnvelopeResolver
from retryd.resolve.eventbridge_dlq import EventBridgeDlqResolver
from retryd.resolve.hooks import Hooks
from retryd.resolve.keys import parking_key
from retryd.resolve.lambda_async import LambdaAsyncResolver
from retryd.resolve.lambda_destination import LambdaDestinationResolver
from retryd.resolve.sns_subscription import SnsSubscriptionResolver
from retryd.resolve.sqs_redrive import SqsRedriveResolver
from retryd.resolve.static_route import StaticRouteResolver
from retryd.resolve.stepfunctions_execution import StepFunctionsExecutionResolver
from retryd.settings import Settings

_log = structlog.get_logger(__name__)


class ResolverChain:
    """Asks each resolver in turn; the first that recognises the message decides."""

    def __init__(
        self,
        resolvers: Sequence[Resolver],
        hooks: Hooks | None = None,
        feeds: FeedSource | None = None,
    ) -> None:
        self._resolvers = tuple(resolvers)
        self._hooks = hooks
        self._feeds = feeds

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(resolver.name for resolver in self._resolvers)

    async def resolve_all(self, letters: Sequence[DeadLetter]) -> list[Job | Unresolvable]:
        """Each letter resolved, then put through its `[[hooks]]` rule (retryd.resolve.hooks).

        What a cycle, a redrive and `plan` use; `resolve` alone (as a redrive's selection
        and the console's sightings use it) runs no hooks.
        """
        answers = [self.resolve(letter) for letter in letters]
        if self._hooks is None:
            return answers
        return [_keyed(answer) for answer in await self._hooks.apply(answers)]

    def resolve(self, letter: DeadLetter) -> Job | Unresolvable:
        """A Job or an Unresolvable for every message; never raises for a message's content.

        An Unresolvable carries the key its park is recorded under in the ledger.
        """
        return _keyed(self._resolve(letter))

    def _resolve(self, letter: DeadLetter) -> Job | Unresolvable:
        for resolver in self._resolvers:
            try:
                answer = resolver.resolve(letter)
            except Exception as exc:  # noqa: BLE001 - a resolver bug must not stop the batch
                # A resolver that raises is a bug; one bad message must not stop its batch.
                _log_failure(resolver.name, letter, exc)
                return Unresolvable(
                    letter,
                    ParkReason.UNRESOLVABLE,
                    f"resolver {resolver.name} failed: {type(exc).__name__}",
                )
            if answer is not None:
                return answer
        detail = (
            f"no resolver recognised the message and no route matches queue {letter.queue.name}"
        )
        if self._feeds is not None and self._feeds.current.unsure:
            # What feeds the DLQ could not be learned for now (throttling, a 5xx): the
            # feed that would resolve it may be the missing one. Another cycle will know.
            errors = "; ".join(self._feeds.current.errors) or "a transient error"
            detail += f", while what feeds the DLQs could not all be learned ({errors})"
            return Unresolvable(letter, ParkReason.UNRESOLVABLE, detail, retry_later=True)
        return Unresolvable(letter, ParkReason.UNRESOLVABLE, detail)


def _log_failure(resolver: str, letter: DeadLetter, exc: Exception) -> None:
    # Only the exception type and the frames: an exception's message, or the locals
    # a rich traceback renders, can quote the payload, which is never logged.
    _log.error(
        "resolver_failed",
        resolver=resolver,
        queue=letter.queue.name,
        message_id=letter.message_id,
        error_type=type(exc).__name__,
        frames="".join(traceback.format_tb(exc.__traceback__)),
    )


def build_chain(
    settings: Settings, feeds: FeedSource | None = None, metrics: Metrics | None = None
) -> ResolverChain:
    """The chain for these settings, in docs/design.md's order.

    What a message says about itself first (the envelope, a Lambda destination
    record, a failed Step Functions execution, EventBridge's DLQ attributes), then
    the operator's static routes, then what the feed map infers about the queue
    (SNS subscription DLQs, Lambda async DLQs, SQS redrive sources). `feeds` is
    read at each message (a FeedCache is refreshed between cycles); without it the
    inferred resolvers are left out. The `[[hooks]]` rules are loaded here
    (ConfigError when a transform or schema cannot be), and their runs are counted
    in `metrics`.
    """
    routes = StaticRouteResolver(settings.routes)
    # A failed execution is named by its status-change event or by an envelope: one fallback.
    start_afresh = settings.stepfunctions.not_redrivable == "start-execution"
    resolvers: list[Resolver] = [
        EnvelopeResolver(start_if_not_redrivable=start_afresh),
        # A stream batch is read only from a stream the allowlist admits, as a target is.
        LambdaDestinationResolver(allow_stream=Allowlist.from_settings(settings.guards).allows),
        StepFunctionsExecutionResolver(start_if_not_redrivable=start_afresh),
        EventBridgeDlqResolver(routes),
        routes,
    ]
    if feeds is not None:
        # SNS first: it steps aside for messages Lambda or SQS marked as theirs, while the
        # Lambda resolver would take an SNS message from a queue a function also feeds.
        resolvers += [
            SnsSubscriptionResolver(feeds),
            LambdaAsyncResolver(feeds),
            SqsRedriveResolver(feeds),
        ]
    return ResolverChain(resolvers, Hooks.from_settings(settings, metrics), feeds)


def _keyed(answer: Job | Unresolvable) -> Job | Unresolvable:
    """An Unresolvable with its parking key: from its DLQ and body, as it names no target."""
    if isinstance(answer, Job) or answer.key:
        return answer
    return replace(answer, key=parking_key(answer.letter.queue.arn, answer.letter.body))
