"""The IDs a statement names, as rows (id, org_id) for it to join on; or its org as a value.

Not "t.org_id = $1 AND t.id = ANY($2)": PostgreSQL estimates an org from the column statistics
of ``org_id``, and beside one big org every other org looks empty there, so the planner may take
any index that starts with ``org_id`` and test the IDs as a mere filter, walking the org's whole
slice (an update of one session read all 2,454 sessions of its org, 20 ms under the org's
revision lock; a create with a request ID walked the org's name index). Joined to these rows on
both columns of a key, the probe is parameterized, and a parameter is estimated from the number
of distinct orgs, never as empty. Every row's org_id is the statement's org: the statements stay
scoped by org as any other. A statement that names one row by its key compares ``org_id`` with
``ORG`` instead: the org as the result of a subquery, which the planner estimates the same way
(even "org_id = $1 AND file_id = $2" walked the org's slice of another index of files).
``tests/storage/test_key_probes.py`` runs these statements under EXPLAIN ANALYZE in an org the
statistics missed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, ColumnElement, String, and_, literal, select

# The statement's org ($1), as a value the planner cannot look up in the statistics.
ORG = "(SELECT $1::text)"


def id_rows(ids: str = "$2::text[]", org: str = "$1::text") -> str:
    """A FROM item of the IDs of the text array ``ids`` (SQL), each with ``org`` beside it, in
    the order given; name its columns where it is used (``AS wanted(session_id, org_id)``)."""
    return f"unnest({ids}, array_fill({org}, ARRAY[cardinality({ids})]))"


def keyed(org_id: str, id_column: Column[Any], value: Any) -> ColumnElement[bool]:
    """For SQLAlchemy Core: the org's row whose ``id_column`` is ``value``, the org compared as
    ``ORG`` is (the result of a subquery)."""
    org = select(literal(org_id, String())).scalar_subquery()
    table = id_column.table
    return and_(table.c.org_id == org, id_column == value)
