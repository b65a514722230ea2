"""Notes on failure groups ("under investigation by ..., ticket ..."), beside the ledger.

One document, `notes/groups`: group id -> the note, who set it and when. Everyone
sees them (the console's overview and group pages, `/api/groups`); operators set and
clear them. Bounded: the NOTES_KEEP most recently set are kept, and each is a line
of at most NOTE_MAX_CHARS.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from retryd.control.store import Body, ControlStore, read_body, update

NOTES_DOC = "notes/groups"
NOTES_KEEP = 1_000
NOTE_MAX_CHARS = 500


@dataclass(frozen=True, slots=True)
class GroupNote:
    """What someone wrote about a failure group."""

    text: str
    by: str
    at_s: float

    def to_json(self) -> Body:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> GroupNote:
        return cls(str(raw.get("text", "")), str(raw.get("by", "")), float(raw.get("at_s", 0.0)))


async def set_note(
    store: ControlStore, group_id: str, text: str, *, by: str, now_s: float | None = None
) -> GroupNote | None:
    """Set (or, with empty text, clear) the note on a group; the note as stored."""
    flat = " ".join(text.split())[:NOTE_MAX_CHARS]
    note = GroupNote(flat, by, time.time() if now_s is None else now_s) if flat else None

    def change(current: Body | None) -> Body:
        notes = {k: v for k, v in dict((current or {}).get("notes", {})).items() if k != group_id}
        if note is not None:
            notes[group_id] = note.to_json()
        newest = sorted(notes.items(), key=lambda item: float(item[1].get("at_s", 0.0)))
        return {"notes": dict(newest[-NOTES_KEEP:])}

    await update(store, NOTES_DOC, change)
    return note


async def load_notes(store: ControlStore) -> dict[str, GroupNote]:
    """Every group's note, by group id."""
    raw = dict((await read_body(store, NOTES_DOC) or {}).get("notes", {}))
    return {group_id: GroupNote.from_json(note) for group_id, note in raw.items()}
