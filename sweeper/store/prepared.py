"""The agent protocol's statements, compiled once and run straight on the database's driver.

On SQLite a statement of the agent protocol takes a few microseconds, and SQLAlchemy's work
around each execution (the compiled-cache lookup, parameter and result set-up, events) several
times that; a trial's lifecycle runs about twenty of them under the database's write lock. On
PostgreSQL that work is about half the processor time of a statement (40 of 80 microseconds),
and the coordinator's process, not the database, is what a busy sweep waits for. A
:class:`Prepared` statement is compiled once per set of parameter names and runs on the driver
inside the caller's transaction, with the conversions SQLAlchemy applies to its parameters; it
refuses a statement whose results SQLAlchemy would convert. A driver's error reaches the caller
as SQLAlchemy raises it.

On PostgreSQL a transaction may also carry a :class:`Pipeline`: a write whose result nobody
waits for (:meth:`Prepared.send`) is then queued, and goes to the server with the next
statement whose result is needed, in one round trip instead of one each. A write with a bulk
form is held until then, and goes with the rows held of its kind as one statement
(:mod:`sweeper.store.bulk`).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

if TYPE_CHECKING:
    from sweeper.store.bulk import Bulk


class _Form:
    """One compiled form: SQL with ``?`` markers, and where each marker's value comes from."""

    def __init__(
        self,
        sql: str,
        fields: Sequence[tuple[str, Callable[[Any], Any] | None]],
        defaults: Mapping[str, Any],
        named: bool,
    ) -> None:
        self.sql = sql
        self.fields = tuple(fields)  # each marker's parameter, and its type's conversion if any
        self.defaults = dict(defaults)  # values the statement carries itself (literals)
        self.named = named  # markers by name (PostgreSQL's %(name)s), else by position (SQLite's ?)
        self.row_type: Any = None  # the result's row type, made at the first result

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        defaults = self.defaults
        out = []
        for name, convert in self.fields:
            value = params[name] if name in params else defaults[name]
            out.append(value if convert is None or value is None else convert(value))
        if self.named:
            return {name: value for (name, _), value in zip(self.fields, out, strict=True)}
        return tuple(out)

    def rows(self, cursor: Any) -> list[Any]:
        found = cursor.fetchall()
        if self.row_type is None:
            self.row_type = namedtuple("Row", [d[0] for d in cursor.description])  # type: ignore[misc]
        make = self.row_type._make
        return [make(row) for row in found]


