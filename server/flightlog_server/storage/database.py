"""The connection pool and transactions: one place that knows how to talk to PostgreSQL safely.

* One transaction per request, owned by the caller (``Database.transaction`` / ``Database.run``);
  repositories flush but never commit.
* Work is bounded by the call's deadline: when the caller has less time left than the default
  statement timeout, the transaction sets ``statement_timeout`` to what is left.
* Serialization failures and deadlocks are retried here, a few times with jitter, so callers
  never see them.
* A database that cannot be reached surfaces as ``DatabaseUnavailable`` quickly (short connect
  timeout, dead pooled connections detected by pre-ping), and the pool recovers by itself when
  PostgreSQL comes back.

Two ways to talk to the database share one pool. ``run``/``read`` hand the work SQLAlchemy's
``AsyncSession``/``AsyncConnection`` (statements built with Core, convenient for the catalog and
the definitions). ``write``/``query`` hand it a :class:`Tx`: the pooled psycopg connection itself,
in pipeline mode, running plain SQL with ``$n`` placeholders in binary. The hot paths (every
write of sessions, GetSession) use the latter: the profile of a create showed most of the server's
CPU in SQLAlchemy's per-statement machinery (compiling, caching, the greenlet bridge, result
objects) and in one network round trip per statement; a ``Tx`` sends BEGIN, the deadline's
``SET LOCAL`` and the first statement in one round trip, and the last statement with COMMIT in
another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg.errors
from psycopg import AsyncRawCursor
from psycopg.types.json import Jsonb
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from flightlog_server import request_context
from flightlog_server.domain.errors import DatabaseUnavailable, DeadlineExceeded, LimitExceeded
from flightlog_server.storage.urls import sqlalchemy_url

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[Any, ...]

# SQLSTATEs that mean "run the transaction again".
_RETRYABLE = {"40001", "40P01"}  # serialization_failure, deadlock_detected
# SQLSTATE classes that mean "the database cannot serve now": connection exception, insufficient
# resources, operator intervention, system error. Other errors are bugs, reported as INTERNAL.
_UNAVAILABLE_CLASSES = {"08", "53", "57", "58"}


class StaleRecord(Exception):
    """A statement met a stored session record that an older encoding wrote (SQLSTATE FL001,
    raised by ``flightlog_stale_record``); the caller rewrites such records and reads again."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id}'s stored record was written by an older encoding")
        self.session_id = session_id


class RetryTransaction(Exception):
    """Raised by a repository when what it read changed under it; the transaction is re-run."""


