"""control/notes.py: a note per failure group, one line, bounded, cleared by empty text."""

from __future__ import annotations

import anyio

from retryd.control.memory import MemoryControlStore, MemoryDocs
from retryd.control.notes import NOTE_MAX_CHARS, NOTES_KEEP, load_notes, set_note


def test_a_note_is_one_clipped_line_and_empty_text_clears_it() -> None:
    """Whitespace is folded, the text clipped; "" removes the group's note and no other."""

    async def run() -> None:
        store = MemoryControlStore(MemoryDocs())
        made = await set_note(store, "g1", "under\ninvestigation  " + "x" * 900, by="ana")
        assert made is not None
        assert made.text.startswith("under investigation x")
        assert len(made.text) == NOTE_MAX_CHARS
        await set_note(store, "g2", "ticket OPS-2", by="bo")
        assert await set_note(store, "g1", "  ", by="ana") is None
        notes = await load_notes(store)
        assert list(notes) == ["g2"]
        assert (notes["g2"].text, notes["g2"].by) == ("ticket OPS-2", "bo")

    anyio.run(run)


def test_only_the_most_recently_set_notes_are_kept() -> None:
    """Past NOTES_KEEP notes, the oldest set goes first."""

    async def run() -> None:
        store = MemoryControlStore(MemoryDocs())
        for n in range(NOTES_KEEP + 2):
            await set_note(store, f"g{n}", "note", by="ana", now_s=1_000.0 + n)
        notes = await load_notes(store)
        assert len(notes) == NOTES_KEEP
        assert "g0" not in notes
        assert "g1" not in notes
        assert f"g{NOTES_KEEP + 1}" in notes

    anyio.run(run)