class Prepared:
    """A statement to run many times; columns it sets (INSERT, UPDATE) follow the parameters.
    ``bulk``: how its rows go as one statement where a :class:`Pipeline` holds them
    (:mod:`sweeper.store.bulk`)."""

    def __init__(self, statement: ClauseElement, *, bulk: Bulk | None = None) -> None:
        self.statement = statement
        self.bulk = bulk
        self._forms: dict[tuple[str, frozenset[str]], _Form] = {}  # by database and parameter names

    def all(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        return self._rows(conn, *self._start(conn, params))

    def _start(self, conn: Connection, params: Mapping[str, Any]) -> tuple[_Form, Any, Mapping[str, Any]]:
        form = self._form(conn, params)
        return form, _execute(conn, form.sql, form.args(params)), params

    def _rows(self, conn: Connection, form: _Form, cursor: Any, params: Mapping[str, Any]) -> list[Any]:
        try:
            return form.rows(cursor)
        except conn.dialect.loaded_dbapi.Error as exc:
            sql = form.sql
            if (pipeline := Pipeline.of(conn)) is not None and pipeline.active:
                sql += " (or a write sent before it in the pipeline)"
            raise _as_sqlalchemy_error(conn, sql, params, exc) from exc

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        found = self.all(conn, params)
        return found[0] if found else None

    def scalar(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The one value of the one row it returns."""
        found = self.all(conn, params)
        if len(found) != 1:
            raise ValueError(f"expected one row, got {len(found)}")
        return found[0][0]

    def run(self, conn: Connection, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> int:
        """Run it, once or (a list of parameter sets) once per set, the same columns in each; the
        number of rows it changed (out of a :class:`Pipeline`, which gives no count at once)."""
        close_pipeline(conn)
        cursor = self._execute(conn, params)
        return 0 if cursor is None else int(cursor.rowcount)

    def send(self, conn: Connection, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        """Run it as :meth:`run` does where the caller needs no result: in a transaction with a
        :class:`Pipeline`, queued until a statement whose result is needed (or the pipeline's end)
        takes it to the server; its error, should it fail, is raised there. A statement with a
        ``bulk`` form is held until then, and goes with the others held of its kind as one."""
        pipeline = Pipeline.of(conn)
        if pipeline is not None:
            if self.bulk is not None:
                pipeline.hold(conn, self.bulk, params)
                return
            pipeline.start(conn)
        self._execute(conn, params)

    def _execute(self, conn: Connection, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Any:
        many = not isinstance(params, Mapping)
        if many and not params:
            return None
        if many and len(params) == 1:  # psycopg runs executemany as a pipeline: more round trips
            params, many = params[0], False  # type: ignore[index]
        form = self._form(conn, params[0] if many else params)  # type: ignore[index]
        if many:
            return _execute(conn, form.sql, [form.args(p) for p in params], many=True)  # type: ignore[union-attr]
        return _execute(conn, form.sql, form.args(params))  # type: ignore[arg-type]

    def _form(self, conn: Connection, params: Mapping[str, Any]) -> _Form:
        keys = frozenset(params)
        form = self._forms.get((conn.dialect.name, keys))
        if form is None:
            compiled = self.statement.compile(dialect=conn.dialect, column_keys=sorted(keys))
            named = compiled.positiontup is None
            names = list(compiled.binds) if named else compiled.positiontup or ()
            if "POSTCOMPILE" in compiled.string or compiled.escaped_bind_names:
                raise TypeError(f"a statement with expanding or escaped parameters: {compiled.string}")
            # Rows come back as the driver gives them: no column may need SQLAlchemy's conversion
            # (Boolean, DateTime, JSON, ... would read differently here than on PostgreSQL).
            types = _result_types(self.statement)
            converted = [t for t in types if _reads_converted(t, conn.dialect)]
            if converted:
                raise TypeError(
                    f"a statement reading columns SQLAlchemy converts ({converted}): {compiled.string}"
                )
            binds = compiled.binds
            missing = [n for n in names if n not in keys and binds[n].required]
            if missing:
                raise ValueError(f"no value for parameter(s) {', '.join(missing)}")
            defaults = {n: binds[n].value for n in names if n not in keys}
            # The conversions SQLAlchemy applies to these parameters' types (ints into REAL columns).
            fields = [(n, binds[n].type.bind_processor(conn.dialect)) for n in names]
            form = _Form(compiled.string, fields, defaults, named)
            form = self._forms.setdefault((conn.dialect.name, keys), form)
        return form


def _execute(conn: Connection, sql: str, params: Any, *, many: bool = False) -> Any:
    """Run ``sql`` on the driver, inside ``conn``'s transaction; its errors raised as SQLAlchemy
    raises them (OperationalError, IntegrityError, ...), so the store reports them as it does for
    any statement."""
    if (pipeline := Pipeline.of(conn)) is not None and pipeline.holds:  # what is held goes first
        pipeline.release(conn)
    with _driver_errors(conn, sql, params):
        cursor = conn.connection.driver_connection.cursor()
        if many:
            cursor.executemany(sql, params)
        else:
            cursor.execute(sql, params)
        return cursor


def _as_sqlalchemy_error(conn: Connection, sql: str, params: Any, exc: Exception) -> Exception:
    # A connection the database dropped fails its rollback too, and the pool then discards it
    # and every one it opened before (tests/test_store_postgres.py).
    return DBAPIError.instance(sql, params, exc, conn.dialect.loaded_dbapi.Error)


@contextmanager
def _driver_errors(conn: Connection, sql: str, params: Any = ()) -> Iterator[None]:
    """Driver errors of running ``sql`` (or a pipeline's own step) raised as SQLAlchemy raises them."""
    try:
        yield
    except conn.dialect.loaded_dbapi.Error as exc:
        raise _as_sqlalchemy_error(conn, sql, params, exc) from exc


def read_together(conn: Connection, *reads: tuple[Prepared, Mapping[str, Any]]) -> list[list[Any]]:
    """The rows of each (statement, parameters), in order. In a transaction with a
    :class:`Pipeline`, they go to the server in one round trip, and still run one after the
    other: a read after a ``FOR UPDATE`` lock sees what committed while the lock waited (on
    PostgreSQL a statement reads from a snapshot taken when it starts)."""
    pipeline = Pipeline.of(conn)
    if pipeline is None:
        return [statement.all(conn, params) for statement, params in reads]
    pipeline.start(conn)
    started = [(statement, statement._start(conn, params)) for statement, params in reads]
    return [statement._rows(conn, *each) for statement, each in started]


class Pipeline:
    """A PostgreSQL transaction's pipeline (psycopg's pipeline mode), opened at the first write
    sent without waiting (:meth:`Prepared.send`) or reads sent together (:func:`read_together`).
    Prepared statements run in it (``all``, ``first`` and ``scalar`` fetch their rows, which
    takes what was queued before them to the server in the same round trip); it is closed
    before SQLAlchemy executes a statement, since SQLAlchemy reads results as soon as it
    executes, which a pipeline does not give."""

    _KEY = "sweeper_pipeline"  # in the connection's info, while the transaction lasts

    def __init__(self, conn: Connection) -> None:
        self._driver = conn.connection.driver_connection
        # Kept: once SQLAlchemy has invalidated a connection, reading its info raises.
        self._info = conn.info
        self._open: Any = None  # psycopg's pipeline context, while in pipeline mode
        self._held = _Held()  # writes held to go as one statement per kind (Prepared.send)

    @classmethod
    def attach(cls, conn: Connection) -> Pipeline:
        """A pipeline for the transaction ``conn`` is in, until :meth:`detach`."""
        pipeline = cls(conn)
        pipeline._info[cls._KEY] = pipeline
        return pipeline

    @classmethod
    def of(cls, conn: Connection) -> Pipeline | None:
        return conn.info.get(cls._KEY)

    @property
    def active(self) -> bool:
        return self._open is not None

    def start(self, conn: Connection) -> None:
        """Into pipeline mode, if not there yet."""
        if self._open is None:
            with _driver_errors(conn, "(pipeline start)"):  # a connection the database dropped
                opened = self._driver.pipeline()
                opened.__enter__()
            self._open = opened

    @property
    def holds(self) -> bool:
        return bool(self._held)

    def hold(
        self, conn: Connection, bulk: Bulk, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> None:
        """Hold the rows ``params`` of a write with a ``bulk`` form, to go with the next statement
        of another kind (:func:`_execute`) or the pipeline's end."""
        for row in [params] if isinstance(params, Mapping) else params:
            if not self._held.add(bulk, row):  # it updates a row a held update changes: that first
                self.release(conn)
                self._held.add(bulk, row)

    def release(self, conn: Connection) -> None:
        """Send what is held, each kind as one statement, queued as :meth:`Prepared.send` queues."""
        self.start(conn)
        for statement, params in self._held.take():
            statement._execute(conn, params)

    def close(self, conn: Connection) -> None:
        """Leave pipeline mode: what is held and queued runs, and its errors are raised here."""
        if self._held:
            self.release(conn)
        with _driver_errors(conn, "(pipeline end)"):
            self._leave()

    def detach(self) -> None:
        """Leave pipeline mode, should :meth:`close` not have (after an error: what is queued may
        still run here, and the transaction's rollback undoes it; what is held is dropped)."""
        self._held.take()
        self._info.pop(self._KEY, None)
        with suppress(Exception):  # the error that got here was raised already
            self._leave()

    def _leave(self) -> None:
        opened, self._open = self._open, None
        if opened is not None:
            opened.__exit__(None, None, None)


class _Held:
    """The rows a :class:`Pipeline` holds, by bulk form and set of columns, in the order first held.

    Each kind's rows run together, so a row may run before rows held ahead of it: that is safe
    unless the two act on one row. A row another kind wrote (an insert, then an update), an update
    of a row already updated, or a row that needs one inserted (a metric point of a new trial)
    therefore sends what is held before it is held."""

    def __init__(self) -> None:
        self._rows: dict[tuple[Bulk, tuple[str, ...]], list[Mapping[str, Any]]] = {}
        self._written: dict[tuple[str, Any], Bulk] = {}  # each row held writes: by whom

    def __bool__(self) -> bool:
        return bool(self._rows)

    def add(self, bulk: Bulk, row: Mapping[str, Any]) -> bool:
        """Hold ``row``; False, holding nothing, where it must wait for what is held to be sent."""
        if bulk.needs is not None:
            table, column = bulk.needs
            writer = self._written.get((table, row[column]))
            if writer is not None and writer.inserts:
                return False
        if bulk.key is not None:
            written = (bulk.table.name, row[bulk.key])
            writer = self._written.get(written)
            if writer is not None and (writer is not bulk or not bulk.inserts):
                return False
            self._written[written] = bulk
        self._rows.setdefault((bulk, tuple(sorted(row))), []).append(row)
        return True

    def take(self) -> list[tuple[Prepared, dict[str, list[Any]]]]:
        """What is held, as statements and their parameters, in order; nothing is held after."""
        held, self._rows = self._rows, {}
        self._written.clear()
        return [
            (bulk.statement(columns), bulk.arrays(columns, rows)) for (bulk, columns), rows in held.items()
        ]


@contextmanager
def pipelined(conn: Connection) -> Iterator[Pipeline]:
    """A :class:`Pipeline` for the PostgreSQL transaction ``conn`` is in, for the block: writes
    nobody waits for go with the next read. The caller closes it where the block succeeds (its
    queued writes' errors are raised there); otherwise it is left without closing."""
    pipeline = Pipeline.attach(conn)
    try:
        yield pipeline
    finally:
        pipeline.detach()


def close_pipeline(conn: Connection, *_: Any) -> None:
    """Before SQLAlchemy executes a statement on ``conn`` (an engine event): out of pipeline mode."""
    if (pipeline := Pipeline.of(conn)) is not None:
        pipeline.close(conn)


def _result_types(statement: ClauseElement) -> list[Any]:
    """The types of the columns a SELECT, or an INSERT/UPDATE ... RETURNING, gives back."""
    columns = getattr(statement, "selected_columns", None)
    if columns is not None:
        return [column.type for column in columns]
    return [d["type"] for d in getattr(statement, "returning_column_descriptions", ())]


def _reads_converted(type_: Any, dialect: Any) -> bool:
    """Whether SQLAlchemy converts what the driver reads for a column of ``type_``; a type it
    cannot tell for (untyped, or unknown to PostgreSQL's registry) counts as converted."""
    try:
        code = _type_code(type_, dialect)
        return type_.dialect_impl(dialect).result_processor(dialect, code) is not None
    except Exception:
        return True


def _type_code(type_: Any, dialect: Any) -> int | None:
    """The type code the driver reports for a column of ``type_`` (PostgreSQL's type OID); its
    result processor depends on it there. SQLite reports none."""
    if dialect.name != "postgresql":
        return None
    from psycopg.postgres import types  # PostgreSQL's own type registry: name to OID

    info = types.get(type_.compile(dialect=dialect).split("(")[0].lower())
    if info is None:
        raise TypeError(f"no PostgreSQL type code for {type_!r}")
    return int(info.oid)


def run_on_driver(conn: Connection, sql: str) -> None:
    """One statement without parameters, straight on the driver."""
    _execute(conn, sql, ())
