"""Hypothesis strategies shared by the property tests: arbitrary JSON, as producers might write."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

json_scalars: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)


def json_values(max_leaves: int = 10, max_size: int = 3) -> st.SearchStrategy[Any]:
    """Nested JSON values: scalars inside lists and objects."""
    return st.recursive(
        json_scalars,
        lambda inner: (
            st.lists(inner, max_size=max_size)
            | st.dictionaries(st.text(max_size=8), inner, max_size=max_size)
        ),
        max_leaves=max_leaves,
    )
