"""Operator state's storage: small JSON documents with a version, in the ledger's backend.

Pauses, redrive jobs with their per-message results, and audit records are all
documents: a name, a JSON object and a version number. A write names the
version it read (0: "the document must not exist yet") and fails when another
writer got there first, so every read-modify-write (adding a pause, appending an
audit record, moving a job on) is safe between replicas and CLI processes alike.

The backends keep the documents beside the attempt ledger, never mixed with it:
- memory: a dict shared by everything in this process (tests);
- sqlite: a `control_docs` table in the ledger's file, created when missing
  (the ledger's own table and schema version are left alone);
- dynamodb: items in the ledger's table under keys `retryd-control/<name>`, a
  prefix no ledger key is read under (idempotency keys are hashes or declared
  keys; the ledger only ever reads the keys of messages it is judging).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from retryd.errors import ExitCode, RetrydError

# A document's body: a JSON object.
Body = dict[str, Any]
# Read-modify-write attempts before giving up on a document that keeps changing;
# between them a random wait, growing, so that writers in lockstep fall apart.
UPDATE_TRIES = 20
UPDATE_FIRST_WAIT_S = 0.01
UPDATE_MAX_WAIT_S = 0.5


@dataclass(frozen=True, slots=True)
class Doc:
    """One stored document and the version it was read at (>= 1)."""

    body: Body
    version: int


class ControlError(RetrydError):
    """Operator state could not be read or written: the command stops and says why."""

    exit_code = ExitCode.CYCLE_FAILED


class ControlStore(Protocol):
    """Versioned JSON documents by name."""

    # "memory", "sqlite" or "dynamodb", as the ledger's.
    backend: str

    async def get(self, names: Sequence[str]) -> dict[str, Doc]:
        """The documents that exist among `names`, read consistently."""
        ...

    async def put(self, name: str, body: Body, *, version: int, ttl_s: float | None) -> bool:
        """Write `body` over `version` (0: only if absent); False when it changed meanwhile.

        `ttl_s` lets the backend forget the document after that long (None: keep it).
        """
        ...

    def read_model(self) -> Any:
        """The console's read model (a control.readmodel.ReadModel) as this backend keeps it.

        Typed by `readmodel.read_model_of`, which every caller goes through: naming the
        type here would make the two modules import each other.
        """
        ...


async def update(
    store: ControlStore,
    name: str,
    change: Callable[[Body | None], Body | None],
    *,
    ttl_s: float | None = None,
) -> Body | None:
    """Read `name`, apply `change`, write it back; retried on a lost race. The body written.

    `change` gets the current body (None when absent) and returns the new one, or
    None to write nothing.
    """
    for tries in range(UPDATE_TRIES):
        if tries:
            ceiling_s = min(UPDATE_MAX_WAIT_S, UPDATE_FIRST_WAIT_S * 2**tries)
            await anyio.sleep(random.uniform(0, ceiling_s))  # noqa: S311 - jitter, not secrecy
        found = (await store.get([name])).get(name)
        new = change(dict(found.body) if found else None)
        if new is None:
            return found.body if found else None
        if await store.put(name, new, version=found.version if found else 0, ttl_s=ttl_s):
            return new
    raise ControlError(f"{store.backend} control document {name!r} kept changing; try again")


async def read_body(store: ControlStore, name: str) -> Body | None:
    found = (await store.get([name])).get(name)
    return found.body if found else None


async def read_bodies(store: ControlStore, names: Sequence[str]) -> Mapping[str, Body]:
    found = await store.get(names)
    return {name: doc.body for name, doc in found.items()}
