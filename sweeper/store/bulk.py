"""Writes of one PostgreSQL transaction that nobody waits for, held and sent as one statement per kind.

On PostgreSQL most of a statement's cost to the coordinator is the driver's own work per statement
(converting the query, dumping its parameters, the pipeline's bookkeeping and a socket write), not
the database's. A busy server's batch of calls writes, per metric report, the points and the
trial's summary: two statements each. Held in the transaction's :class:`~sweeper.store.prepared.Pipeline`
instead, the points of all of them go as one INSERT, and the trial updates that set the same
columns as one UPDATE; each takes every column as one array (``unnest``), so one SQL text serves
any number of rows.

What is held goes to the server before the transaction's next statement of any other kind (a read,
or a write not held), so every statement still sees every write made before it. Within what is
held, each kind's rows run together, in the order the kinds were first held; a write that must
not run before one already held (see :class:`~sweeper.store.prepared.Pipeline`) sends what is
held first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import String, Table, text
from sqlalchemy.dialects import postgresql

from sweeper.store.prepared import Prepared

_DIALECT = postgresql.dialect()


class Bulk:
    """How the rows of one write go to PostgreSQL as one statement.

    ``key``: the parameter whose value names the row the write changes (for an UPDATE, the value
    of its ``id``; for an INSERT, the new row's). ``needs``: for rows that need another table's
    row to exist (a foreign key), that table and the parameter naming its row."""

    def __init__(
        self,
        table: Table,
        *,
        inserts: bool,
        key: str | None = None,
        needs: tuple[str, str] | None = None,
        suffix: str = "",
    ) -> None:
        self.table = table
        self.inserts = inserts
        self.key = key
        self.needs = needs
        self._suffix = suffix  # after an INSERT's rows: ON CONFLICT ...
        # Each column's conversion of a value (ints into DOUBLE PRECISION columns, ...).
        self._convert = {c.name: c.type.bind_processor(_DIALECT) for c in table.columns}
        self._statements: dict[tuple[str, ...], Prepared] = {}  # by the columns set

    @classmethod
    def insert(
        cls,
        table: Table,
        *,
        key: str | None = None,
        needs: tuple[str, str] | None = None,
        on_conflict_do_nothing: bool = False,
    ) -> Bulk:
        suffix = " ON CONFLICT DO NOTHING" if on_conflict_do_nothing else ""
        return cls(table, inserts=True, key=key, needs=needs, suffix=suffix)

    @classmethod
    def update(cls, table: Table, *, key: str) -> Bulk:
        return cls(table, inserts=False, key=key)

    def arrays(self, columns: tuple[str, ...], rows: list[Mapping[str, Any]]) -> dict[str, list[Any]]:
        """The parameters of :meth:`statement` for ``rows``, which all set ``columns``."""
        params: dict[str, list[Any]] = {}
        for name in columns:
            values = [row[name] for row in rows]
            convert = self._convert.get(name)
            params[name] = values if convert is None else [v if v is None else convert(v) for v in values]
        return params

    def statement(self, columns: tuple[str, ...]) -> Prepared:
        """The one statement for any number of rows that set ``columns`` (the key among them for
        an UPDATE): ``columns`` are its parameters, each an array."""
        found = self._statements.get(columns)
        if found is None:
            found = self._statements.setdefault(columns, Prepared(text(self._sql(columns))))
        return found

    def _sql(self, columns: tuple[str, ...]) -> str:
        quote = _DIALECT.identifier_preparer.quote
        table = quote(self.table.name)
        # Strings as TEXT: a cast to VARCHAR(n) would cut a longer value short, where setting the
        # column raises, as each row's own statement did.
        types = {
            c.name: "TEXT" if isinstance(c.type, String) else c.type.compile(dialect=_DIALECT)
            for c in self.table.columns
        }
        if self.inserts:
            arrays = ", ".join(f"CAST(:{name} AS {types[name]}[])" for name in columns)
            names = ", ".join(quote(name) for name in columns)
            return f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}){self._suffix}"
        typed = {name: types["id" if name == self.key else name] for name in columns}
        arrays = ", ".join(f"CAST(:{name} AS {typed[name]}[])" for name in columns)
        aliases = ", ".join(quote(name) for name in columns)
        changes = ", ".join(f"{quote(name)} = v.{quote(name)}" for name in columns if name != self.key)
        return (
            f"UPDATE {table} SET {changes} FROM unnest({arrays}) AS v({aliases}) "
            f"WHERE {table}.id = v.{quote(self.key)}"
        )