class Tx:
    """A pooled psycopg connection: one transaction in pipeline mode (``Database.write``) or
    autocommit reads (``Database.query``). Statements are plain SQL with ``$n`` placeholders;
    rows come back as tuples, decoded from PostgreSQL's binary format.

    In a transaction a statement is sent when it is executed and its result read when needed
    (``send``), so statements whose results are not needed in between travel together, COMMIT
    included; psycopg prepares a statement on a connection after a few executions, so a hot
    statement is parsed and planned once.
    """

    def __init__(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self.connection = connection
        self.committing = False
        # Leaves pipeline mode (set by Database while the transaction is in it).
        self._leave_pipeline: Callable[[], Awaitable[None]] | None = None

    async def send(self, sql: str, params: Sequence[Any] = ()) -> Pending:
        """Sends a statement; its result is read from the returned ``Pending`` when needed (an
        error surfaces then, or at COMMIT)."""
        if self._leave_pipeline is not None:
            params = _predumped(params)
            if _approximate_size(params) > _MAX_PIPELINED_BYTES:
                # psycopg can stall sending a large message in pipeline mode (its issue #685;
                # here over Unix sockets: PostgreSQL waits in ClientRead for the rest of a
                # 900 KiB BatchCreateSessions). The transaction goes on outside pipeline mode:
                # leaving it sends and reads what is pending, so earlier results stay readable.
                leave, self._leave_pipeline = self._leave_pipeline, None
                await leave()
        cursor = AsyncRawCursor(self.connection)
        await cursor.execute(sql, params, binary=True)
        return Pending(cursor)

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await (await self.send(sql, params)).rows()

    async def row(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await (await self.send(sql, params)).row()

    async def one(self, sql: str, params: Sequence[Any] = ()) -> Row:
        return await (await self.send(sql, params)).one()

    async def run(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Sends a statement whose result is not needed (an error surfaces by the next read or
        the commit at the latest)."""
        await self.send(sql, params)

    async def commit(self) -> None:
        """Commits now (``Database.write`` commits at the end otherwise); results of statements
        sent before stay readable from their ``Pending``."""
        self.committing = True
        await self.connection.commit()


# Statements whose parameters exceed this go outside pipeline mode (see ``Tx.send``).
_MAX_PIPELINED_BYTES = 64 * 1024


def _predumped(params: Sequence[Any]) -> Sequence[Any]:
    """``params`` with every ``Jsonb`` dumped now (and not again by psycopg), so that its size
    is known."""
    if not any(isinstance(p, Jsonb) for p in params):
        return params
    out: list[Any] = []
    for p in params:
        if isinstance(p, Jsonb) and not isinstance(p, _Dumped):
            p = _Dumped(p)
        out.append(p)
    return out


class _Dumped(Jsonb):
    """A ``Jsonb`` whose JSON text is made once."""

    def __init__(self, value: Jsonb) -> None:
        self.text = (value.dumps or json.dumps)(value.obj)
        super().__init__(value.obj, dumps=lambda _: self.text)


def _approximate_size(params: Sequence[Any]) -> int:
    """About how many bytes ``params`` take on the wire (text, bytes, JSON, their arrays)."""
    size = 0
    for p in params:
        if isinstance(p, str | bytes):
            size += len(p)
        elif isinstance(p, _Dumped):
            size += len(p.text)
        elif isinstance(p, list):
            size += sum(len(x) + 4 for x in p if isinstance(x, str | bytes)) + 8 * len(p)
    return size


class Pending:
    """The result of a statement sent by ``Tx.send``, read when needed."""

    def __init__(self, cursor: AsyncRawCursor[Row]) -> None:
        self._cursor = cursor

    async def rows(self) -> list[Row]:
        return await self._cursor.fetchall()

    async def row(self) -> Row | None:
        return await self._cursor.fetchone()

    async def one(self) -> Row:
        row = await self._cursor.fetchone()
        assert row is not None, "the statement returned no row"
        return row


@dataclass(frozen=True)
class DatabaseSettings:
    url: str
    pool_size: int = 10
    max_overflow: int = 10
    connect_timeout_s: int = 3
    pool_timeout_s: float = 5.0
    statement_timeout_ms: int = 30_000
    max_attempts: int = 5


class Database:
    """The engine and its pool, plus the transaction helpers every repository call goes through."""

    def __init__(self, settings: DatabaseSettings) -> None:
        self.settings = settings
        self.engine = create_async_engine(
            sqlalchemy_url(settings.url),
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout=settings.pool_timeout_s,
            # No pre-ping (it would cost a round trip per call): a connection found dead is
            # invalidated with every older one, and the work is re-run on a fresh connection
            # when it failed before COMMIT (see ``transaction``).
            pool_pre_ping=False,
            pool_recycle=1800,
            connect_args={
                "connect_timeout": settings.connect_timeout_s,
                # JIT compilation off for this server's sessions only: its statements are short
                # and planned per page, and a page whose cost estimate crossed the JIT threshold
                # spent ~300 ms compiling for a few ms of work (filtered listings, measured).
                "options": f"-c statement_timeout={settings.statement_timeout_ms} -c jit=off",
                "application_name": "flightlog",
            },
        )
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One transaction; committed when the block exits normally, rolled back otherwise."""
        with translate_errors():
            async with self._sessions() as session, session.begin():
                try:
                    await self._bound_by_deadline(session)
                    yield session
                except sa_exc.DBAPIError as e:
                    if e.connection_invalidated:
                        # Lost before COMMIT was sent: nothing was committed, so re-running the
                        # work on a fresh connection is safe.
                        raise _StaleConnection(str(e.orig)) from e
                    raise

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads that take one statement: autocommit, so no BEGIN/COMMIT round
        trips, and no ORM session. Falls back to a transaction when the call's deadline needs a
        statement timeout."""
        left = request_context.seconds_left()
        short_deadline = left is not None and left * 1000 < self.settings.statement_timeout_ms
        with translate_errors():
            async with self.engine.connect() as connection:
                try:
                    if short_deadline:
                        await connection.begin()  # rolled back when the connection goes back
                        await self._bound_by_deadline(connection)
                    else:
                        # Autocommit is switched on here, inside the block that returns the
                        # connection, and not by an engine-wide execution option: SQLAlchemy
                        # applies that one while checking the connection out, before anything
                        # owns it, and psycopg yields to the event loop there (it does in every
                        # call once the loop has been busy for 5 ms). A stream cancelled at that
                        # point lost the connection: nothing returned it to the pool, and the
                        # garbage collector dropped it later with SQLAlchemy's "non-checked-in
                        # connection" warning. The switch itself runs to its end even when the
                        # call is cancelled meanwhile, so that the pool always gets the reset
                        # back to transactions that SQLAlchemy registers once it is done.
                        await _to_completion(
                            connection.execution_options(isolation_level="AUTOCOMMIT")
                        )
                    yield connection
                except sa_exc.DBAPIError as e:
                    if e.connection_invalidated:
                        raise _StaleConnection(str(e.orig)) from e
                    raise

    @asynccontextmanager
    async def _pipelined(self, *, transaction: bool) -> AsyncIterator[Tx]:
        """A pooled connection's psycopg connection: in a transaction, in pipeline mode, that
        commits when the block exits normally; or in autocommit mode, where each statement is
        read as it is sent. (Autocommit reads take one statement, rarely two that depend on each
        other; entering and leaving pipeline mode cost them more than it saved: 7 % of
        GetSession's server time in a profile.)"""
        with translate_errors():
            # The connection is checked out inside the block that always returns it, and
            # switched to autocommit there too, to completion (see ``reading``).
            async with self.engine.connect() as connection:
                if not transaction:
                    await _to_completion(connection.execution_options(isolation_level="AUTOCOMMIT"))
                fairy = await connection.get_raw_connection()
                driver: psycopg.AsyncConnection[Any] | None = fairy.driver_connection
                assert driver is not None
                tx = Tx(driver)
                try:
                    if transaction:
                        async with contextlib.AsyncExitStack() as pipeline:
                            await pipeline.enter_async_context(driver.pipeline())
                            tx._leave_pipeline = pipeline.aclose
                            await self._bound_by_deadline_raw(tx)
                            yield tx
                            await tx.commit()
                    else:
                        yield tx
                except BaseException as error:
                    await self._recover(connection, fairy, driver, error, tx.committing)
                    raise

    async def _recover(
        self,
        connection: AsyncConnection,
        fairy: Any,
        driver: psycopg.AsyncConnection[Any],
        error: BaseException,
        committing: bool,
    ) -> None:
        """After a failure: roll back; or, when the connection is broken, drop it with every
        pooled connection opened before it (as SQLAlchemy does on a disconnect it sees itself)
        and, when COMMIT was not sent yet, have the work re-run on a fresh connection."""
        if driver.broken or driver.closed:
            # Marks the pool's older connections stale (replaced at checkout); this connection
            # itself is closed by ``invalidate``, which runs the adapter's close where it can
            # await (the pool's own close of it, called from here, logged MissingGreenlet).
            self.engine.sync_engine.pool._invalidate(fairy, error, _checkin=False)
            await connection.invalidate(error)
            if not committing and isinstance(error, psycopg.OperationalError):
                raise _StaleConnection(str(error)) from error
            return
        if driver.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                await driver.rollback()
            except psycopg.Error:
                await connection.invalidate(error)

    async def write(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Runs ``work`` in a transaction on a :class:`Tx`, retried like ``run``."""
        return await self._attempt(lambda: self._pipelined(transaction=True), work)

    async def query(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Runs read ``work`` on an autocommit :class:`Tx` (each statement sees what is committed
        when it runs), retried like ``run``. Reads bounded by a short deadline run in a
        transaction instead, for its ``SET LOCAL statement_timeout``."""
        left = request_context.seconds_left()
        short = left is not None and left * 1000 < self.settings.statement_timeout_ms
        return await self._attempt(lambda: self._pipelined(transaction=short), work)

    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Runs ``work`` in a transaction, re-running it on serialization failures, deadlocks,
        a connection found dead before COMMIT, and ``RetryTransaction``. ``work`` must be safe
        to repeat (it only touches the database)."""
        return await self._attempt(self.transaction, work)

    async def read(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Runs one-statement read ``work`` without a transaction (see ``reading``)."""
        return await self._attempt(self.reading, work)

    async def _attempt(
        self,
        scope: Callable[[], AbstractAsyncContextManager[Any]],
        work: Callable[[Any], Awaitable[T]],
    ) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                async with scope() as session:
                    return await work(session)
            except _StaleConnection as e:
                # The pool has dropped its old connections; one retry reaches the database if
                # it is back, and fails fast (connection refused) if it is not.
                if attempt >= 2:
                    raise DatabaseUnavailable("the database connection was lost; retry") from e
            except (_Retryable, RetryTransaction) as e:
                if attempt >= self.settings.max_attempts:
                    log.warning("giving up after %d attempts: %s", attempt, e)
                    raise DatabaseUnavailable(
                        "the database is too busy with conflicting writes; retry"
                    ) from e
                await asyncio.sleep(random.uniform(0, 0.01 * 2**attempt))

    async def ping(self) -> bool:
        """True when PostgreSQL answers a trivial query."""
        try:
            # In autocommit: a ROLLBACK (which a transaction's checked-in connection gets) makes
            # psycopg drop every statement it prepared on that connection.
            async with self._pipelined(transaction=False) as tx:
                await tx.one("SELECT 1")
            return True
        except Exception:  # noqa: BLE001 - any failure means "not serving"
            return False

    async def _bound_by_deadline_raw(self, tx: Tx) -> None:
        ms = self._deadline_ms()
        if ms is not None:
            # Sent with the first statement of the transaction, in the same round trip.
            await tx.run(f"SET LOCAL statement_timeout = {ms}")

    def _deadline_ms(self) -> int | None:
        """The statement timeout the call's deadline asks for, when shorter than the default;
        DEADLINE_EXCEEDED when the deadline has passed already."""
        left = request_context.seconds_left()
        if left is None:
            return None
        ms = int(left * 1000)
        if ms <= 0:
            raise DeadlineExceeded("the call's deadline passed before the database was reached")
        return ms if ms < self.settings.statement_timeout_ms else None

    async def _bound_by_deadline(self, session: AsyncSession | AsyncConnection) -> None:
        ms = self._deadline_ms()
        if ms is not None:
            await session.execute(text(f"SET LOCAL statement_timeout = {ms}"))


async def _to_completion(work: Awaitable[T]) -> T:
    """Awaits ``work`` to its end even if the caller is cancelled meanwhile, then re-raises that
    cancellation: for changes of a connection's state that must not stop half-way."""
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError as e:
            if task.done():  # ``work`` itself was cancelled
                raise
            cancelled = e
    if cancelled is not None:
        raise cancelled
    return result


class _Retryable(Exception):
    """A serialization failure or deadlock: run the transaction again."""


class _StaleConnection(Exception):
    """A pooled connection turned out dead before COMMIT: run the work again."""


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turns driver and pool exceptions into domain errors (or the internal retry signal)."""
    try:
        yield
    except Exception as exc:
        translated = classify(exc)
        if translated is None:
            raise
        raise translated from exc


def classify(exc: BaseException) -> Exception | None:
    """The domain error (or retry signal) a driver exception stands for, or None."""
    orig = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    if isinstance(orig, psycopg.Error) and orig.sqlstate in _RETRYABLE:
        return _Retryable(str(orig.sqlstate))
    if isinstance(orig, psycopg.Error) and orig.sqlstate == "FL001":
        return StaleRecord(orig.diag.message_primary or "")
    if isinstance(orig, psycopg.errors.QueryCanceled):
        return DeadlineExceeded("the database work exceeded the call's deadline")
    if isinstance(orig, psycopg.errors.AdminShutdown | psycopg.errors.CannotConnectNow):
        return DatabaseUnavailable("the database is shutting down or starting; retry")
    if isinstance(orig, psycopg.Error) and (orig.sqlstate or "").startswith("54"):
        # program_limit_exceeded (statement too complex, too many columns...): retrying won't help
        return LimitExceeded("the request is too large for the database to process")
    if isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError) and (
        orig.sqlstate is None or orig.sqlstate[:2] in _UNAVAILABLE_CLASSES
    ):
        return DatabaseUnavailable("the database cannot be reached; retry")
    if isinstance(exc, sa_exc.TimeoutError):
        return DatabaseUnavailable("no database connection became free in time; retry")
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return DatabaseUnavailable("the database connection was lost; retry")
    if isinstance(exc, OSError | ConnectionError):
        return DatabaseUnavailable("the database cannot be reached; retry")
    return None
