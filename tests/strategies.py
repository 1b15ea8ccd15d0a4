"""Hypothesis strategies shared by the unit and the end-to-end tests."""

from __future__ import annotations

from hypothesis import strategies as st

COLUMNS = ("event_id", "user_id", "name", "ts")


@st.composite
def always_true(draw: st.DrawFn, depth: int = 0) -> str:
    """A predicate true (or NULL-proof true) for every row of analytics.events."""
    col = draw(st.sampled_from(COLUMNS))
    atoms = [
        f"{col} IS NOT NULL OR {col} IS NULL",
        f"({col} IS NULL) IS NOT NULL",
        "event_id > 0 OR event_id <= 0",
        "event_id IS NOT NULL",
        "STARTS_WITH(name, '')",
        "name LIKE CONCAT('%', '')",
        "LENGTH(name) >= 0",
        "ts <= CURRENT_TIMESTAMP()",
        "user_id BETWEEN -1 AND 100000",
        f"COALESCE(CAST({col} AS STRING), '') >= ''",
        "event_id IN (SELECT event_id FROM `demo-project.analytics.events`)",
        "EXISTS (SELECT 1 FROM `demo-project.analytics.events`)",
        "MOD(event_id, 2) IN (0, 1)",
        "ABS(user_id) >= 0",
    ]
    atom = draw(st.sampled_from(atoms))
    if depth >= 2 or draw(st.booleans()):
        return atom
    other = draw(always_true(depth + 1))

    shape = draw(
        st.sampled_from(
            [
                "({a}) AND ({b})",
                "({a}) OR ({b})",
                "NOT NOT ({a})",
                "CASE WHEN ({b}) THEN ({a}) ELSE ({a}) END",
                "({a}) OR event_id = -7",
            ]
        )
    )
    return shape.format(a=atom, b=other)
