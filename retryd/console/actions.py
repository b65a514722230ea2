"""The console's operator actions, each through the function its CLI command uses.

Pause and resume go through `commands.pause` (as `retryd pause` / `resume`), cancel
through `commands.redrive.cancel_job`; every one is audited with the AWS caller the
console runs as and the person signed in.
"""

from __future__ import annotations

import time
from typing import Any

from retryd.commands.operator_input import OperatorInputError
from retryd.commands.pause import pause_end_s, pause_targets, resume_targets
from retryd.commands.redrive import cancel_job, job_json
from retryd.console.auth import Identity
from retryd.console.documents import Document, Sources


async def pause(sources: Sources, caller: str, who: Identity, raw: dict[str, Any]) -> Document:
    """Pause the targets matching `pattern` (the fields of `retryd pauses --output json`).

    The end is `until_s` (unix seconds), or `for` (a duration like 2h); neither: until
    resumed.
    """
    now_s = time.time()
    pattern = str(raw.get("pattern") or "").strip()
    if not pattern:
        raise OperatorInputError("pattern: name a target ARN glob (or * for every target)")
    until = raw.get("until_s")
    duration = str(raw.get("for") or "").strip() or None
    if until not in (None, ""):
        try:
            until_s: float | None = float(until)
        except (TypeError, ValueError):
            raise OperatorInputError("until_s: give unix seconds") from None
        if until_s is not None and until_s <= now_s:
            raise OperatorInputError("until_s is in the past")
    else:
        until_s = pause_end_s(duration, None, now_s)
    made = await pause_targets(
        sources.store,
        glob=pattern,
        reason=str(raw.get("reason") or ""),
        until_s=until_s,
        who=caller,
        person=who.name,
        now_s=now_s,
    )
    return {"pause": made.to_json()}


async def resume(sources: Sources, caller: str, who: Identity, pause_id: str) -> Document:
    """End the pause with this id (or glob), as `retryd resume` does."""
    removed = await resume_targets(sources.store, selectors=[pause_id], who=caller, person=who.name)
    return {"resumed": [p.to_json() for p in removed]}


async def cancel(sources: Sources, caller: str, who: Identity, job_id: str) -> Document:
    """Cancel a redrive job, as `retryd jobs cancel` does."""
    job = await cancel_job(sources.store, sources.jobs, job_id=job_id, who=caller, person=who.name)
    return {"job": job_json(job)}
