"""Show messages: a DLQ's messages, bodies and all, read as `retryd inspect` reads them.

The one place the console receives from SQS, and only on an operator's explicit
POST: `select_queues`, `read_chain` and `look_at` are inspect's own steps, so the
messages are peeked under a short lease and handed back at once (retryd/leases.py).
Each receive raises the message's receive count and a body may carry personal data:
the read is audited with the person who asked. An S3 source's objects are read as
inspect reads them too (`look_at_objects`: nothing leased, nothing moved).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from retryd.console.auth import Identity
from retryd.console.documents import Document, NotFoundError, Sources
from retryd.control import audit
from retryd.control.readmodel import DlqView
from retryd.discovery.survey import Look, look_at, look_at_objects, select_queues
from retryd.drain.setup import read_chain
from retryd.ledger import open_ledger
from retryd.ledger.base import LedgerError, Record
from retryd.models import DeadLetter, Job, MessageAttribute
from retryd.resolve.chain import ResolverChain
from retryd.resolve.failure_groups import error_signature, failure_group_id
from retryd.s3_objects import S3_URL_SCHEME, source_ref
from retryd.stamps import PREFIX

# The audit record's action: who read which DLQ's bodies.
ACTION = "show-messages"


class _Unwatched:
    """inspect draws a progress bar as it reads; a page has no terminal to draw on."""

    @contextmanager
    def reading(self, queue: str, expected: int | None) -> Iterator[Callable[[int], None]]:
        yield lambda _: None


def _body(text: str) -> dict[str, Any]:
    """The body as text, and indented when it is JSON (each shown escaped, as text)."""
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return {"body": text, "body_json": None}
    return {"body": text, "body_json": json.dumps(parsed, indent=2, ensure_ascii=False)}


def _attribute_value(value: MessageAttribute) -> str:
    if value.string_value is not None:
        return str(value.string_value)
    return f"({value.data_type}, {len(value.binary_value or b'')} bytes)"


def _message(chain: ResolverChain, letter: DeadLetter) -> tuple[str, dict[str, Any]]:
    """(failure group id, the message as the page and the API show it)."""
    resolved = chain.resolve(letter)
    if isinstance(resolved, Job):
        target = resolved.target.arn
    else:
        target = f"unresolved: {resolved.reason.value}"
    signature = error_signature(letter)
    attributes = {name: _attribute_value(v) for name, v in letter.message_attributes.items()}
    shown = {
        "message_id": letter.message_id,
        "group": failure_group_id(target, signature),
        "target": target,
        "error": signature,
        "key": resolved.key,
        **_body(letter.body),
        "attributes": {k: v for k, v in attributes.items() if not k.startswith(PREFIX)},
        "stamps": {k: v for k, v in attributes.items() if k.startswith(PREFIX)},
        "system_attributes": dict(letter.system_attributes),
        "receive_count": letter.receive_count,
    }
    return shown["group"], shown


def _attempts(record: Record | None) -> dict[str, Any] | None:
    """What the ledger holds for a key: its attempts, times and latest claim."""
    if record is None:
        return None
    return {
        "attempts": record.attempts,
        "first_failed_at_s": record.first_failed_at_s,
        "last_attempt_at_s": record.last_attempt_at_s,
        "claim": {
            "message_id": record.claim_message_id,
            "attempt": record.claim_attempt,
            "state": record.claim_state.value if record.claim_state else None,
        },
        "committed": [{"message_id": m, "attempt": a} for m, a in record.committed],
        "parked": [{"message_id": m, "attempt": a} for m, a, _ in record.parked],
    }


async def show_messages(
    sources: Sources, caller: str, who: Identity, queue_name: str, group_id: str
) -> Document:
    """Up to `console.page_size` messages of a DLQ retryd drains (of one group when given),
    peeked and handed back, each with the ledger's history of its key; audited."""
    if sources.clients is None:
        # A console over a store alone (a bench, a test) has no queue to read.
        raise NotFoundError("this console has no AWS clients: no queue to read")
    known = {view.name: view for view in await sources.views.dlqs()}
    if queue_name not in known:
        # Only a DLQ the daemon drains: never the parking queue or any other queue.
        raise NotFoundError(f"no DLQ {queue_name!r} in the latest cycles")
    look = await _look(sources, known[queue_name], group_id)
    messages = look.finding or []
    # Audited as soon as the bodies are read, before anything else can fail.
    await audit.record(
        sources.store,
        who=caller,
        person=who.name,
        action=ACTION,
        what={"queue": queue_name, "group": group_id or None},
        count=len(messages),
        outcome="error" if look.errors else "ok",
    )
    problems = look.errors + look.warnings
    try:
        records = await _records(sources, [m["key"] for m in messages if m["key"]])
    except LedgerError as exc:
        # The messages are read (and audited): shown without their history, and why.
        problems.append(f"attempt history unavailable: {exc}")
        records = {}
    for message in messages:
        message["ledger"] = _attempts(records.get(message["key"]))
    return {
        "queue": queue_name,
        "group": group_id or None,
        "sampled": look.sampled,
        "truncated": look.truncated,
        "messages": messages,
        "errors": problems,
    }


async def _look(sources: Sources, view: DlqView, group_id: str) -> Look[list[dict[str, Any]]]:
    """The DLQ's messages as `retryd inspect` reads them: an SQS queue's peeked and handed
    back, an S3 source's objects read from its first key (nothing leased, nothing moved)."""
    settings, clients = sources.settings, sources.clients
    if clients is None:
        raise NotFoundError("this console has no AWS clients: no queue to read")
    page_size = settings.console.page_size
    if view.url.startswith(S3_URL_SCHEME):
        bucket, _, prefix = view.url.removeprefix(S3_URL_SCHEME).partition("/")
        # An object is a self-describing record: no feed map is needed to resolve it.
        chain, _ = await read_chain(settings, clients, [])
        source = source_ref(bucket, prefix)
        return await look_at_objects(
            clients.s3, source, _examiner(chain, group_id), max_messages=page_size
        )
    queues, _ = await select_queues(clients.sqs, settings, [view.name])
    if not queues:
        raise NotFoundError(f"queue {view.name!r} is not there now")
    chain, _ = await read_chain(settings, clients, queues)
    return await look_at(
        clients.sqs,
        queues[0],
        _examiner(chain, group_id),
        max_messages=page_size,
        wait_s=settings.drain.receive_wait_s,
        progress=_Unwatched(),
    )


def _examiner(
    chain: ResolverChain, group_id: str
) -> Callable[[list[DeadLetter]], Awaitable[list[dict[str, Any]]]]:
    """The messages as shown (those of `group_id` only, when given)."""

    async def examine(letters: list[DeadLetter]) -> list[dict[str, Any]]:
        # Looked at while the leases are held; handed back after.
        found = (_message(chain, letter) for letter in letters)
        return [shown for group, shown in found if not group_id or group == group_id]

    return examine


async def _records(sources: Sources, keys: Sequence[str]) -> dict[str, Record]:
    if not keys:
        return {}
    async with open_ledger(sources.settings.ledger, sources.clients) as ledger:
        return await ledger.read(sorted(set(keys)))
